"""Writes tiny datasets in official on-disk layouts, for tests (import: ``from data_helpers import ...``).

``write_ytvos_dataset`` produces the Ref-YouTube-VOS layout read by :class:`mpgsam2.data.RefYTVOSSource`::

    <root>/meta_expressions/<split>/meta_expressions.json
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg
    <root>/<split>/Annotations/<vid>/<frame>.png      palette PNG, pixel value = object id

Frames are an asymmetric background (red grows left to right, green top to bottom) with one coloured square
per visible object; object k's square is at rows from ``object_box`` and moves right by 2 px per frame.
Masks are exactly those squares, so tests can compute the expected masks with :func:`expected_mask`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "OBJECT_COLORS",
    "default_ytvos_videos",
    "expected_mask",
    "frame_names",
    "object_box",
    "palette",
    "write_ytvos_dataset",
]

DEFAULT_FRAME_SIZE = (24, 32)  # (H, W)
OBJECT_COLORS = {1: (230, 40, 40), 2: (40, 40, 230), 3: (40, 210, 40), 4: (230, 230, 40)}


def default_ytvos_videos() -> dict[str, dict]:
    """Three small videos: ``vid_a`` (6 frames; object 2 only in frames 2-4), ``vid_b`` (4 frames, one object,
    caption with capitals and extra spaces), ``vid_c`` (7 frames of 20x28, objects 1 and 3)."""
    return {
        "vid_a": {
            "num_frames": 6,
            "objects": {1: None, 2: [2, 3, 4]},
            "expressions": {"0": ("the red square on the left", 1), "1": ("a blue square moving right", 2)},
        },
        "vid_b": {
            "num_frames": 4,
            "objects": {1: None},
            "expressions": {"0": ("A  Red   Square\tat the TOP", 1)},
        },
        "vid_c": {
            "num_frames": 7,
            "size": (20, 28),
            "objects": {1: None, 3: None},
            "expressions": {
                "0": ("the red square", 1),
                "1": ("the green square at the bottom", 3),
                "2": ("the upper square", 1),
            },
        },
    }


def frame_names(num_frames: int) -> list[str]:
    """YouTube-VOS style names of the annotated frames: every 5th frame, ``"00000", "00005", ...``."""
    return [f"{5 * i:05d}" for i in range(num_frames)]


def object_box(obj_id: int, t: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of object ``obj_id``'s square in frame ``t`` (half-open, clipped to ``size``)."""
    h, w = size
    y0 = min(1 + 6 * (obj_id - 1), h - 5)
    x0 = min(1 + 2 * t, w - 5)
    return y0, y0 + 5, x0, x0 + 5


def expected_mask(
    video: Mapping, obj_id: int, t: int, frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
) -> np.ndarray:
    """bool (H, W): where ``write_ytvos_dataset`` drew object ``obj_id`` in frame ``t`` of a video spec."""
    size = tuple(video.get("size", frame_size))
    out = np.zeros(size, dtype=bool)
    present = video["objects"].get(obj_id, [])
    if present is None or t in present:
        y0, y1, x0, x1 = object_box(obj_id, t, size)
        out[y0:y1, x0:x1] = True
    return out


def palette() -> list[int]:
    """A 256-colour palette (flat RGB list): 0 black, object k in OBJECT_COLORS, the rest grey ramps."""
    pal = [0, 0, 0]
    for k in range(1, 256):
        pal.extend(OBJECT_COLORS.get(k, (k, 255 - k, (7 * k) % 256)))
    return pal


def _frame(size: tuple[int, int], ids: np.ndarray, blue: int) -> np.ndarray:
    h, w = size
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.linspace(0, 200, w, dtype=np.float32)[None, :].astype(np.uint8)
    img[..., 1] = np.linspace(0, 200, h, dtype=np.float32)[:, None].astype(np.uint8)
    img[..., 2] = blue
    for obj_id, color in OBJECT_COLORS.items():
        img[ids == obj_id] = color
    return img


def write_ytvos_dataset(
    root: str | Path,
    split: str = "train",
    videos: Mapping[str, Mapping] | None = None,
    *,
    annotations: bool = True,
    obj_ids_in_json: bool = True,
    test_videos: Iterable[str] = (),
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
) -> Path:
    """Writes a tiny Ref-YouTube-VOS split under ``root`` (other splits already there are kept).

    Args:
        root: dataset folder (created if needed).
        split: ``"train"`` or ``"valid"`` (any name works; it is only a folder name).
        videos: ``{video_id: spec}``; default :func:`default_ytvos_videos`. A spec holds ``"num_frames"``
            (int, default 5) or ``"frames"`` (list of names), optional ``"size"`` (H, W) (default
            ``frame_size``), ``"objects"``: ``{obj_id: list of frame indices where visible, or None for all}``,
            ``"expressions"``: ``{exp_id: (caption, obj_id)}``.
        annotations: write ``<split>/Annotations`` palette PNGs (the released valid split has none).
        obj_ids_in_json: write each expression's ``obj_id`` (the released valid json has none).
        test_videos: ids of ``videos`` also listed in ``meta_expressions/test/meta_expressions.json`` (as the
            released valid json contains the test videos too).
        frame_size: default (H, W).

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    videos = default_ytvos_videos() if videos is None else videos
    meta: dict[str, dict] = {}
    for b, (vid, spec) in enumerate(videos.items()):
        names = list(spec["frames"]) if "frames" in spec else frame_names(spec.get("num_frames", 5))
        size = tuple(spec.get("size", frame_size))
        frames_dir = root / split / "JPEGImages" / vid
        frames_dir.mkdir(parents=True, exist_ok=True)
        if annotations:
            (root / split / "Annotations" / vid).mkdir(parents=True, exist_ok=True)
        for t, name in enumerate(names):
            ids = np.zeros(size, dtype=np.uint8)
            for obj_id in spec.get("objects", {}):
                ids[expected_mask(spec, obj_id, t, frame_size)] = obj_id
            Image.fromarray(_frame(size, ids, 40 + 30 * b)).save(frames_dir / f"{name}.jpg", quality=95)
            if annotations:
                png = Image.fromarray(ids)  # uint8 (H, W) -> mode "L"
                png.putpalette(palette())  # -> mode "P", as the released annotations
                png.save(root / split / "Annotations" / vid / f"{name}.png")
        expressions = {}
        for exp_id, (caption, obj_id) in spec.get("expressions", {}).items():
            expressions[exp_id] = (
                {"exp": caption, "obj_id": str(obj_id)} if obj_ids_in_json else {"exp": caption}
            )
        meta[vid] = {"expressions": expressions, "frames": names}

    json_path = root / "meta_expressions" / split / "meta_expressions.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"videos": meta}, indent=1))
    test_videos = list(test_videos)
    if test_videos:
        test_path = root / "meta_expressions" / "test" / "meta_expressions.json"
        test_path.parent.mkdir(parents=True, exist_ok=True)
        test_meta = {
            v: {
                "expressions": {k: {"exp": e["exp"]} for k, e in meta[v]["expressions"].items()},
                "frames": meta[v]["frames"],
            }
            for v in test_videos
        }
        test_path.write_text(json.dumps({"videos": test_meta}, indent=1))
    return root


# ------------------------------------------------------------------------------------------------ RefCOCO family
#
# ``write_refcoco_dataset`` produces ReferFormer's converted layout read by :class:`mpgsam2.data.RefCOCOSource`::
#
#     <root>/train2014/<file_name>.jpg
#     <root>/<name>/instances_<name>_<split>.json     one "images" entry + one annotation per (object, sentence)
#
# The objects of REFCOCO_OBJECTS are axis-aligned boxes (half-open rows/cols), stored as polygons, compressed RLE
# or uncompressed RLE; a polygon [x0, y0, x1, y0, x1, y1, x0, y1] rasterises (pycocotools) to exactly rows
# y0..y1-1, cols x0..x1-1, so :func:`expected_refcoco_mask` is exact for every encoding.

# file name -> (COCO image id, (H, W))
REFCOCO_IMAGES: dict[str, tuple[int, tuple[int, int]]] = {
    "COCO_train2014_000000000011.jpg": (11, (20, 28)),
    "COCO_train2014_000000000022.jpg": (22, (24, 32)),
    "COCO_train2014_000000000033.jpg": (33, (18, 24)),
}

# COCO annotation id -> (file name, boxes (y0, y1, x0, x1), encoding)
REFCOCO_OBJECTS: dict[int, tuple[str, tuple[tuple[int, int, int, int], ...], str]] = {
    1101: ("COCO_train2014_000000000011.jpg", ((2, 8, 2, 10),), "polygon"),
    1102: ("COCO_train2014_000000000011.jpg", ((10, 16, 18, 26),), "rle"),
    2201: ("COCO_train2014_000000000022.jpg", ((3, 9, 4, 12), (14, 20, 4, 10)), "polygon"),
    2202: ("COCO_train2014_000000000022.jpg", ((5, 15, 20, 30),), "uncompressed_rle"),
    3301: ("COCO_train2014_000000000033.jpg", ((4, 12, 6, 16),), "rle"),
}


def default_refcoco_samples(name: str, split: str) -> list[tuple[int, str]]:
    """(COCO annotation id, sentence) per sample of the tiny ``name``/``split`` (5 / 3 / 2 train samples for
    refcoco / refcoco+ / refcocog, 3 val samples each)."""
    if split != "train":
        return [(1102, "The Right one"), (1101, "left  one"), (3301, "the only box")]
    return {
        "refcoco": [
            (1101, "The box on the LEFT"),
            (1101, "left  box"),
            (1102, "the box on the right"),
            (2201, "two boxes at the left"),
            (2202, "bright box on the rightmost side"),
        ],
        "refcoco+": [(1102, "lower one"), (2202, "tall box"), (3301, "the box")],
        "refcocog": [(2201, "the pair of boxes on the left side"), (3301, "a single box in the middle")],
    }[name]


def expected_refcoco_mask(ann_id: int) -> np.ndarray:
    """bool (H, W): the object ``ann_id`` of REFCOCO_OBJECTS in its image."""
    file_name, boxes, _ = REFCOCO_OBJECTS[ann_id]
    out = np.zeros(REFCOCO_IMAGES[file_name][1], dtype=bool)
    for y0, y1, x0, x1 in boxes:
        out[y0:y1, x0:x1] = True
    return out


def _refcoco_segmentation(ann_id: int) -> object:
    from pycocotools import mask as coco_mask

    _, boxes, encoding = REFCOCO_OBJECTS[ann_id]
    mask = expected_refcoco_mask(ann_id)
    if encoding == "polygon":
        polys = [[x0, y0, x1, y0, x1, y1, x0, y1] for y0, y1, x0, x1 in boxes]
        # plus a degenerate 2-point polygon (some COCO annotations have them): it covers nothing
        return [*polys, [0, 0, 1, 1]]
    if encoding == "rle":
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    # uncompressed: column-major run lengths starting with background
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]]))).tolist()
    counts = np.diff([0] + changes).tolist()
    assert sum(counts) == mask.size
    return {"size": list(mask.shape), "counts": counts}


def _refcoco_image(file_name: str) -> np.ndarray:
    image_id, (h, w) = REFCOCO_IMAGES[file_name]
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.linspace(0, 200, w, dtype=np.float32)[None, :].astype(np.uint8)
    img[..., 1] = np.linspace(0, 200, h, dtype=np.float32)[:, None].astype(np.uint8)
    img[..., 2] = 3 * image_id
    for ann_id, (f, _, _) in REFCOCO_OBJECTS.items():
        if f == file_name:
            img[expected_refcoco_mask(ann_id)] = OBJECT_COLORS[1 + ann_id % 4]
    return img


def write_refcoco_dataset(
    root: str | Path,
    name: str = "refcoco",
    split: str = "train",
    samples: Iterable[tuple[int, str]] | None = None,
) -> Path:
    """Writes one tiny converted RefCOCO-family json under ``root`` (and the train2014 images if missing).

    Args:
        root: the ``coco`` folder (created if needed).
        name: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"`` (only names the folder and file).
        split: the split (only names the file).
        samples: (COCO annotation id of REFCOCO_OBJECTS, sentence) per sample, in order; default
            :func:`default_refcoco_samples`.

    Returns:
        The json written. Sample k (from 1) gets image entry id and annotation id k, as the conversion does.
    """
    root = Path(root)
    (root / "train2014").mkdir(parents=True, exist_ok=True)
    for file_name in REFCOCO_IMAGES:
        path = root / "train2014" / file_name
        if not path.exists():
            Image.fromarray(_refcoco_image(file_name)).save(path, quality=95)
    samples = default_refcoco_samples(name, split) if samples is None else list(samples)
    images, annotations = [], []
    for k, (ann_id, sentence) in enumerate(samples, start=1):
        file_name, boxes, _ = REFCOCO_OBJECTS[ann_id]
        image_id, (h, w) = REFCOCO_IMAGES[file_name]
        images.append(
            {
                "file_name": file_name,
                "height": h,
                "width": w,
                "original_id": image_id,
                "id": k,
                "caption": sentence,
                "dataset_name": name,
            }
        )
        y0, y1, x0, x1 = boxes[0]
        annotations.append(
            {
                "segmentation": _refcoco_segmentation(ann_id),
                "area": int(expected_refcoco_mask(ann_id).sum()),
                "iscrowd": 0,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "image_id": k,
                "category_id": 1,
                "id": k,
                "original_id": ann_id,
            }
        )
    data = {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": []}
    path = root / name / f"instances_{name}_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


__all__ += [
    "REFCOCO_IMAGES",
    "REFCOCO_OBJECTS",
    "default_refcoco_samples",
    "expected_refcoco_mask",
    "write_refcoco_dataset",
]
