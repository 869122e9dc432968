"""Dataset-independent records of videos and referring expressions (the data contract).

Every reader (Ref-YouTube-VOS, MeViS, Ref-DAVIS17) turns its files into these records; the datasets, the
Lightning module and the evaluation code only ever see records. Identifiers that end up as folder or file names
of a submission (video ids, expression ids, frame names) are validated here so that no dataset file can make a
writer escape its output folder.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mpgsam2.data.errors import DatasetError

__all__ = [
    "ExpressionRecord",
    "VideoRecord",
    "swap_captions_within_video",
    "validate_path_component",
    "validate_video_id",
]


def validate_path_component(value: object, what: str, source_file: str | Path | None = None) -> str:
    """Checks that ``value`` can be used as one file or folder name inside an output folder.

    Rejects non-strings, ``''``, ``'.'``, ``'..'``, anything containing ``'/'``, ``'\\'`` or NUL (so no
    absolute or nested path), and Windows drive prefixes (``'C:x'``).

    Args:
        value: the identifier read from a dataset file.
        what: what it is, for the message (e.g. ``"video id"``).
        source_file: the file it was read from; the message starts with it.

    Returns:
        ``value`` unchanged.

    Raises:
        DatasetError: the identifier is unsafe, naming ``source_file``.
    """
    prefix = f"{source_file}: " if source_file is not None else ""
    if not isinstance(value, str):
        raise DatasetError(f"{prefix}{what} must be a string, found {type(value).__name__} {value!r}")
    reason = None
    if value in ("", ".", ".."):
        reason = "is empty or a relative folder reference"
    elif "/" in value or "\\" in value:
        reason = "contains a path separator"
    elif "\x00" in value:
        reason = "contains a NUL character"
    elif len(value) >= 2 and value[1] == ":" and value[0].isascii() and value[0].isalpha():
        reason = "starts with a drive letter"  # 'C:x' is relative to drive C's current folder on Windows
    if reason is not None:
        raise DatasetError(
            f"{prefix}{what} {value!r} {reason}; it must be usable as a single folder or file name"
        )
    return value


def validate_video_id(video_id: object, source_file: str | Path | None = None) -> str:
    """:func:`validate_path_component` for a video id (it names the video's output folder)."""
    return validate_path_component(video_id, "video id", source_file)


@dataclass(frozen=True)
class VideoRecord:
    """One video: its id and its frames in temporal order.

    Attributes:
        video_id: validated, safe as an output folder name.
        frame_names: frame stems in temporal order, e.g. ``("00000", "00005")``; they name the output PNGs.
        frame_paths: the frame images (JPEG), same order and length as ``frame_names``.
    """

    video_id: str
    frame_names: tuple[str, ...]
    frame_paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        # Readers validate with the source file named first; this is the backstop for any other constructor.
        validate_video_id(self.video_id)
        for name in self.frame_names:
            validate_path_component(name, f"video {self.video_id!r}: frame name")
        if len(self.frame_names) != len(self.frame_paths):
            raise ValueError(
                f"video {self.video_id!r}: {len(self.frame_names)} frame names but {len(self.frame_paths)} paths"
            )

    @property
    def num_frames(self) -> int:
        """Number of frames of the video."""
        return len(self.frame_names)


@dataclass(frozen=True)
class ExpressionRecord:
    """One referring expression of a video.

    Attributes:
        video: the video it refers to.
        exp_id: the expression's id as in the dataset's json (a string; it names the output folder).
        caption: the raw sentence as in the file (no lower-casing here).
        obj_ids: the referred object ids, their union is the target (Ref-YTVOS / Ref-DAVIS: one palette id;
            MeViS: the annotation ids). Empty when the split ships no object ids (Ref-YTVOS valid).
        no_target: the expression refers to nothing in its video (MeViS v2's no-target expressions, known only
            where the split has ground truth): its target is empty on every frame.
    """

    video: VideoRecord
    exp_id: str
    caption: str
    obj_ids: tuple[int, ...]
    no_target: bool = False

    def __post_init__(self) -> None:
        validate_path_component(self.exp_id, f"video {self.video.video_id!r}: expression id")


def swap_captions_within_video(
    expressions: Sequence[ExpressionRecord], seed: int = 0
) -> list[ExpressionRecord]:
    """Gives every expression the caption of another object of the same video (a "does it read?" control).

    Each returned record keeps its video, id and ``obj_ids`` (so its target is unchanged) but carries the caption
    of an expression of the same video whose ``obj_ids`` differ. A model that reads the sentence should do
    clearly worse on the result than on the original expressions.

    Expressions for which no such partner exists are DROPPED: those of videos whose expressions all refer to
    the same object(s), including splits without object ids (all ``obj_ids == ()``), and no-target expressions
    (which are no partner either: their caption names no object of the video). The result therefore may be
    shorter than the input; its order follows the input.

    The choice is deterministic in ``seed`` and independent per (video, expression): adding or removing other
    videos does not change a video's swaps.

    Args:
        expressions: the records to relabel.
        seed: chooses the partner among the candidates.

    Returns:
        The relabelled records (new objects; the inputs are not modified).
    """
    by_video: dict[str, list[ExpressionRecord]] = {}
    for expr in expressions:
        by_video.setdefault(expr.video.video_id, []).append(expr)
    swapped = []
    for expr in expressions:
        if expr.no_target:
            continue  # it names no object of its video: there is no other object's caption to give it
        # a no-target expression's caption names no object of the video: never a partner either
        others = [o for o in by_video[expr.video.video_id] if o.obj_ids != expr.obj_ids and not o.no_target]
        if not others:
            continue
        # A string seed is hashed with SHA-512 by `random`, so this is stable across processes and runs.
        rng = random.Random(f"swap/{seed}/{expr.video.video_id}/{expr.exp_id}")
        swapped.append(replace(expr, caption=rng.choice(others).caption))
    return swapped
