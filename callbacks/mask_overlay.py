"""Images of predicted vs. true masks on the training frames, logged every N steps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import Tensor

from mpgsam2.data.batch import ReferringBatch
from mpgsam2.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["MaskOverlayLogger", "overlay_masks"]

logger = logging.getLogger(__name__)

_TRUE_COLOUR = np.array([0, 255, 0], dtype=np.float32)  # ground truth: green
_PRED_COLOUR = np.array([255, 0, 255], dtype=np.float32)  # prediction: magenta


def overlay_masks(frames: Tensor, pred: Tensor, target: Tensor, alpha: float = 0.45) -> np.ndarray:
    """A side-by-side strip of frames with the true mask (green, top row) and the prediction (magenta, bottom).

    Args:
        frames: (T, 3, H, W) ImageNet-normalised frames.
        pred, target: (T, H, W) bool masks.

    Returns:
        (2H, T*W, 3) uint8 image.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = ((frames.detach().float().cpu() * std + mean).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    rows = []
    for masks, colour in ((target, _TRUE_COLOUR), (pred, _PRED_COLOUR)):
        m = masks.detach().cpu().numpy().astype(bool)[..., None]
        blended = np.where(m, (1 - alpha) * rgb + alpha * colour, rgb)
        rows.append(np.concatenate(list(blended), axis=1))
    return np.concatenate(rows, axis=0).round().astype(np.uint8)


class MaskOverlayLogger(L.Callback):
    """Every ``every_n_steps`` training steps, draws the first clip of the batch with its true and predicted masks.

    The image goes to W&B when a ``WandbLogger`` is attached, else to ``<run dir>/overlays/step_<N>.png``.
    The training step must return ``{"loss": ..., "pred_masks": (B, T, 1, S, S) logits}``.
    """

    def __init__(self, every_n_steps: int = 200, max_frames: int = 4) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.max_frames = max_frames

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: ReferringBatch,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every_n_steps != 0:
            return
        if not isinstance(outputs, dict) or "pred_masks" not in outputs:
            return
        t = self.max_frames
        image = overlay_masks(
            batch.sam_frames[0, :t], outputs["pred_masks"][0, :t, 0] > 0, batch.masks[0, :t] > 0.5
        )
        caption = batch.caption[0]
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for lg in wandb_loggers:
            lg.log_image(key="train/masks", images=[image], caption=[caption], step=step)
        if not wandb_loggers:
            folder = Path(trainer.default_root_dir) / "overlays"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"step_{step:06d}.png")
