"""Moved to :mod:`mpgsam2.evaluation` (runner, masks, staging, zips) and :mod:`mpgsam2.distributed`; this alias
keeps the old import path working for a release."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from mpgsam2.data.batch import ReferringBatch
from mpgsam2.distributed import barrier, rank_and_world, shard
from mpgsam2.evaluation import runner as _runner
from mpgsam2.evaluation.masks import DAVIS_BACKGROUND, PaletteMerger, binary_masks, probability_masks
from mpgsam2.evaluation.runner import ModelPredictor, PerExpression, UnitPredictor, model_predictor
from mpgsam2.evaluation.staging import EvalTarget, StagingArea, Unit, check_manifest
from mpgsam2.evaluation.zips import submission_entries, write_submission_zip, write_zip

__all__ = [
    "DAVIS_BACKGROUND",
    "EvalTarget",
    "ModelPredictor",
    "PaletteMerger",
    "StagingArea",
    "Unit",
    "barrier",
    "binary_masks",
    "check_manifest",
    "model_predictor",
    "predict_to_staging",
    "probability_masks",
    "rank_and_world",
    "shard",
    "submission_entries",
    "write_submission_zip",
    "write_zip",
]

# the old one-expression predictor type: a collated expression -> its (T, H, W) logits
Predictor = Callable[[ReferringBatch], Tensor]


def predict_to_staging(predict: UnitPredictor | Predictor, *args: Any, **kwargs: Any) -> list[Unit]:
    """:func:`mpgsam2.evaluation.runner.predict_to_staging`, which takes a
    :class:`~mpgsam2.evaluation.runner.UnitPredictor`; the old path also took a one-expression predictor, which
    is wrapped in :class:`~mpgsam2.evaluation.runner.PerExpression` here."""
    unit_predictor = predict if isinstance(predict, UnitPredictor) else PerExpression(predict)
    return _runner.predict_to_staging(unit_predictor, *args, **kwargs)
