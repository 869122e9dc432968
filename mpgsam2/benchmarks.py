"""Moved to :mod:`mpgsam2.evaluation.benchmarks`; this alias keeps the old import path working for a release."""

from mpgsam2.evaluation.benchmarks import BENCHMARKS, Benchmark, MaskFormat, Scoring, benchmark

__all__ = ["BENCHMARKS", "Benchmark", "MaskFormat", "Scoring", "benchmark"]
