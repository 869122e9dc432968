"""Moved to :mod:`mpgsam2.evaluation.evaluate`; this alias keeps the old import path working for a release."""

from __future__ import annotations

from mpgsam2.evaluation.benchmarks import Benchmark
from mpgsam2.evaluation.evaluate import (
    EvalDataModule,
    eval_targets,
    evaluate_model,
    image_eval_dataset,
    score_folder,
)

__all__ = [
    "EvalDataModule",
    "annotators_of",
    "eval_targets",
    "evaluate_model",
    "image_eval_dataset",
    "score_folder",
]


def annotators_of(bench: Benchmark, datamodule: object) -> list[int]:
    """The annotator sets to evaluate: all of the benchmark's, or the data config's ``annotator`` (the data
    module's ``eval_targets`` now decides; see :func:`mpgsam2.evaluation.evaluate.target_annotators`)."""
    annotator = getattr(datamodule, "annotator", None)
    return bench.annotators if annotator is None else [int(annotator)]
