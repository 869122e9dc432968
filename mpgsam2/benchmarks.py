"""What each benchmark is: one row per benchmark, the only place its evaluation constants are stated.

A data module names its row (``benchmark = "mevis"``); ``eval.py``, validation during training, the staging and
zip writers and the scorers read the row instead of guessing from class names. Whether a split can be scored is
decided by its files (the released Ref-YouTube-VOS valid and MeViS valid have no masks; a held-out slice of train
has): the "splits with masks" column below is what the public releases hold.

| benchmark | PNG format | submission zip | chunks | annotator sets | splits with masks | default split |
|---|---|---|---|---|---|---|
| ytvos (Ref-YouTube-VOS) | 0/255 ``L`` | ``Annotations/<video>/<exp>/<frame>.png`` | whole video | - | train | valid |
| mevis (MeViS) | ``p * 255`` ``L`` | ``<video>/<exp>/<frame>.png`` | 24 frames | - | train, valid_u | valid_u |
| davis (Ref-DAVIS17) | palette ``P`` | none (scored here) | whole video | 4 | train, valid | valid |
| refcoco (RefCOCO/+/g) | none (scored in memory) | none | one image | - | train, val, testA, testB, test | val |
"""

from __future__ import annotations

from dataclasses import dataclass

from mpgsam2.data.davis import NUM_DAVIS_ANNOTATORS

__all__ = ["BENCHMARKS", "Benchmark", "benchmark"]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's evaluation protocol.

    Attributes:
        name: the key in :data:`BENCHMARKS` (``eval.py dataset=<name>``).
        title: how papers name it.
        mask_format: the staged PNGs: ``"binary"`` (0/255), ``"probability"`` (``p * 255`` above 0.5) or
            ``"palette"`` (object ids, DAVIS palette); None: predictions are scored in memory (images).
        zip_prefix: the folder every file of the submission zip sits in; None: no submission server.
        chunk_size: frames per independent inference chunk (spec §3.2), None for the whole video.
        annotator_sets: Ref-DAVIS17's expression sets, each predicted and scored on its own; None elsewhere.
        default_split: the split ``eval.py`` predicts when the data config validates on nothing.
        scoring: ``"expressions"`` (J&F per expression, MeViS / Ref-YouTube-VOS), ``"davis"`` (DAVIS-2017
            unsupervised, per annotator set) or ``"images"`` (mIoU, cIoU).
    """

    name: str
    title: str
    mask_format: str | None
    zip_prefix: str | None
    chunk_size: int | None
    annotator_sets: int | None
    default_split: str
    scoring: str

    @property
    def has_submission(self) -> bool:
        return self.zip_prefix is not None

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
            mask_format="binary",
            zip_prefix="Annotations/",
            chunk_size=None,
            annotator_sets=None,
            default_split="valid",
            scoring="expressions",
        ),
        Benchmark(
            name="mevis",
            title="MeViS",
            mask_format="probability",
            zip_prefix="",  # the video folders at the zip's root (the MeViS guideline)
            chunk_size=24,  # spec §3.2: independent 24-frame chunks
            annotator_sets=None,
            default_split="valid_u",
            scoring="expressions",
        ),
        Benchmark(
            name="davis",
            title="Ref-DAVIS17",
            mask_format="palette",
            zip_prefix=None,
            chunk_size=None,
            annotator_sets=NUM_DAVIS_ANNOTATORS,
            default_split="valid",
            scoring="davis",
        ),
        Benchmark(
            name="refcoco",
            title="RefCOCO/+/g",
            mask_format=None,
            zip_prefix=None,
            chunk_size=None,
            annotator_sets=None,
            default_split="val",
            scoring="images",
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
