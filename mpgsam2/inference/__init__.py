"""Inference over whole videos, leaderboard submission writers and scoring of prediction folders."""

from mpgsam2.inference.predictor import ExpressionPrediction, chunk_bounds, predict_expression, resize_logits
from mpgsam2.inference.scoring import (
    PredictionFiles,
    davis_unsupervised_scores,
    score_davis,
    score_expressions,
    score_predictions,
)
from mpgsam2.inference.submission import (
    DATASET_KINDS,
    MASK_FORMATS,
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
    "DATASET_KINDS",
    "MASK_FORMATS",
    "EvalTarget",
    "ExpressionPrediction",
    "PaletteMerger",
    "PredictionFiles",
    "StagingArea",
    "binary_masks",
    "check_manifest",
    "chunk_bounds",
    "davis_unsupervised_scores",
    "model_predictor",
    "predict_expression",
    "resize_logits",
    "predict_to_staging",
    "probability_masks",
    "rank_and_world",
    "score_davis",
    "score_expressions",
    "score_predictions",
    "shard",
    "submission_entries",
    "write_submission_zip",
    "write_zip",
]
