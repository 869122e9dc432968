"""Ref-DAVIS17 reader, in the Ref-YouTube-VOS-style layout that ReferFormer's
``tools/data/convert_davis_to_ytvos.py`` produces (and the original's ``inference_davis.py`` reads)::

    <root>/meta_expressions/<split>/meta_expressions.json      split in train (60 videos), valid (30)
        {"videos": {<vid>: {"expressions": {"0": {"exp": str, "obj_id": "1"}, "1": {...}, ...},
                            "frames": ["00000", "00001", ...]}}}
    <root>/<split>/JPEGImages/<vid>/<name>.jpg                  DAVIS-2017 480p frames
    <root>/<split>/Annotations/<vid>/<name>.png                 palette PNG from Annotations_unsupervised/480p
    <root>/<split>/meta.json                                    object categories (not read)

Expression ids are ``"0", "1", ...``: per object (in ``obj_id`` order), four expressions, one per "annotator"
set of the DAVIS text annotations (Khoreva et al.), so expression ``i`` is annotator ``i % 4`` of the object
``i // 4`` (spec §3.3)::

    annotator 0: Davis17_annot1.txt             (annotator 1, first-frame expressions)
    annotator 1: Davis17_annot1_full_video.txt  (annotator 1, full-video expressions)
    annotator 2: Davis17_annot2.txt             (annotator 2, first-frame expressions)
    annotator 3: Davis17_annot2_full_video.txt  (annotator 2, full-video expressions)

The evaluation runs once per annotator set (all objects of a video predicted from that set's expressions, merged
into one palette PNG per frame) and reports the mean of the four; :meth:`RefDAVISSource.annotator_of` gives the
set of an expression, ``obj_ids[0]`` its object (the palette index to write).

Construction only parses the json; missing or bad frames and masks are reported when they are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mpgsam2.data.errors import DatasetError
from mpgsam2.data.records import ExpressionRecord, VideoRecord
from mpgsam2.data.sources import (
    DIGITS,
    PaletteMaskSource,
    load_videos_json,
    parse_expression_entry,
    parse_obj_id,
    parse_video_entry,
)

__all__ = ["DAVIS_ANNOTATORS", "DAVIS_SPLITS", "NUM_DAVIS_ANNOTATORS", "RefDAVISSource", "davis_annotator"]

DAVIS_SPLITS = ("train", "valid")
NUM_DAVIS_ANNOTATORS = 4
# The text-annotation file of each annotator set, in the converter's interleaving order.
DAVIS_ANNOTATORS = (
    "Davis17_annot1.txt",
    "Davis17_annot1_full_video.txt",
    "Davis17_annot2.txt",
    "Davis17_annot2_full_video.txt",
)


def davis_annotator(exp_id: str) -> int:
    """The annotator set (0..3) of a converted Ref-DAVIS17 expression id: ``int(exp_id) % 4``.

    Raises:
        ValueError: ``exp_id`` is not a decimal integer string.
    """
    if not DIGITS.fullmatch(exp_id):
        raise ValueError(f"Ref-DAVIS17 expression id {exp_id!r} is not an integer string such as '5'")
    return int(exp_id) % NUM_DAVIS_ANNOTATORS


class RefDAVISSource(PaletteMaskSource):
    """A Ref-DAVIS17 split as a :class:`~mpgsam2.data.sources.ReferringVideoSource`.

    Args:
        root: the converted dataset folder (holding ``meta_expressions/``, ``train/``, ``valid/``).
        split: ``"valid"`` (the benchmark) or ``"train"``.
        annotator: keep only the expressions of this annotator set (0..3, see the module docstring); None keeps
            all four.

    Attributes:
        name: ``"davis/<split>"``, with ``"/anno<k>"`` appended when ``annotator`` is set.
        expressions: one record per kept expression, ``obj_ids = (obj_id,)``; videos and expressions in json
            order (parity: ``inference_davis.py``).
        videos: the videos, same order; frames sorted (parity: ReferFormer's ``datasets/davis.py``).
        has_masks: whether ``<root>/<split>/Annotations`` exists (the converter writes it for both splits).
        expressions_file / frames_dir / annotations_dir: the paths read.

    Raises:
        ValueError: unknown split or annotator.
        DatasetError: naming the json (and the video / expression) when it is missing, not JSON, lacks
            ``videos`` / ``frames`` / ``expressions`` / ``exp`` / ``obj_id``, has an expression id that is not an
            integer string, an ``obj_id`` outside 1..255, two expressions of one annotator set for the same object,
            an unsafe video id, expression id or frame name, or a frame listed twice.
    """

    _objects_word = "object"
    _appear_word = "appears"

    def __init__(self, root: str | Path, split: str = "valid", annotator: int | None = None) -> None:
        if split not in DAVIS_SPLITS:
            raise ValueError(f"Ref-DAVIS17 split must be one of {DAVIS_SPLITS}, got {split!r}")
        if annotator is not None and annotator not in range(NUM_DAVIS_ANNOTATORS):
            raise ValueError(
                f"Ref-DAVIS17 annotator must be None or 0..{NUM_DAVIS_ANNOTATORS - 1}, got {annotator!r}"
            )
        self.root = Path(root)
        self.split = split
        self.annotator = annotator
        self.name = f"davis/{split}" + (f"/anno{annotator}" if annotator is not None else "")
        self.expressions_file = self.root / "meta_expressions" / split / "meta_expressions.json"
        self.frames_dir = self.root / split / "JPEGImages"
        self.annotations_dir = self.root / split / "Annotations"

        videos_json = load_videos_json(self.expressions_file, "Ref-DAVIS17 expressions file")
        self.videos: list[VideoRecord] = []
        self.expressions: list[ExpressionRecord] = []
        for vid, entry in videos_json.items():
            video, expressions = self._parse_video(vid, entry)
            self.videos.append(video)
            self.expressions.extend(
                e for e in expressions if annotator is None or self.annotator_of(e) == annotator
            )
        self.has_masks = self.annotations_dir.is_dir()
        self._present_ids: dict[str, frozenset[int]] = {}

    def _repr_extra(self) -> str:
        return f"annotator={self.annotator}, "

    @staticmethod
    def annotator_of(expression: ExpressionRecord) -> int:
        """The annotator set (0..3) of an expression of this dataset (``int(exp_id) % 4``)."""
        return davis_annotator(expression.exp_id)

    @staticmethod
    def object_of(expression: ExpressionRecord) -> int:
        """The object (palette index) an expression refers to."""
        return expression.obj_ids[0]

    # ----------------------------------------------------------------------------------------------- parsing

    def _parse_video(self, vid: str, entry: object) -> tuple[VideoRecord, list[ExpressionRecord]]:
        src = self.expressions_file
        # parity: ReferFormer's datasets/davis.py sorts the names (zero-padded: temporal order)
        video, expressions = parse_video_entry(src, vid, entry, self.frames_dir, sort_frames=True)
        records = []
        seen: dict[tuple[int, int], str] = {}  # (annotator, object) -> expression id
        for exp_id, exp in expressions.items():
            exp, caption, where = parse_expression_entry(src, vid, exp_id, exp)
            try:
                annotator = davis_annotator(exp_id)
            except ValueError:
                raise DatasetError(
                    f"{where}: expression ids must be integer strings ('0', '1', ...): expression i belongs to "
                    "annotator set i % 4"
                ) from None
            if "obj_id" not in exp:
                raise DatasetError(f"{where}: missing 'obj_id'")
            # the converter writes the ids as strings ("1"); plain integers are accepted too
            obj_id = parse_obj_id(exp["obj_id"], where)
            other = seen.setdefault((annotator, obj_id), exp_id)
            if other != exp_id:
                raise DatasetError(
                    f"{where}: expressions {other!r} and {exp_id!r} of annotator set {annotator} both refer to "
                    f"object {obj_id}; each annotator set describes each object once"
                )
            records.append(ExpressionRecord(video=video, exp_id=exp_id, caption=caption, obj_ids=(obj_id,)))
        return video, records

    # ----------------------------------------------------------------------------------------------- reading

    def read_object_masks(self, video: VideoRecord, indices: Sequence[int]) -> np.ndarray:
        """All objects of frames ``indices``: uint8 (t, H, W) palette indices (0 = background), each annotation
        checked to be a palette PNG of its frame's size (the ground truth of the DAVIS-2017 evaluation).

        Raises:
            DatasetError: the split has no annotations (naming the folder), or a bad annotation (naming it).
        """
        self._require_masks()
        return self._read_object_ids(video, indices)

    def read_masks(self, expression: ExpressionRecord, indices: Sequence[int]) -> np.ndarray:
        """The expression's object in frames ``indices``: bool (t, H, W).

        When the object is in none of the requested frames, the video's other annotations are checked once
        (then cached): an object id that appears in no annotation of the video raises.

        Raises:
            DatasetError: the split has no annotations (naming the folder), a bad annotation file (naming it),
                or an object absent from the whole video (naming the video's annotation folder and the json).
        """
        out = np.isin(self.read_object_masks(expression.video, indices), expression.obj_ids)
        if not out.any():
            self.check_objects_exist(expression)
        return out

    def annotation_palette(self) -> list[int] | None:
        """The palette (flat RGB list) of the split's first annotation PNG, or None without annotations
        (parity: ``inference_davis.py`` writes its predictions with the palette of a ground-truth PNG)."""
        if not self.has_masks or not self.videos:
            return None
        path = self.mask_path(self.videos[0], 0)
        try:
            with Image.open(path) as img:
                return img.getpalette()
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{path}: cannot read the annotation's palette: {err}") from err

    def _require_masks(self) -> None:
        if not self.has_masks:
            raise DatasetError(
                f"{self.annotations_dir}: folder not found; split {self.split!r} has no masks to read"
            )
