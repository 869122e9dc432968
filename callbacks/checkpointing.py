"""Checkpoints a user can trust: atomic writes, a ``last.ckpt`` that is always the latest state, and the random
states that make a resumed run continue exactly.

- :class:`AtomicCheckpointIO` (a Trainer plugin) writes every checkpoint through :func:`mpgsam2.utils.atomic_write`
  (a reader sees the previous file or the complete new one; a killed save leaves no temporary file) and reads
  them with ``torch.load(weights_only=True)``, naming the file in every error.
- :class:`LatestCheckpoint` keeps ``<dirpath>/last.ckpt`` the latest training state: every ``every_n_train_steps``
  optimizer steps and at the end of training, whatever the monitored metric does (the best model is
  ``best.ckpt``, written by a ``ModelCheckpoint`` on ``val/jf``). It refuses to save a state whose weights are
  not finite, so the last good ``last.ckpt`` survives a divergence.
- :class:`RandomStateCheckpoint` stores the torch (CPU and CUDA, every process), numpy and Python random states in
  each checkpoint and restores them when training resumes. Data-loader workers need no state of their own: every
  training item is a pure function of (seed, epoch, index), the worker seeds come from the loader's generator,
  which is reseeded per epoch, and the data module restores the sampler's position
  (``ReferringVideoDataModule.state_dict``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mpgsam2.utils import atomic_write, local_values
from mpgsam2.weights.io import load_torch_file

__all__ = ["AtomicCheckpointIO", "LatestCheckpoint", "RandomStateCheckpoint", "first_nonfinite_parameter"]

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing atomically on the target's own file system."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only is always True here, whatever the caller asks: a checkpoint is data (errors name the file)
        checkpoint = load_torch_file(path)
        if not isinstance(checkpoint, dict):
            raise ValueError(
                f"{path}: not a Lightning checkpoint (a {type(checkpoint).__name__}, not a dict)"
            )
        return checkpoint


def first_nonfinite_parameter(module: torch.nn.Module) -> str | None:
    """The name of the first parameter with a NaN or infinite value (in this process's shard when the model is
    sharded), None when all are finite."""
    for name, param in module.named_parameters():
        if not bool(torch.isfinite(local_values(param.detach())).all()):
            return name
    return None


class LatestCheckpoint(L.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimizer steps and at the end of training.

    Args:
        dirpath: the run's checkpoint folder.
        every_n_train_steps: how often (in optimizer steps); 0 writes only at the end.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 500) -> None:
        if every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.every_n_train_steps = every_n_train_steps
        self._saved_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # with gradient accumulation global_step moves once per optimizer step: save once, right after it
        if self.every_n_train_steps and step > 0 and step % self.every_n_train_steps == 0:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the current state unless it was written at this step (or this is a fast_dev_run)."""
        if trainer.fast_dev_run or trainer.sanity_checking or self._saved_step == trainer.global_step:
            return
        bad = first_nonfinite_parameter(pl_module)
        if getattr(trainer, "world_size", 1) > 1:
            # a sharded model (trainer=fsdp) holds other values on each process: all take the same decision
            if trainer.strategy.reduce_boolean_decision(bad is not None, all=False) and bad is None:
                bad = "(of another process's shard)"
        if bad is not None:
            raise FloatingPointError(
                f"step {trainer.global_step}: parameter {bad} is not finite; not overwriting {self.path} (it holds "
                f"the last good state, step {self._saved_step})"
            )
        trainer.save_checkpoint(self.path, weights_only=False)  # the full training state: resumable
        self._saved_step = trainer.global_step
        log.debug("saved %s at step %d", self.path, trainer.global_step)


def capture_random_state() -> dict[str, Any]:
    """This process's torch (CPU, CUDA), numpy and Python random states as tensors and plain containers (they load
    with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def restore_random_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_random_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy["bit_generator"],
            "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
            "has_gauss": numpy["has_gauss"],
            "gauss": numpy["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RandomStateCheckpoint(L.Callback):
    """Saves every process's random states in checkpoints and restores them when training resumes.

    They are restored at ``on_train_start``, after the data loaders were built and before the first training step,
    i.e. at the point of the interrupted run where the checkpoint was taken: both runs then draw the same
    dropout masks. The loaders draw nothing from the global generators (see ``ReferringVideoDataModule``).
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._to_restore: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        # called on every process while a checkpoint is assembled (only rank 0 writes it): gather all ranks'
        state = capture_random_state()
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, state)
            return {"ranks": gathered}
        return {"ranks": [state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        ranks = self._to_restore["ranks"]
        if len(ranks) != trainer.world_size:
            log.warning(
                "the checkpoint holds the random states of %d process(es), this run has %d: not restoring them",
                len(ranks),
                trainer.world_size,
            )
        else:
            restore_random_state(ranks[trainer.global_rank])
        self._to_restore = None
