"""Ref-YouTube-VOS reader (original: ``datasets/ytvos.py`` for training, ``inference_ytvos.py`` for valid).

Layout (the official release)::

    <root>/meta_expressions/<split>/meta_expressions.json
        {"videos": {<vid>: {"expressions": {<exp_id>: {"exp": str, "obj_id": "1"}}, "frames": [<name>, ...]}}}
    <root>/<split>/JPEGImages/<vid>/<name>.jpg
    <root>/<split>/Annotations/<vid>/<name>.png     palette PNG, object k = pixels of index k (train only)

``"obj_id": []`` (an empty list; the release has none) marks a no-target expression: it refers to nothing in its
video and its target is empty on every frame (:attr:`ExpressionRecord.no_target`, as MeViS v2's; the synthetic
demo writes them). ``<root>/<split>/meta.json`` (object categories) is not needed and not read. For ``split="valid"`` the official
202-video set is the valid json minus the videos of ``meta_expressions/test/meta_expressions.json`` (spec §3.1);
the valid json carries no ``obj_id``.

Construction only parses the json (O(json), no file is stat-ed); missing or bad frames and masks are reported when
they are read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import ExpressionRecord, VideoRecord
from mpgsam2.data.sources import (
    PaletteMaskSource,
    load_videos_json,
    parse_expression_entry,
    parse_obj_id,
    parse_video_entry,
)

__all__ = ["RefYTVOSSource"]

log = logging.getLogger(__name__)

_SPLITS = ("train", "valid")


class RefYTVOSSource(PaletteMaskSource):
    """A Ref-YouTube-VOS split as a :class:`~mpgsam2.data.sources.ReferringVideoSource`.

    Args:
        root: the dataset folder (holding ``meta_expressions/``, ``train/``, ``valid/``).
        split: ``"train"`` or ``"valid"``.
        exclude_test: for ``"valid"``, drop the videos listed in ``meta_expressions/test/meta_expressions.json``
            when that file exists (the 202-video competition valid set, as ``inference_ytvos.py``).

    Attributes:
        name: ``"ytvos/<split>"``.
        expressions: one record per expression; videos in json order for train, sorted for valid (parity:
            ``inference_ytvos.py`` sorts the video list), expressions in json order.
        videos: the videos, same order.
        has_masks: True iff ``<root>/<split>/Annotations`` exists and every expression has an ``obj_id``
            (the released valid split has neither; a no-target expression's ``[]`` counts).
        expressions_file: the json that was read.

    Raises:
        ValueError: unknown split.
        DatasetError: naming the json (and the video / expression) when it is missing, not JSON, lacks
            ``videos`` / ``frames`` / ``expressions`` / ``exp``, has an ``obj_id`` that is not a positive integer
            (string) or ``[]``, an unsafe video id, expression id or frame name, or no ``obj_id`` in the train split.
    """

    def __init__(self, root: str | Path, split: str = "train", exclude_test: bool = True) -> None:
        if split not in _SPLITS:
            raise ValueError(f"Ref-YouTube-VOS split must be one of {_SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.name = f"ytvos/{split}"
        self.expressions_file = self.root / "meta_expressions" / split / "meta_expressions.json"
        self.frames_dir = self.root / split / "JPEGImages"
        self.annotations_dir = self.root / split / "Annotations"

        videos_json = _videos_of(self.expressions_file)
        video_ids = list(videos_json)
        if split == "valid":
            test_file = self.root / "meta_expressions" / "test" / "meta_expressions.json"
            if exclude_test and test_file.is_file():
                test_ids = set(_videos_of(test_file))
                video_ids = [v for v in video_ids if v not in test_ids]
                log.info(
                    "%s: %d valid videos after removing %d test videos",
                    self.name,
                    len(video_ids),
                    len(test_ids),
                )
            video_ids.sort()  # parity: inference_ytvos.py iterates sorted(valid - test)

        self.videos: list[VideoRecord] = []
        self.expressions: list[ExpressionRecord] = []
        for vid in video_ids:
            video, expressions = self._parse_video(vid, videos_json[vid])
            self.videos.append(video)
            self.expressions.extend(expressions)
        self.has_masks = self.annotations_dir.is_dir() and all(
            e.obj_ids or e.no_target for e in self.expressions
        )
        self._present_ids: dict[str, frozenset[int]] = {}

    # ----------------------------------------------------------------------------------------------- parsing

    def _parse_video(self, vid: str, entry: object) -> tuple[VideoRecord, list[ExpressionRecord]]:
        src = self.expressions_file
        # parity: datasets/ytvos.py sorts the names (zero-padded, so this is temporal order).
        video, expressions = parse_video_entry(src, vid, entry, self.frames_dir, sort_frames=True)
        records = []
        for exp_id, exp in expressions.items():
            exp, caption, where = parse_expression_entry(src, vid, exp_id, exp)
            no_target = exp.get("obj_id") == []  # refers to nothing: an empty target on every frame
            if no_target:
                obj_ids: tuple[int, ...] = ()
            elif "obj_id" in exp:
                # the release stores ids as strings ("1"); plain integers are accepted too
                obj_ids = (parse_obj_id(exp["obj_id"], where),)
            elif self.split == "train":
                raise DatasetError(f"{where}: missing 'obj_id' (required in the train split)")
            else:
                obj_ids = ()  # the released valid json has no object ids
            records.append(
                ExpressionRecord(
                    video=video, exp_id=exp_id, caption=caption, obj_ids=obj_ids, no_target=no_target
                )
            )
        return video, records

    # ----------------------------------------------------------------------------------------------- reading

    def read_masks(self, expression: ExpressionRecord, indices: Sequence[int]) -> np.ndarray:
        """The expression's object in frames ``indices``: bool (t, H, W).

        Each annotation must be a palette PNG of its frame's size. When the object is in none of the requested
        frames, the video's other annotations are checked once (then cached): an object id that appears in no
        annotation of the video raises, since such an expression can never be trained on.

        Raises:
            DatasetError: the split has no annotations or the expression no object id (naming the folder /
                json), or a bad annotation file (naming it), or an object absent from the whole video (naming the
                video's annotation folder).
        """
        video = expression.video
        if not self.has_masks:
            raise DatasetError(
                f"{self.annotations_dir}: split {self.split!r} has no usable annotations (folder missing, or "
                f"{self.expressions_file} has no obj_id); masks cannot be read"
            )
        out = np.isin(self._read_object_ids(video, indices), expression.obj_ids)
        if not out.any() and not expression.no_target:
            self.check_objects_exist(expression)
        return out


def _videos_of(path: Path) -> dict[str, object]:
    return load_videos_json(path, "Ref-YouTube-VOS expressions file")
