"""What each benchmark is: one row per benchmark, the only place its evaluation constants are stated.

A data module names its row (``benchmark = "mevis"``); ``eval.py``, validation during training, the staging and
zip writers and the scorers read the row instead of guessing from class names. Whether a split can be scored is
decided by its files (the released Ref-YouTube-VOS valid and MeViS valid have no masks; a held-out slice of train
has): the "splits with masks" column below is what the public releases hold.

| benchmark | PNG format | prediction files | submission zip | chunks | annotator sets | splits with masks | default split |
|---|---|---|---|---|---|---|---|
| ytvos (Ref-YouTube-VOS) | 0/255 ``L`` | ``<video>/<exp_id>/<frame>.png`` | under ``Annotations/`` | whole video | - | train | valid |
| mevis (MeViS v1) | ``p * 255`` ``L`` | ``<video>/<exp_id>/<frame>.png`` | at the root | 24 frames | - | train, valid_u | valid_u |
| mevis_v2 (MeViS v2) | 0/255 ``L`` | ``<video>/<exp_id>/<frame>.png`` | at the root | 24 frames | - | train, valid_u | valid_u |
| davis (Ref-DAVIS17) | palette ``P`` | ``anno_<k>/<video>/<frame>.png`` | none (scored here) | whole video | 4 | train, valid | valid |
| refcoco (RefCOCO/+/g) | 0/255 ``L`` | ``<sample_id>.png`` | none (scored here) | one image | - | train, val, testA, testB, test | val |

MeViS v1's zip goes to the CodaLab server 15094 (closing), v2's to the Codabench server 11420; a v2 score (J&F over
target and no-target expressions, N-acc, T-acc, Final: :mod:`mpgsam2.metrics.scoring`) is not comparable with a
v1 score. v2 empties every frame of an expression judged absent (``existence_threshold``,
:func:`mpgsam2.inference.apply_existence`); v1 does not (the paper's protocol).

Prediction files are where ``eval.py`` stages a model's PNGs and where ``eval.py predictions=DIR`` looks for any
method's (each at its frame's or image's original size). RefCOCO's ``sample_id`` is the converted json's ``images``
entry ``id`` (:class:`mpgsam2.data.RefCOCOSample`): one entry per (referred object, sentence), unique in its file,
so one PNG per referring expression (a COCO ref id is shared by the sentences of one object).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mpgsam2.data.davis import NUM_DAVIS_ANNOTATORS

__all__ = ["BENCHMARKS", "EXISTENCE_THRESHOLD_V2", "Benchmark", "MaskFormat", "Scoring", "benchmark"]

# MeViS v2's default existence threshold on max_t sigmoid(object score) (mpgsam2.inference.apply_existence).
# Above 0.5 on purpose: SAM 2 already empties each frame whose object score is below 0 (probability 0.5), so a
# threshold at or below 0.5 changes nothing; see docs/evaluation.md, "MeViS v1 and v2", for what it was measured to do.
EXISTENCE_THRESHOLD_V2 = 0.7


class MaskFormat(str, Enum):
    """What the staged PNGs hold (:mod:`mpgsam2.evaluation.masks` encodes each). A ``str`` enum: its value is what
    ``staging.json`` records."""

    BINARY = "binary"  # 0/255 ``L``: sigmoid > 0.5
    PROBABILITY = "probability"  # ``p * 255`` ``L`` where p >= 0.5, else 0
    PALETTE = "palette"  # one ``P`` PNG per frame, the objects' ids (DAVIS palette)

    @property
    def per_expression(self) -> bool:
        """One PNG per (expression, frame); False: one per frame for all of a video's objects (palette)."""
        return self is not MaskFormat.PALETTE

    def __str__(self) -> str:
        return self.value


class Scoring(str, Enum):
    """How predictions are scored (:func:`mpgsam2.metrics.scoring.score_predictions`)."""

    EXPRESSIONS = "expressions"  # J&F per expression (Ref-YouTube-VOS, MeViS)
    DAVIS = "davis"  # DAVIS-2017 unsupervised, per annotator set
    IMAGES = "images"  # mIoU, cIoU of referring images (RefCOCO/+/g)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's evaluation protocol.

    Attributes:
        name: the key in :data:`BENCHMARKS` (``eval.py benchmark=<name>``).
        title: how papers name it.
        mask_format: the staged PNGs (:class:`MaskFormat`; a row may be written with the value's string).
        prediction_file: where one prediction PNG sits in a staging or scored folder, a ``str.format`` template
            of the record's fields (see :meth:`prediction_path`).
        zip_prefix: the folder every file of the submission zip sits in; None: no submission server.
        chunk_size: frames per independent inference chunk (spec §3.2), None for the whole video.
        annotator_sets: Ref-DAVIS17's expression sets, each predicted and scored on its own; None elsewhere.
        default_split: the split ``eval.py`` predicts when the data config validates on nothing.
        scoring: :class:`Scoring` (or its value's string).
        dataset_version: the dataset's release (``"v1"`` / ``"v2"`` for MeViS), written into every record of a
            score; None where there is one release.
        existence_threshold: ``system.existence_threshold: auto``'s value: an expression whose highest per-frame
            object-score probability stays below it is predicted empty on every frame; None: no such decision.
        no_target_scores: the split has no-target expressions and is scored with N-acc, T-acc and Final besides
            J&F (MeViS v2).
    """

    name: str
    title: str
    mask_format: MaskFormat
    prediction_file: str
    zip_prefix: str | None
    chunk_size: int | None
    annotator_sets: int | None
    default_split: str
    scoring: Scoring
    dataset_version: str | None = None
    existence_threshold: float | None = None
    no_target_scores: bool = False

    def __post_init__(self) -> None:
        # a row may name its kinds by their values; an unknown one fails here, listing the known ones
        for field, kind in (("mask_format", MaskFormat), ("scoring", Scoring)):
            value = getattr(self, field)
            try:
                object.__setattr__(self, field, kind(value))
            except ValueError:
                known = [k.value for k in kind]
                raise ValueError(
                    f"benchmark {self.name!r}: {field}={value!r} is not one of {known}"
                ) from None

    @property
    def has_submission(self) -> bool:
        """Whether a leaderboard server takes a zip of the predictions."""
        return self.zip_prefix is not None

    @property
    def scores_images(self) -> bool:
        """Whether the benchmark's items are referring images (RefCOCO/+/g), not videos."""
        return self.scoring is Scoring.IMAGES

    def prediction_path(self, **fields: object) -> str:
        """The relative path of one prediction PNG, e.g. ``prediction_path(sample_id=7)`` -> ``"7.png"``."""
        return self.prediction_file.format(**fields)

    @property
    def annotators(self) -> list[int]:
        """The annotator sets to predict and score, 0..annotator_sets-1 (empty when the benchmark has none)."""
        return list(range(self.annotator_sets or 0))


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="ytvos",
            title="Ref-YouTube-VOS",
            mask_format=MaskFormat.BINARY,
            prediction_file="{video}/{exp_id}/{frame}.png",
            zip_prefix="Annotations/",
            chunk_size=None,
            annotator_sets=None,
            default_split="valid",
            scoring=Scoring.EXPRESSIONS,
        ),
        Benchmark(
            name="mevis",
            title="MeViS",
            mask_format=MaskFormat.PROBABILITY,
            prediction_file="{video}/{exp_id}/{frame}.png",
            zip_prefix="",  # the video folders at the zip's root (the MeViS guideline)
            chunk_size=24,  # spec §3.2: independent 24-frame chunks
            annotator_sets=None,
            default_split="valid_u",
            scoring=Scoring.EXPRESSIONS,
            dataset_version="v1",
        ),
        Benchmark(
            name="mevis_v2",
            title="MeViS v2",
            mask_format=MaskFormat.BINARY,  # the v2 server takes 0/255 PNGs
            prediction_file="{video}/{exp_id}/{frame}.png",
            zip_prefix="",  # the v1 zip layout, kept by v2
            chunk_size=24,  # as v1 (spec §3.2)
            annotator_sets=None,
            default_split="valid_u",
            scoring=Scoring.EXPRESSIONS,
            dataset_version="v2",
            existence_threshold=EXISTENCE_THRESHOLD_V2,
            no_target_scores=True,
        ),
        Benchmark(
            name="davis",
            title="Ref-DAVIS17",
            mask_format=MaskFormat.PALETTE,
            prediction_file="anno_{annotator}/{video}/{frame}.png",
            zip_prefix=None,
            chunk_size=None,
            annotator_sets=NUM_DAVIS_ANNOTATORS,
            default_split="valid",
            scoring=Scoring.DAVIS,
        ),
        Benchmark(
            name="refcoco",
            title="RefCOCO/+/g",
            mask_format=MaskFormat.BINARY,
            prediction_file="{sample_id}.png",
            zip_prefix=None,
            chunk_size=None,
            annotator_sets=None,
            default_split="val",
            scoring=Scoring.IMAGES,
        ),
    )
}


def benchmark(name: str) -> Benchmark:
    """The row ``name``.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}: expected one of {sorted(BENCHMARKS)}") from None
