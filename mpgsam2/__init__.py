"""MPG-SAM 2 for referring video object segmentation: the public API, for use from Python.

    import mpgsam2

    loaded = mpgsam2.load_model("logs/train/runs/<run>/checkpoints/final.ckpt")  # or a released / exported folder
    tokenizer = mpgsam2.Beit3Tokenizer(loaded.tokenizer_path)
    predictions = mpgsam2.predict_video(loaded.model.eval(), sam_frames, beit_frames, expressions, (H, W))

The names are imported on first use (PEP 562), so ``import mpgsam2.data`` does not load the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "MPGSAM2": "mpgsam2.modeling.mpgsam2",
    "MPGSAM2Config": "mpgsam2.modeling.config",
    "Beit3Tokenizer": "mpgsam2.text.tokenizer",
    "LoadedModel": "mpgsam2.weights",
    "load_model": "mpgsam2.weights",
    "build_model": "mpgsam2.build",
    "ExpressionPrediction": "mpgsam2.inference.predictor",
    "predict_video": "mpgsam2.inference.predictor",
    "predict_expression": "mpgsam2.inference.predictor",
    "segment_to_folder": "mpgsam2.media.segment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mpgsam2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
