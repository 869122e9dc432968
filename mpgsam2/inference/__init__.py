"""Inference over whole videos (:mod:`~mpgsam2.inference.predictor`) and referring images
(:mod:`~mpgsam2.inference.images`). The evaluation names once here (staging, submission writers) now live in
:mod:`mpgsam2.evaluation` and are still importable from here (on first use, PEP 562: the evaluation runner imports
this package's predictor)."""

from __future__ import annotations

import importlib
from typing import Any

from mpgsam2.inference.predictor import (
    EMPTY_LOGIT,
    ExpressionPrediction,
    FrameSequence,
    apply_existence,
    chunk_bounds,
    expression_text,
    predict_expression,
    predict_video,
    resize_logits,
)

# old name -> the module that now defines it (through the mpgsam2.inference.submission alias)
_MOVED = {
    name: "mpgsam2.inference.submission"
    for name in (
        "EvalTarget",
        "ModelPredictor",
        "PaletteMerger",
        "StagingArea",
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
    )
}

__all__ = [
    "EMPTY_LOGIT",
    "EvalTarget",
    "apply_existence",
    "ExpressionPrediction",
    "FrameSequence",
    "ModelPredictor",
    "PaletteMerger",
    "StagingArea",
    "binary_masks",
    "check_manifest",
    "chunk_bounds",
    "expression_text",
    "model_predictor",
    "predict_expression",
    "predict_to_staging",
    "predict_video",
    "probability_masks",
    "rank_and_world",
    "resize_logits",
    "shard",
    "submission_entries",
    "write_submission_zip",
    "write_zip",
]


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'mpgsam2.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MOVED[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
