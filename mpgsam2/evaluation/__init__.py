"""Evaluation on the benchmarks: what each benchmark is (:mod:`~mpgsam2.evaluation.benchmarks`), the runner that
predicts a data module's targets one video at a time (:mod:`~mpgsam2.evaluation.runner`), mask encoding
(:mod:`~mpgsam2.evaluation.masks`), resumable staging (:mod:`~mpgsam2.evaluation.staging`), submission zips
(:mod:`~mpgsam2.evaluation.zips`) and the whole run (:mod:`~mpgsam2.evaluation.evaluate`; scoring:
:mod:`mpgsam2.metrics.scoring`). ``docs/architecture.md`` follows one video from ``eval.py`` to a PNG in the zip.

The names are imported on first use (PEP 562): the scorers in :mod:`mpgsam2.metrics` read the benchmark rows
without loading the runner and the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "BENCHMARKS": "mpgsam2.evaluation.benchmarks",
    "Benchmark": "mpgsam2.evaluation.benchmarks",
    "MaskFormat": "mpgsam2.evaluation.benchmarks",
    "Scoring": "mpgsam2.evaluation.benchmarks",
    "benchmark": "mpgsam2.evaluation.benchmarks",
    "PaletteMerger": "mpgsam2.evaluation.masks",
    "binary_masks": "mpgsam2.evaluation.masks",
    "probability_masks": "mpgsam2.evaluation.masks",
    "EvalTarget": "mpgsam2.evaluation.staging",
    "StagingArea": "mpgsam2.evaluation.staging",
    "check_manifest": "mpgsam2.evaluation.staging",
    "submission_entries": "mpgsam2.evaluation.zips",
    "write_submission_zip": "mpgsam2.evaluation.zips",
    "write_zip": "mpgsam2.evaluation.zips",
    "ModelPredictor": "mpgsam2.evaluation.runner",
    "PerExpression": "mpgsam2.evaluation.runner",
    "UnitBatches": "mpgsam2.evaluation.runner",
    "UnitPredictor": "mpgsam2.evaluation.runner",
    "model_predictor": "mpgsam2.evaluation.runner",
    "predict_to_staging": "mpgsam2.evaluation.runner",
    "EvalDataModule": "mpgsam2.evaluation.evaluate",
    "evaluate_model": "mpgsam2.evaluation.evaluate",
    "score_folder": "mpgsam2.evaluation.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mpgsam2.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
