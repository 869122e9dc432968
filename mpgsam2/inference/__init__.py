"""Inference over whole videos and the leaderboard submission writers (scoring: :mod:`mpgsam2.metrics.scoring`)."""

from mpgsam2.inference.predictor import (
    ExpressionPrediction,
    FrameSequence,
    chunk_bounds,
    predict_expression,
    predict_video,
    resize_logits,
)
from mpgsam2.inference.submission import (
    EvalTarget,
    PaletteMerger,
    StagingArea,
    binary_masks,
    check_manifest,
    model_predictor,
    predict_to_staging,
    probability_masks,
    rank_and_world,
    shard,
    submission_entries,
    write_submission_zip,
    write_zip,
)

__all__ = [
    "EvalTarget",
    "ExpressionPrediction",
    "FrameSequence",
    "PaletteMerger",
    "StagingArea",
    "binary_masks",
    "check_manifest",
    "chunk_bounds",
    "model_predictor",
    "predict_expression",
    "predict_video",
    "resize_logits",
    "predict_to_staging",
    "probability_masks",
    "rank_and_world",
    "shard",
    "submission_entries",
    "write_submission_zip",
    "write_zip",
]
