"""Moved to :mod:`mpgsam2.evaluation.benchmarks`; this alias keeps the old import path working for a release."""

from mpgsam2.evaluation.benchmarks import (
    BENCHMARKS,
    EXISTENCE_THRESHOLD_V2,
    Benchmark,
    MaskFormat,
    Scoring,
    benchmark,
)

__all__ = ["BENCHMARKS", "EXISTENCE_THRESHOLD_V2", "Benchmark", "MaskFormat", "Scoring", "benchmark"]
