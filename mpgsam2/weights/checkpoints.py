"""The one reader of ``train.py`` (Lightning) checkpoints, and where a model folder keeps its tokenizer.

``eval.py``, ``python -m mpgsam2.predict`` and ``build_model(weights={"mpgsam2": "x.ckpt"})`` all read
checkpoints through :func:`read_train_checkpoint`, so the three agree on what a valid file is and on the errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mpgsam2.weights.io import CheckpointError

__all__ = [
    "RELEASED_TOKENIZER",
    "TRAIN_CHECKPOINT_KEY",
    "TrainCheckpoint",
    "folder_tokenizer",
    "read_train_checkpoint",
]

# checkpoint[TRAIN_CHECKPOINT_KEY] = {"config", "model_config", "tokenizer_path"}, written by
# mpgsam2.lit_module, which imports this key (this module stays free of Lightning)
TRAIN_CHECKPOINT_KEY = "mpgsam2"
# the tokenizer file of a released MPG-SAM 2 folder (HF save_pretrained of XLMRobertaTokenizer, = beit3.spm)
RELEASED_TOKENIZER = "sentencepiece.bpe.model"
_MODEL_PREFIX = "model."  # RVOSLitModule keeps the network as `self.model`


@dataclass(frozen=True)
class TrainCheckpoint:
    """What a ``train.py`` checkpoint holds for inference."""

    path: Path
    state_dict: dict[str, Tensor]  # the model's weights under our key names ("model." stripped)
    stored: Mapping[str, Any] = field(default_factory=dict)  # checkpoint["mpgsam2"]; empty in older files

    def require(self, key: str) -> Any:
        """``stored[key]`` (``config``: the run's Hydra config; ``model_config``: ``MPGSAM2Config.to_dict()``).

        Raises:
            CheckpointError: the checkpoint does not record ``key``.
        """
        if self.stored.get(key) is None:
            raise CheckpointError(
                f"{self.path}: not a train.py checkpoint (no stored '{TRAIN_CHECKPOINT_KEY}.{key}'); for exported "
                "or released weights pass their folder"
            )
        return self.stored[key]


def read_train_checkpoint(path: str | Path) -> TrainCheckpoint:
    """Read a ``train.py`` checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        CheckpointError: the file is missing, is not loadable with ``weights_only=True``, or has no Lightning
            ``state_dict`` with ``model.`` weights (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a loadable checkpoint (weights_only=True): {err}") from err
    lightning_state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    state = (
        {k[len(_MODEL_PREFIX) :]: v for k, v in lightning_state.items() if k.startswith(_MODEL_PREFIX)}
        if isinstance(lightning_state, dict)
        else {}
    )
    if not state:
        raise CheckpointError(
            f"{path}: not a train.py checkpoint (no Lightning 'state_dict' with '{_MODEL_PREFIX}' weights); for "
            "exported or released weights pass their folder"
        )
    stored = ckpt.get(TRAIN_CHECKPOINT_KEY)
    return TrainCheckpoint(path, state, stored if isinstance(stored, dict) else {})


def folder_tokenizer(folder: str | Path) -> Path | None:
    """The sentencepiece model a released MPG-SAM 2 folder ships, None when it has none."""
    tokenizer = Path(folder) / RELEASED_TOKENIZER
    return tokenizer if tokenizer.is_file() else None
