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
