"""Small helpers shared by the entry points (no Hydra, no Lightning)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["check_tokenizer_fits", "parameter_counts", "write_json_atomic"]


def check_tokenizer_fits(
    tokenizer_vocab: int, model: nn.Module, tokenizer_path: str | os.PathLike[str], hint: str = ""
) -> None:
    """Refuse a tokenizer whose ids do not all have a row in the model's BEiT-3 word embedding.

    Args:
        tokenizer_vocab: the tokenizer's vocabulary size (its largest id + 1).
        model: an ``MPGSAM2`` (reads ``model.config.beit3["vocab_size"]``).
        tokenizer_path: named in the error. hint: appended to the error (what to change).

    Raises:
        ValueError: ``tokenizer_vocab`` exceeds the model's vocabulary.
    """
    model_vocab = int(model.config.beit3["vocab_size"])  # type: ignore[union-attr, index]
    if tokenizer_vocab > model_vocab:
        raise ValueError(
            f"the tokenizer ({tokenizer_path}) produces ids up to {tokenizer_vocab - 1}, but the model's BEiT-3 "
            f"vocabulary has {model_vocab} entries" + (f"; {hint}" if hint else "")
        )


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts (logged with the hyperparameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params/total": total, "params/trainable": trainable, "params/frozen": total - trainable}


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON to a temporary sibling and rename it: the file is complete or absent, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
