"""Inference over whole videos and (with the dataset issue) leaderboard submission writers."""

from mpgsam2.inference.predictor import ExpressionPrediction, chunk_bounds, predict_expression

__all__ = ["ExpressionPrediction", "chunk_bounds", "predict_expression"]
