"""Writes tiny datasets in official on-disk layouts, for tests (import: ``from helpers.datasets import ...``).

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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from mpgsam2.data import ReferringBatch

__all__ = [
    "DEFAULT_FRAME_SIZE",
    "OBJECT_COLORS",
    "default_ytvos_videos",
    "edit_json",
    "expected_mask",
    "frame_names",
    "object_box",
    "palette",
    "synthetic_tokenizer",
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


def _write_frames(
    frames_dir: Path, names: list[str], spec: Mapping, b: int, frame_size: tuple[int, int]
) -> list[np.ndarray]:
    """Writes the JPEG frames of video number ``b`` (its ``spec`` as :func:`write_ytvos_dataset`) into
    ``frames_dir``; returns each frame's object ids, uint8 (H, W) (0 = background)."""
    size = tuple(spec.get("size", frame_size))
    frames_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for t, name in enumerate(names):
        ids = np.zeros(size, dtype=np.uint8)
        for obj_id in spec.get("objects", {}):
            ids[expected_mask(spec, obj_id, t, frame_size)] = obj_id
        Image.fromarray(_frame(size, ids, 40 + 30 * b)).save(frames_dir / f"{name}.jpg", quality=95)
        out.append(ids)
    return out


def _write_palette_pngs(folder: Path, names: list[str], ids: list[np.ndarray], colors: list[int]) -> None:
    """One palette PNG per frame: pixel value = object id."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame_ids in zip(names, ids):
        png = Image.fromarray(frame_ids)  # uint8 (H, W) -> mode "L"
        png.putpalette(colors)  # -> mode "P", as the released annotations
        png.save(folder / f"{name}.png")


def edit_json(path: Path, edit: Callable[[dict], object]) -> Path:
    """Rewrites a json file after ``edit(data)`` changed it in place; returns ``path``."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def synthetic_tokenizer(folder: Path) -> Path:
    """A tokenizer model trained on a one-video synthetic dataset written under ``folder``."""
    from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos

    syn = generate_synthetic_ytvos(
        folder / "syn", SyntheticConfig(num_train_videos=1, num_valid_videos=1, num_frames=2)
    )
    return syn / "tokenizer.model"


def write_ytvos_dataset(
    root: str | Path,
    split: str = "train",
    videos: Mapping[str, Mapping] | None = None,
    *,
    annotations: bool = True,
    obj_ids_in_json: bool = True,
    test_videos: Iterable[str] = (),
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
    colors: list[int] | None = None,
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
        colors: the annotations' palette (flat RGB list); default :func:`palette`.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    videos = default_ytvos_videos() if videos is None else videos
    meta: dict[str, dict] = {}
    for b, (vid, spec) in enumerate(videos.items()):
        names = list(spec["frames"]) if "frames" in spec else frame_names(spec.get("num_frames", 5))
        ids = _write_frames(root / split / "JPEGImages" / vid, names, spec, b, frame_size)
        if annotations:
            _write_palette_pngs(root / split / "Annotations" / vid, names, ids, colors or palette())
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


# ------------------------------------------------------------------------------------------------ MeViS
#
# ``write_mevis_dataset`` produces the MeViS layout read by :class:`mpgsam2.data.MeViSSource`::
#
#     <root>/<split>/meta_expressions.json   {"videos": {vid: {"expressions": {id: {"exp", "obj_id", "anno_id"}},
#                                                              "frames": [...]}}}
#     <root>/<split>/JPEGImages/<vid>/<frame>.jpg
#     <root>/<split>/mask_dict.json          {str(anno_id): [COCO RLE (counts as str) or null per frame]}
#
# Annotation ids are global over the split (as in the release); annotation k is drawn like object k of the
# Ref-YTVOS writer, so :func:`expected_mask` gives each one and :func:`expected_union_mask` an expression's target.


def mevis_frame_names(num_frames: int) -> list[str]:
    """MeViS / DAVIS style names of consecutive frames: ``"00000", "00001", ...``."""
    return [f"{i:05d}" for i in range(num_frames)]


def default_mevis_videos() -> dict[str, dict]:
    """Two videos: ``mv_a`` (6 frames; annotation 1 everywhere, annotation 2 only in frames 1-3; expression
    ``"0"`` refers to both), ``mv_b`` (4 frames of 20x28; annotation 3 only in frames 0-1, null afterwards)."""
    return {
        "mv_a": {
            "num_frames": 6,
            "objects": {1: None, 2: [1, 2, 3]},
            "expressions": {
                "0": ("the two squares moving to the right", [1, 2]),
                "1": ("The red square", [1]),
                "2": ("the blue square that appears and leaves", [2]),
            },
        },
        "mv_b": {
            "num_frames": 4,
            "size": (20, 28),
            "objects": {3: [0, 1]},
            "expressions": {"0": ("a green square that disappears", [3])},
        },
    }


def expected_union_mask(
    video: Mapping, anno_ids: Iterable[int], t: int, frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE
) -> np.ndarray:
    """bool (H, W): the union of :func:`expected_mask` over ``anno_ids`` in frame ``t`` of a video spec."""
    size = tuple(video.get("size", frame_size))
    out = np.zeros(size, dtype=bool)
    for anno_id in anno_ids:
        out |= expected_mask(video, anno_id, t, frame_size)
    return out


def default_mevis_v2_videos() -> dict[str, dict]:
    """:func:`default_mevis_videos` plus MeViS v2's no-target expressions (empty ``anno_id``): ``mv_a`` ``"3"``
    and ``mv_b`` ``"1"`` describe nothing in their video."""
    videos = default_mevis_videos()
    videos["mv_a"]["expressions"]["3"] = ("the yellow square jumping up", [])
    videos["mv_b"]["expressions"]["1"] = ("a red square moving left", [])
    return videos


# the expressions file of each split, per MeViS version (as released; the v2 test split's folder is assumed)
MEVIS_FILES = {
    "v1": {
        "train": "meta_expressions.json",
        "valid_u": "meta_expressions.json",
        "valid": "meta_expressions.json",
    },
    "v2": {
        "train": "meta_expressions_v2.json",
        "valid_u": "meta_expressions_v2.json",
        "valid": "meta_expressions_v2_release.json",
        "test": "meta_expressions_text_release.json",
    },
}


def write_mevis_dataset(
    root: str | Path,
    split: str = "train",
    videos: Mapping[str, Mapping] | None = None,
    *,
    masks: bool = True,
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
    version: str = "v1",
) -> Path:
    """Writes a tiny MeViS split under ``root`` (other splits already there are kept).

    Args:
        root: dataset folder (created if needed).
        split: ``"train"``, ``"valid_u"``, ``"valid"`` or (v2) ``"test"`` (only a folder name here).
        videos: ``{video_id: spec}``; default :func:`default_mevis_videos` (v1) or
            :func:`default_mevis_v2_videos` (v2). A spec holds ``"num_frames"`` (int, default 5), optional
            ``"size"`` (H, W), ``"objects"``: ``{anno_id (>= 1): list of frame indices where visible, or None for
            all}``, ``"expressions"``: ``{exp_id: (caption, [anno_id, ...])}`` or ``(caption, [...], extra)``,
            ``extra`` a dict of more json keys (e.g. an audio file); a None caption writes no ``"exp"``. An empty
            ``anno_id`` list is a MeViS v2 no-target expression (``obj_id`` empty too).
        masks: write ``mask_dict.json`` and the expressions' ``obj_id`` / ``anno_id`` (the valid split has
            neither file nor used ids).
        frame_size: default (H, W).
        version: ``"v1"`` or ``"v2"``: the expressions file's name (:data:`MEVIS_FILES`).

    Returns:
        ``root`` as a Path.
    """
    from pycocotools import mask as coco_mask

    root = Path(root)
    if videos is None:
        videos = default_mevis_videos() if version == "v1" else default_mevis_v2_videos()
    meta: dict[str, dict] = {}
    mask_dict: dict[str, list] = {}
    for b, (vid, spec) in enumerate(videos.items()):
        names = mevis_frame_names(spec.get("num_frames", 5))
        _write_frames(root / split / "JPEGImages" / vid, names, spec, b, frame_size)
        for anno_id in spec.get("objects", {}):
            mask_dict[str(anno_id)] = []
            for t in range(len(names)):
                m = expected_mask(spec, anno_id, t, frame_size)
                rle = None
                if m.any():
                    rle = coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))
                    rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
                mask_dict[str(anno_id)].append(rle)
        expressions = {}
        for exp_id, (caption, anno_ids, *extra) in spec.get("expressions", {}).items():
            exp: dict[str, object] = {} if caption is None else {"exp": caption}
            if masks:
                # The release pairs each anno_id with a per-video object index.
                exp["obj_id"] = list(range(len(anno_ids)))
                exp["anno_id"] = list(anno_ids)
            for more in extra:
                exp.update(more)
            expressions[exp_id] = exp
        meta[vid] = {"expressions": expressions, "frames": names}
    (root / split / MEVIS_FILES[version][split]).write_text(json.dumps({"videos": meta}, indent=1))
    if masks:
        (root / split / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root


# ------------------------------------------------------------------------------------------------ Ref-DAVIS17
#
# ``write_davis_dataset`` produces ReferFormer's converted layout read by :class:`mpgsam2.data.RefDAVISSource`::
#
#     <root>/meta_expressions/<split>/meta_expressions.json   expression i = annotator i % 4 of object i // 4
#     <root>/<split>/JPEGImages/<vid>/<%05d>.jpg
#     <root>/<split>/Annotations/<vid>/<%05d>.png             palette PNG, pixel value = object id
#     <root>/<split>/meta.json                                {"videos": {vid: {"objects": {"1": {"category"}}}}}


def davis_captions(obj_id: int) -> list[str]:
    """The four annotator sets' captions of object ``obj_id`` in :func:`default_davis_videos`."""
    return [
        f"object {obj_id} as annotator one sees it first",
        f"object {obj_id} over the whole video by annotator one",
        f"object {obj_id} at first for annotator two",
        f"object {obj_id} in all frames for annotator two",
    ]


def default_davis_videos() -> dict[str, dict]:
    """Two videos: ``dv_a`` (5 frames; object 1 everywhere, object 2 only in frames 0-2), ``dv_b`` (3 frames of
    20x28, object 1). Every object has four expressions (:func:`davis_captions`)."""
    return {
        "dv_a": {
            "num_frames": 5,
            "objects": {1: None, 2: [0, 1, 2]},
            "expressions": {1: davis_captions(1), 2: davis_captions(2)},
        },
        "dv_b": {
            "num_frames": 3,
            "size": (20, 28),
            "objects": {1: None},
            "expressions": {1: davis_captions(1)},
        },
    }


def write_davis_dataset(
    root: str | Path,
    split: str = "valid",
    videos: Mapping[str, Mapping] | None = None,
    *,
    annotations: bool = True,
    frame_size: tuple[int, int] = DEFAULT_FRAME_SIZE,
) -> Path:
    """Writes a tiny converted Ref-DAVIS17 split under ``root`` (other splits already there are kept).

    Args:
        root: dataset folder (created if needed).
        split: ``"valid"`` or ``"train"``.
        videos: ``{video_id: spec}``; default :func:`default_davis_videos`. A spec holds ``"num_frames"``,
            optional ``"size"``, ``"objects"`` (as :func:`write_ytvos_dataset`) and ``"expressions"``:
            ``{obj_id: [caption of annotator set 0, 1, 2, 3]}``, numbered as the converter does (per object in
            ``obj_id`` order, the four sets interleaved: expression ``4 * j + k`` is set k of the j-th object).
        annotations: write ``<split>/Annotations``.
        frame_size: default (H, W).

    Returns:
        ``root`` as a Path.
    """
    from mpgsam2.data.synthetic import davis_palette

    videos = default_davis_videos() if videos is None else videos
    # the converted layout is Ref-YouTube-VOS's: only the frame names and the expression numbering differ
    ytvos_videos = {
        vid: {
            **spec,
            "frames": mevis_frame_names(spec.get("num_frames", 5)),
            "expressions": {
                str(4 * j + k): (caption, obj_id)
                for j, obj_id in enumerate(sorted(spec.get("expressions", {})))
                for k, caption in enumerate(spec["expressions"][obj_id])
            },
        }
        for vid, spec in videos.items()
    }
    root = write_ytvos_dataset(
        root, split, ytvos_videos, annotations=annotations, frame_size=frame_size, colors=davis_palette()
    )
    objects_meta = {
        vid: {"objects": {str(o): {"category": "square"} for o in spec.get("objects", {})}}
        for vid, spec in videos.items()
    }
    (root / split / "meta.json").write_text(json.dumps({"videos": objects_meta}, indent=1))
    return root


__all__ += [
    "davis_captions",
    "default_davis_videos",
    "default_mevis_v2_videos",
    "default_mevis_videos",
    "expected_union_mask",
    "mevis_frame_names",
    "write_davis_dataset",
    "write_mevis_dataset",
]


# ------------------------------------------------------------------------------------------------ test model


def video_training_step(model, batch: ReferringBatch):
    """One forward + backward of ``model`` on a collated video batch; returns the total loss (a scalar tensor)."""
    from mpgsam2.losses import MPGSAM2Criterion

    model.train()
    out = model(batch.sam_frames, batch.beit_frames, batch.text_ids, batch.text_padding_mask)
    loss = MPGSAM2Criterion()(out.pred_masks, out.sentence_scores, batch.masks, batch.valid)["loss_total"]
    loss.backward()
    return loss


def model_view_sizes(model) -> dict[str, int]:
    """The DataModule arguments ``sam_size`` / ``beit_size`` that match ``model``'s two views."""
    return model.input_sizes


def check_first_training_batch(model, dm):
    """Runs :func:`video_training_step` on the first batch of ``dm`` (set up for fitting, views of
    :func:`model_view_sizes`) and checks the batch's shapes, a finite positive loss and non-zero gradients;
    returns the batch."""
    import torch

    batch = next(iter(dm.train_dataloader()))
    b, t, s = dm.batch_size, dm.num_frames, model.sam.image_size
    assert batch.sam_frames.shape == (b, t, 3, s, s) and batch.masks.shape == (b, t, s, s)
    loss = video_training_step(model, batch)
    assert torch.isfinite(loss) and loss > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    return batch


def item_meta(video: str, orig_size: tuple[int, int], frames: int = 1):
    """An :class:`~mpgsam2.data.ItemMeta` of frames ``00000``, ``00001``, ... of ``video`` (expression ``0``)."""
    from mpgsam2.data import ItemMeta

    return ItemMeta(
        video=video,
        exp_id="0",
        frame_names=[f"{t:05d}" for t in range(frames)],
        frame_indices=list(range(frames)),
        orig_size=tuple(orig_size),
    )


def model_batch(sam, beit, text_ids, text_padding_mask, meta=None, **fields) -> ReferringBatch:
    """A :class:`~mpgsam2.data.ReferringBatch` of model inputs ``sam`` (B, T, 3, S, S), ``beit``, ``text_ids`` and
    ``text_padding_mask`` (B, L), for tests that need no target: zero ``masks``, ``valid`` all False, empty
    captions, ``meta`` one video per row at the SAM size unless given; ``fields`` sets the others (``is_image``,
    ``orig_masks``, ...)."""
    import torch

    from mpgsam2.data import ReferringBatch

    b, t, s = sam.shape[0], sam.shape[1], sam.shape[-1]
    return ReferringBatch(
        sam_frames=sam,
        beit_frames=beit,
        masks=fields.pop("masks", torch.zeros(b, t, s, s)),
        valid=fields.pop("valid", torch.zeros(b, t, dtype=torch.bool)),
        text_ids=text_ids,
        text_padding_mask=text_padding_mask,
        caption=fields.pop("caption", [""] * b),
        meta=[item_meta(f"video{i}", (s, s), t) for i in range(b)] if meta is None else meta,
        **fields,
    )


__all__ += [
    "item_meta",
    "check_first_training_batch",
    "model_batch",
    "model_view_sizes",
    "video_training_step",
]
