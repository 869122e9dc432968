"""Referring image segmentation (RefCOCO/+/g): predicting masks of image batches, and scoring them in memory.

Predictions go through the model's batched image path (spec §1.7) and are resized bilinearly to each image's
original size, foreground where the logit is > 0 (sigmoid > 0.5). The scores (mIoU, cIoU and the J&F of 1-frame
videos) are :class:`~mpgsam2.metrics.ImageIoU`'s, the same as a folder of PNGs gets
(:func:`mpgsam2.metrics.scoring.score_images`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from mpgsam2.inference.predictor import resize_logits
from mpgsam2.metrics import ImageIoU
from mpgsam2.modeling.mpgsam2 import MPGSAM2

__all__ = ["evaluate_images", "predict_image_masks"]


@torch.inference_mode()
def predict_image_masks(
    model: MPGSAM2, batch: Mapping[str, Any], device: torch.device | str = "cpu"
) -> list[Tensor]:
    """The masks of one image batch (``ReferringImageCollate`` output, T = 1): per sample a bool CPU (H, W) tensor
    at its original size (``meta["orig_size"]``)."""
    out = model.forward_images(
        batch["sam_frames"][:, 0].to(device),
        batch["beit_frames"][:, 0].to(device),
        batch["text_ids"].to(device),
        batch["text_padding_mask"].to(device),
    )
    return [
        (resize_logits(out.pred_masks[i : i + 1], meta["orig_size"])[0, 0] > 0).cpu()
        for i, meta in enumerate(batch["meta"])
    ]


@torch.inference_mode()
def evaluate_images(
    model: MPGSAM2, batches: Iterable[Mapping[str, Any]], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Scores image batches (``ReferringImageCollate`` output: T = 1, ``orig_masks`` per sample) in memory.

    Returns:
        ``{"miou", "ciou", "j", "f", "jf", "num_samples"}`` (see :class:`~mpgsam2.metrics.ImageIoU`).
    """
    scores = ImageIoU()
    for batch in batches:
        for pred, target in zip(predict_image_masks(model, batch, device), batch["orig_masks"]):
            scores.update(pred, target.bool().cpu())
    return scores.compute()
