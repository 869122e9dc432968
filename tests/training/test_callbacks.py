"""Mask overlays (drawn and written every N steps) and the default W&B logger running offline."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.configs import TINY_SYNTHETIC, compose_config
from helpers.datasets import model_batch

import train as train_entry
from callbacks.mask_overlay import MaskOverlayLogger, overlay_masks
from mpgsam2.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _normalised_grey(t: int, h: int, w: int) -> torch.Tensor:
    grey = torch.full((t, 3, h, w), 0.5)
    return (grey - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def test_overlay_puts_truth_on_top_and_prediction_below():
    frames = _normalised_grey(2, 4, 5)
    target = torch.zeros(2, 4, 5, dtype=torch.bool)
    target[0, 0, 0] = True
    pred = torch.zeros(2, 4, 5, dtype=torch.bool)
    pred[1, 3, 4] = True
    image = overlay_masks(frames, pred, target)
    assert image.shape == (8, 10, 3) and image.dtype == np.uint8
    grey = image[1, 1]
    assert abs(int(grey[0]) - 128) <= 1 and (grey == grey[0]).all()
    assert image[0, 0, 1] > image[0, 0, 0]  # green tint where the truth is (top row, frame 0)
    assert image[7, 9, 0] > image[7, 9, 1]  # magenta tint where the prediction is (bottom row, frame 1)


def test_overlay_logger_writes_a_png_every_n_steps_without_wandb(tmp_path):
    callback = MaskOverlayLogger(every_n_steps=5, max_frames=2)
    batch = model_batch(
        _normalised_grey(3, 8, 8).unsqueeze(0),
        torch.zeros(1, 3, 3, 4, 4),
        torch.zeros(1, 2, dtype=torch.long),
        torch.zeros(1, 2, dtype=torch.bool),
        caption=["the red square"],
    )
    outputs = {"loss": torch.tensor(1.0), "pred_masks": torch.zeros(1, 3, 1, 8, 8)}
    for step in (4, 5):
        trainer = SimpleNamespace(
            global_step=step, is_global_zero=True, loggers=[], default_root_dir=str(tmp_path)
        )
        callback.on_train_batch_end(trainer, None, outputs, batch, 0)
    written = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert written == ["step_000005.png"]
    with pytest.raises(ValueError):
        MaskOverlayLogger(every_n_steps=0)


def test_wandb_logger_runs_offline_and_is_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(
        "train",
        ["experiment=demo", *TINY_SYNTHETIC, "trainer.max_steps=1", "validate=false", "logger=wandb"],
        tmp_path,
    )
    assert cfg.logger.wandb.offline is True
    train_entry.run(cfg)
    runs = list(Path(cfg.paths.output_dir, "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    import wandb

    assert wandb.run is None  # finished, so a multirun's next job starts clean
