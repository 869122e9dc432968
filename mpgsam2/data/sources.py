"""The source protocol every dataset reader implements, and the file readers they share.

A *source* is a dataset split seen as a list of :class:`~mpgsam2.data.records.ExpressionRecord` plus two readers
(frames, masks). The torch datasets in :mod:`mpgsam2.data.video_dataset` work on any source, so adding a
dataset means writing one reader (e.g. :mod:`mpgsam2.data.ytvos`) and nothing else.

All readers raise :class:`~mpgsam2.data.errors.DatasetError` with the offending file first in the message.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import (
    ExpressionRecord,
    VideoRecord,
    validate_path_component,
    validate_video_id,
)
from mpgsam2.utils import PIL_ERRORS

__all__ = [
    "ReferringVideoSource",
    "VideoSubsetSource",
    "holdout_video_ids",
    "image_size",
    "load_json",
    "read_palette_mask",
    "read_rgb_frames",
]

DIGITS = re.compile(r"[0-9]+")  # a non-negative integer in ASCII digits


@runtime_checkable
class ReferringVideoSource(Protocol):
    """A referring-video dataset split (Ref-YouTube-VOS, MeViS, Ref-DAVIS17 ...).

    Attributes:
        name: short identifier, e.g. ``"ytvos/train"``.
        expressions: every expression of the split, in a fixed order.
        has_masks: whether :meth:`read_masks` works (False for splits without public ground truth).
        expressions_file: the file its expressions were read from (what messages about them name).
    """

    name: str
    expressions: list[ExpressionRecord]
    has_masks: bool
    expressions_file: Path

    def read_frames(self, video: VideoRecord, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` of ``video`` as uint8 (t, H, W, 3) RGB.

        Raises:
            DatasetError: naming the file if it is missing, truncated, undecodable or of another size.
        """
        ...

    def read_masks(self, expression: ExpressionRecord, indices: Sequence[int]) -> np.ndarray:
        """The expression's target in frames ``indices``: bool (t, H, W), the union of its objects.

        Raises:
            DatasetError: naming the file on a missing or bad annotation.
        """
        ...


def load_json(path: str | Path, what: str) -> dict[str, object]:
    """Reads a json file whose top level is an object.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"Ref-YouTube-VOS expressions file"``).

    Returns:
        The decoded top-level object.

    Raises:
        DatasetError: the file is missing, unreadable, not valid JSON (position given) or not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the {what}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: the {what} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from err
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: the {what} must hold a JSON object at the top level, found {type(data).__name__}"
        )
    return data


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image, read from its header only (the pixels are not decoded).

    Raises:
        DatasetError: the file is missing or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except PIL_ERRORS as err:
        raise DatasetError(f"{path}: cannot read the image header: {err}") from err
    return height, width


def _load_image(path: Path, what: str) -> Image.Image:
    """Opens and fully decodes an image (``load()`` makes truncated files fail here, not later)."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except PIL_ERRORS as err:
        raise DatasetError(f"{path}: cannot decode the {what} (not an image?): {err}") from err
    try:
        # Decode now: PIL is lazy, and with LOAD_TRUNCATED_IMAGES left False a truncated JPEG raises OSError here.
        img.load()
    except PIL_ERRORS as err:
        img.close()
        raise DatasetError(f"{path}: cannot decode the {what} (truncated or corrupt?): {err}") from err
    return img


def read_rgb_frames(paths: Sequence[str | Path]) -> np.ndarray:
    """Reads frames that must all have one size.

    Args:
        paths: t image files (JPEG or anything PIL decodes; grey or CMYK images are converted to RGB).

    Returns:
        uint8 (t, H, W, 3) RGB.

    Raises:
        ValueError: ``paths`` is empty.
        DatasetError: naming the file that is missing, truncated or undecodable, or whose size differs from the
            first frame's.
    """
    if len(paths) == 0:
        raise ValueError("read_rgb_frames needs at least one path")
    frames = []
    first: tuple[Path, tuple[int, int]] | None = None
    for p in paths:
        path = Path(p)
        img = _load_image(path, "frame image")
        with img:
            rgb = np.asarray(img.convert("RGB"))
        if first is None:
            first = (path, rgb.shape[:2])
        elif rgb.shape[:2] != first[1]:
            raise DatasetError(
                f"{path}: frame is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but {first[0]} is "
                f"{first[1][1]}x{first[1][0]}; all frames of a video must have one size"
            )
        frames.append(rgb)
    return np.stack(frames)


def read_palette_mask(path: str | Path, expected_size: tuple[int, int] | None) -> np.ndarray:
    """Reads an indexed annotation PNG (DAVIS / YouTube-VOS style: pixel value = object id, 0 = background).

    Args:
        path: the PNG. Palette ("P") images give their palette indices; single-channel "L" images their values.
        expected_size: (H, W) of the frame it annotates, or None to skip the check.

    Returns:
        uint8 (H, W) object ids.

    Raises:
        DatasetError: naming the file if it is missing, undecodable, not a palette / single-channel image (an
            RGB rendering of the mask cannot be mapped back to object ids), or not of ``expected_size``.
    """
    path = Path(path)
    img = _load_image(path, "annotation mask")
    with img:
        mode = img.mode
        if mode not in ("P", "L"):
            raise DatasetError(
                f"{path}: annotation is a {mode!r} image, not a palette ('P') or single-channel ('L') PNG; "
                "object ids are read from palette indices, so save the mask as an indexed PNG"
            )
        ids = np.asarray(img)
    if expected_size is not None and ids.shape != tuple(expected_size):
        raise DatasetError(
            f"{path}: annotation is {ids.shape[1]}x{ids.shape[0]} (WxH) but its frame is "
            f"{expected_size[1]}x{expected_size[0]}"
        )
    return ids.astype(np.uint8, copy=False)


def parse_video_entry(
    expressions_file: Path, video_id: str, entry: object, frames_dir: Path, sort_frames: bool
) -> tuple[VideoRecord, dict[str, object]]:
    """Check one video of a ``meta_expressions.json`` (``{"frames": [...], "expressions": {...}}``, the layout
    shared by Ref-YouTube-VOS, MeViS and the Ref-DAVIS17 conversion).

    Args:
        expressions_file: the json, named in errors. video_id: its key. entry: its value.
        frames_dir: ``.../JPEGImages``; frame ``n`` of the video is ``frames_dir/video_id/n.jpg``.
        sort_frames: order the frames by name (else keep the json order).

    Returns:
        The video and its raw ``expressions`` object.

    Raises:
        DatasetError: an unsafe id or frame name, a missing or empty frame list, a repeated frame, no expressions.
    """
    src = expressions_file
    validate_video_id(video_id, src)
    if not isinstance(entry, dict):
        raise DatasetError(f"{src}: video {video_id!r}: expected an object, found {type(entry).__name__}")
    frames = entry.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(
            f"{src}: video {video_id!r}: 'frames' must be a non-empty list of frame names, found {frames!r:.80}"
        )
    for name in frames:
        validate_path_component(name, f"video {video_id!r}: frame name", src)
    if len(set(frames)) != len(frames):
        raise DatasetError(f"{src}: video {video_id!r}: 'frames' lists a frame twice")
    names = tuple(sorted(frames)) if sort_frames else tuple(frames)
    video = VideoRecord(
        video_id=video_id,
        frame_names=names,
        frame_paths=tuple(frames_dir / video_id / f"{n}.jpg" for n in names),
    )
    expressions = entry.get("expressions")
    if not isinstance(expressions, dict):
        raise DatasetError(f"{src}: video {video_id!r}: missing 'expressions' object")
    return video, expressions


def load_videos_json(path: Path, what: str) -> dict[str, object]:
    """The top-level ``videos`` object of a ``meta_expressions.json`` (``what`` names the file in messages).

    Raises:
        DatasetError: see :func:`load_json`; or the file has no ``videos`` object.
    """
    data = load_json(path, what)
    videos = data.get("videos")
    if not isinstance(videos, dict):
        raise DatasetError(f"{path}: missing the top-level 'videos' object (found keys {sorted(data)[:5]})")
    return videos


def parse_expression_entry(
    expressions_file: Path, video_id: str, exp_id: object, exp: object
) -> tuple[dict[str, object], str, str]:
    """Check one expression of a ``meta_expressions.json`` video: a safe id, and an object with the sentence
    ``"exp"``.

    Args:
        expressions_file: the json, named in errors. video_id: the video. exp_id / exp: the expression's key and
            value.

    Returns:
        The expression object, its sentence, and ``"<json>: video ..., expression ..."`` for further messages.

    Raises:
        DatasetError: an unsafe expression id, ``exp`` is not an object or has no string ``"exp"``.
    """
    validate_path_component(exp_id, f"video {video_id!r}: expression id", expressions_file)
    where = f"{expressions_file}: video {video_id!r}, expression {exp_id!r}"
    if not isinstance(exp, dict):
        raise DatasetError(f"{where}: expected an object, found {type(exp).__name__}")
    caption = exp.get("exp")
    if not isinstance(caption, str):
        raise DatasetError(f"{where}: missing the sentence 'exp' (a string), found {caption!r}")
    return exp, caption, where


def parse_obj_id(value: object, where: str) -> int:
    """A palette object id (1..255) from a json ``obj_id``: an integer string such as ``"1"`` (the released
    Ref-YouTube-VOS and the Ref-DAVIS17 conversion) or a plain integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        obj_id = value
    elif isinstance(value, str) and DIGITS.fullmatch(value):
        obj_id = int(value)
    else:
        raise DatasetError(f"{where}: 'obj_id' must be an integer string such as \"1\", found {value!r}")
    if not 1 <= obj_id <= 255:
        raise DatasetError(f"{where}: 'obj_id' {obj_id} is outside the palette's object range 1..255")
    return obj_id


class JsonVideoSource:
    """What the ``meta_expressions.json`` readers (Ref-YouTube-VOS, MeViS, Ref-DAVIS17) share: ``__repr__`` and
    :meth:`read_frames`. Subclasses set ``root``, ``split``, ``expressions_file``, ``videos``, ``expressions`` and
    ``has_masks``."""

    root: Path
    split: str
    expressions_file: Path
    videos: list[VideoRecord]
    expressions: list[ExpressionRecord]
    has_masks: bool

    def _repr_extra(self) -> str:
        """``"key=value, "`` fields shown after the split in ``repr``."""
        return ""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {self._repr_extra()}"
            f"videos={len(self.videos)}, expressions={len(self.expressions)}, has_masks={self.has_masks})"
        )

    def read_frames(self, video: VideoRecord, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` of ``video``: uint8 (t, H, W, 3) RGB (DatasetError naming a bad file)."""
        return read_rgb_frames([video.frame_paths[i] for i in indices])


class PaletteMaskSource(JsonVideoSource):
    """A :class:`JsonVideoSource` whose ground truth is one palette PNG per frame,
    ``annotations_dir/<video id>/<frame name>.png`` (Ref-YouTube-VOS, Ref-DAVIS17).

    Subclasses also set ``annotations_dir``, ``expressions_file`` and ``_present_ids = {}``; the class attributes
    ``_objects_word`` / ``_appear_word`` word the error of :meth:`check_objects_exist`.
    """

    annotations_dir: Path
    expressions_file: Path
    # video id -> object ids present in any of its annotations (filled lazily, see check_objects_exist).
    _present_ids: dict[str, frozenset[int]]
    _objects_word = "object id(s)"
    _appear_word = "appear"

    def mask_path(self, video: VideoRecord, index: int) -> Path:
        """The annotation PNG of frame ``index`` of ``video``."""
        return self.annotations_dir / video.video_id / f"{video.frame_names[index]}.png"

    def _read_object_ids(self, video: VideoRecord, indices: Sequence[int]) -> np.ndarray:
        """uint8 (t, H, W) palette indices of frames ``indices``, each checked against its frame's size."""
        ids = [read_palette_mask(self.mask_path(video, i), image_size(video.frame_paths[i])) for i in indices]
        return np.stack(ids) if ids else np.zeros((0, 0, 0), dtype=np.uint8)

    def check_objects_exist(self, expression: ExpressionRecord) -> None:
        """Raises when none of the expression's objects is in any annotation of its video (read once, cached)."""
        video = expression.video
        present = self._present_ids.get(video.video_id)
        if present is None:
            found: set[int] = set()
            for i in range(video.num_frames):
                found.update(np.unique(read_palette_mask(self.mask_path(video, i), None)).tolist())
            present = frozenset(found - {0})
            self._present_ids[video.video_id] = present
        if not present.intersection(expression.obj_ids):
            raise DatasetError(
                f"{self.annotations_dir / video.video_id}: {self._objects_word} {list(expression.obj_ids)} of "
                f"expression {expression.exp_id!r} (video {video.video_id!r}, {self.expressions_file}) "
                f"{self._appear_word} in none of the video's {video.num_frames} annotations (object ids found: "
                f"{sorted(present)})"
            )


class SwappedCaptionSource:
    """A source whose expressions carry the caption of an expression of ANOTHER object of the same video (see
    :func:`~mpgsam2.data.records.swap_captions_within_video`); frames, masks and every other attribute come from
    the wrapped source. Scoring a model on it checks that the model reads the sentence: J&F should collapse.
    """

    def __init__(self, source: ReferringVideoSource, seed: int = 0) -> None:
        from mpgsam2.data.records import swap_captions_within_video

        self.source = source
        self.name = f"{source.name}+swapped"
        self.has_masks = source.has_masks
        self.expressions = swap_captions_within_video(source.expressions, seed=seed)

    def __getattr__(self, name: str) -> object:
        # only reached for attributes not set above: read_frames, read_masks, expressions_file, ...
        return getattr(self.source, name)


# the fixed shuffle the held-out videos are taken from: a larger holdout contains every smaller one, and the
# held-out set does not change with the training seed
_HOLDOUT_SHUFFLE = "mpgsam2/holdout"


def holdout_video_ids(source: ReferringVideoSource, num_videos: int) -> list[str]:
    """The ``num_videos`` videos of ``source`` held out of training for validation: the first ``num_videos`` of a
    fixed shuffle of the sorted video ids (deterministic; independent of any seed).

    Raises:
        DatasetError: ``num_videos`` is not between 1 and the number of videos minus one.
    """
    ids = sorted(v.video_id for v in source.videos)
    if not 0 < num_videos < len(ids):
        raise DatasetError(
            f"{source.expressions_file}: cannot hold out {num_videos} of its {len(ids)} "
            "videos (at least one must be held out and one left to train on)"
        )
    random.Random(_HOLDOUT_SHUFFLE).shuffle(ids)
    return sorted(ids[:num_videos])


class VideoSubsetSource:
    """The videos of ``source`` named in ``video_ids`` (``exclude=True``: all the others), with their expressions;
    frames, masks and every other attribute come from the wrapped source (e.g. a held-out slice of train)."""

    def __init__(
        self,
        source: ReferringVideoSource,
        video_ids: Sequence[str],
        exclude: bool = False,
        tag: str = "subset",
    ) -> None:
        chosen = set(video_ids)
        unknown = chosen - {v.video_id for v in source.videos}
        if unknown:
            raise DatasetError(f"{source.name}: unknown video id(s) {sorted(unknown)[:5]}")

        def keep(video: VideoRecord) -> bool:
            return (video.video_id in chosen) != exclude

        self.source = source
        self.name = f"{source.name}[{tag}]"
        self.has_masks = source.has_masks
        self.videos = [v for v in source.videos if keep(v)]
        self.expressions = [e for e in source.expressions if keep(e.video)]

    def __getattr__(self, name: str) -> object:
        # only reached for attributes not set above: read_frames, read_masks, load_masks, expressions_file, ...
        return getattr(self.source, name)
