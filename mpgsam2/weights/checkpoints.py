"""The one reader of ``train.py`` (Lightning) checkpoints, and the one loader of a model from any path.

``eval.py``, ``python -m mpgsam2.predict`` and ``build_model(weights={"mpgsam2": "x.ckpt"})`` (through
``load_weights``) all read checkpoints through :func:`read_train_checkpoint`, so the three agree on what a valid
file is and on the errors; ``eval.py`` and ``predict`` turn a path into a model with :func:`load_model`, the
front door (``mpgsam2.load_model``).

A checkpoint is data, never code: the model is rebuilt from the stored ``MPGSAM2Config`` values by the project's
own classes (no ``_target_`` or other name in the file is imported or instantiated), and the stored run config
is returned as plain containers for the caller to check (``data_modules.checked_data_config``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mpgsam2.modeling.config import MPGSAM2Config
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.weights.io import CheckpointError, load_torch_file

__all__ = [
    "RELEASED_TOKENIZER",
    "TRAIN_CHECKPOINT_KEY",
    "LoadedModel",
    "TrainCheckpoint",
    "folder_tokenizer",
    "load_model",
    "read_train_checkpoint",
    "train_checkpoint_record",
    "weights_digest",
]

logger = logging.getLogger(__name__)

# checkpoint[TRAIN_CHECKPOINT_KEY] = {"config", "model_config"}, written by
# mpgsam2.lit_module, which imports this key (this module stays free of Lightning)
TRAIN_CHECKPOINT_KEY = "mpgsam2"
# the tokenizer file of a released MPG-SAM 2 folder (HF save_pretrained of XLMRobertaTokenizer, = beit3.spm)
RELEASED_TOKENIZER = "sentencepiece.bpe.model"
_MODEL_PREFIX = "model."  # RVOSLitModule keeps the network as `self.model`


def train_checkpoint_record(
    run_config: Mapping[str, Any] | None, model: MPGSAM2, tokenizer_path: str | None
) -> dict[str, Any]:
    """What ``train.py`` stores in ``checkpoint[TRAIN_CHECKPOINT_KEY]``, as plain containers only (the file must load
    with ``torch.load(weights_only=True)``): the run config and the model's config.

    Each thing is stored once. The model is the config it was built with (``model_config``, what
    :func:`load_model` rebuilds it from): the run config's ``model`` node, which says the same in Hydra's terms, is
    left out. The tokenizer is the run config's ``data.tokenizer_path``, set to ``tokenizer_path`` (the file the
    run read, resolved) so that the stored path does not depend on the working directory."""
    run = {k: v for k, v in (run_config or {}).items() if k != "model"}
    if tokenizer_path is not None:
        data = run.get("data")
        run["data"] = {**(data if isinstance(data, Mapping) else {}), "tokenizer_path": tokenizer_path}
    return {"config": _plain(run), "model_config": _plain(model.config.to_dict())}


def _plain(value: Any) -> Any:
    """Recursively turn a config value into JSON-like containers (tuples to lists, dtypes to strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


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
    ckpt = load_torch_file(path)
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


@dataclass(frozen=True)
class LoadedModel:
    """A model read from a path, with what inference needs beside it.

    Attributes:
        model: the network (on the CPU, in the mode ``MPGSAM2`` starts in).
        tokenizer_path: the sentencepiece model the checkpoint recorded or the folder ships (None: neither).
        run_config: a ``train.py`` checkpoint's resolved run config, plain containers (None for folders). Data
            only: check it before use (``data_modules.checked_data_config``).
        path: where it was read from.
    """

    model: MPGSAM2
    tokenizer_path: Path | None
    run_config: Mapping[str, Any] | None
    path: Path


def load_model(
    path: str | Path,
    hf_gamma_compat: bool = False,
    compile: bool = False,
    *,
    config_path: str | Path | None = None,
) -> LoadedModel:
    """The model in ``path``: a ``train.py`` checkpoint (rebuilt from its stored ``model_config``), our export
    folder or a released MPG-SAM 2 folder (``config.json`` + weights, with ``sentencepiece.bpe.model``). The
    front door for a model from a path (``mpgsam2.load_model``); weights into a model built already:
    :func:`mpgsam2.weights.load_weights`.

    Args:
        path: the file or folder.
        hf_gamma_compat: reproduce the original's from_pretrained, which left the memory-encoder layer scales at
            1e-6 (released folders only; see :func:`mpgsam2.weights.convert_mpgsam2`).
        config_path: the ``config.json`` of a single weights file (a DeepSpeed ``zero_to_fp32`` export, keys
            ``module.evf_model.``, or a ``pytorch_model.bin``) given as ``path``.
        compile: run the model's image encoder and memory attention through ``torch.compile``
            (:meth:`~mpgsam2.MPGSAM2.compile_for_inference`; compiled on the first call).

    Raises:
        CheckpointError: the path is neither, a stored value is invalid, or the weights do not fit (the message
            names the file and the key).
    """
    from mpgsam2.weights.loader import load_into
    from mpgsam2.weights.pretrained import read_model_folder

    path = Path(path)
    if path.is_dir() or config_path is not None:
        model = read_model_folder(path, config_path=config_path, hf_gamma_compat=hf_gamma_compat)
        if compile:
            model.compile_for_inference()
        return LoadedModel(model, folder_tokenizer(path) if path.is_dir() else None, None, path)
    ckpt = read_train_checkpoint(path)
    stored_config = ckpt.require("model_config")
    if not isinstance(stored_config, Mapping):
        raise CheckpointError(f"{path}: '{TRAIN_CHECKPOINT_KEY}.model_config' is not a mapping")
    try:
        config = MPGSAM2Config.from_dict(dict(stored_config))
        model = MPGSAM2(config)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: invalid '{TRAIN_CHECKPOINT_KEY}.model_config': {err}") from err
    logger.info("%s", load_into(model, ckpt.state_dict, source=str(path)))
    if compile:
        model.compile_for_inference()
    run_config = ckpt.stored.get("config")
    # checkpoints written before 2026-12-06 also stored the tokenizer beside the run config
    tokenizer = ckpt.stored.get("tokenizer_path")
    if tokenizer is None and isinstance(run_config, Mapping) and isinstance(run_config.get("data"), Mapping):
        tokenizer = run_config["data"].get("tokenizer_path")
    return LoadedModel(
        model,
        Path(tokenizer) if isinstance(tokenizer, str) and tokenizer else None,
        run_config if isinstance(run_config, Mapping) else None,
        path,
    )


def weights_digest(model: nn.Module) -> str:
    """A content hash of a model's state (names, shapes, dtypes and bytes): equal iff the weights are equal."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()
