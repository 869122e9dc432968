"""Referring image segmentation scores (RefCOCO/+/g validation): mIoU, cIoU and the J&F of 1-frame videos.

mIoU averages each sample's IoU; cIoU (overall IoU) divides the summed intersections by the summed unions, the
two numbers the RefCOCO literature reports. Predictions go through the model's batched image path (spec §1.7)
and are resized bilinearly to each image's original size, then sigmoid > 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mpgsam2.data.batch import ReferringBatch
from mpgsam2.inference.predictor import resize_logits
from mpgsam2.metrics import JFMetric
from mpgsam2.modeling.mpgsam2 import MPGSAM2

__all__ = ["evaluate_images"]


@torch.inference_mode()
def evaluate_images(
    model: MPGSAM2, batches: Iterable[ReferringBatch], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Scores image batches (``ReferringImageCollate`` output: T = 1, ``orig_masks`` per sample).

    Returns:
        ``{"miou", "ciou", "j", "f", "jf", "num_samples"}``.
    """
    jf = JFMetric()
    ious: list[float] = []
    inter_sum = union_sum = 0
    for batch in batches:
        out = model.forward_images(
            batch.sam_frames[:, 0].to(device),
            batch.beit_frames[:, 0].to(device),
            batch.text_ids.to(device),
            batch.text_padding_mask.to(device),
        )
        for i, (meta, target) in enumerate(zip(batch.meta, batch.orig_masks)):
            logits = resize_logits(out.pred_masks[i : i + 1], meta["orig_size"])[0]  # [1, H, W]
            pred, gt = logits > 0, target.bool().cpu()
            inter, union = int((pred & gt).sum()), int((pred | gt).sum())
            ious.append(inter / union if union else 1.0)
            inter_sum, union_sum = inter_sum + inter, union_sum + union
            jf.update(pred, gt)
    if not ious:
        raise ValueError("no samples to evaluate")
    scores = jf.compute()
    return {
        "miou": sum(ious) / len(ious),
        "ciou": inter_sum / union_sum if union_sum else 1.0,
        "j": scores["j"],
        "f": scores["f"],
        "jf": scores["jf"],
        "num_samples": len(ious),
    }
