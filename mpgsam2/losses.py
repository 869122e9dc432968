"""MPG-SAM 2's training losses: sigmoid focal, clip-level Dice, and the "sim" (soft-area) term.

Weights and normalisation follow the original criterion: total = 2 * focal + 5 * dice + 2 * sim, focal and Dice
divided by the number of frames where the object is present (``num_valid``, at least 1).

MeViS v2's no-target clips (the expression refers to nothing: an empty target on every frame) go through the same
terms: focal and Dice against the empty target are finite (Dice's +1 smoothing; ``num_valid`` is clamped to 1, so a
batch of no-target clips divides by 1, and a batch mixing them with target clips divides by the target clips'
present frames, as the original does for any absent frame). An optional object-score term (``weights.object_score``,
0 = the original, which trains no object-score loss) supervises SAM 2's object-score head per frame with the
object's presence, which is what teaches it to say "absent" (:func:`object_score_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, num_valid: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """logits, targets: [B, N] (each row one clip flattened) -> mean over N, summed over B, / num_valid."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_valid


def dice_loss(logits: Tensor, targets: Tensor, num_valid: float) -> Tensor:
    """logits, targets: [B, N] -> 1 - (2|p.t| + 1) / (|p| + |t| + 1) per row, summed over B, / num_valid."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_valid


def sentence_similarity_loss(logits: Tensor, targets: Tensor, sentence_scores: Tensor) -> Tensor:
    """The original's "sim" loss. logits, targets: [F, N] (one row per frame); sentence_scores: [F].

    MSE over frames between cos(sigmoid(logits), s * 1) and cos(targets, s * 1). Because s * 1 is a constant
    vector this is a soft-area consistency term and ``sentence_scores`` gets no gradient (spec §2.5).
    """
    sentence = sentence_scores[:, None].expand_as(logits)
    # parity: computed literally with F.cosine_similarity against the broadcast scalar, as the original.
    pred_sim = F.cosine_similarity(logits.sigmoid(), sentence, dim=1)
    target_sim = F.cosine_similarity(targets, sentence, dim=1)
    return F.mse_loss(pred_sim, target_sim)


def prior_loss(prior_logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of the coarse mask prior against the target's coverage of each prior cell.

    prior_logits: [B, T, G, G]; targets: [B, T, H, W] in {0, 1} -> scalar (mean over cells).
    """
    coverage = F.adaptive_avg_pool2d(targets.to(prior_logits.dtype), prior_logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(prior_logits, coverage)


def object_score_loss(object_score_logits: Tensor, present: Tensor) -> Tensor:
    """Binary cross-entropy of SAM 2's per-frame object-score logits against the object's presence.

    object_score_logits: [B, T]; present: [B, T] bool (the ``valid`` frames) -> scalar, mean over the B * T frames.
    """
    return F.binary_cross_entropy_with_logits(object_score_logits, present.to(object_score_logits.dtype))


@dataclass
class LossWeights:
    """Loss weights. ``prior`` = 0 and ``object_score`` = 0 are the original (spec §2.5: the prior gets no direct
    loss; no object-score loss)."""

    mask: float = 2.0
    dice: float = 5.0
    sim: float = 2.0
    prior: float = 0.0
    object_score: float = 0.0


class MPGSAM2Criterion(nn.Module):
    """Computes the three losses and their weighted sum for a batch of clips.

    forward(pred_masks [B, T, 1, H, W] logits, sentence_scores [B, T], target_masks [B, T, H, W] in {0, 1},
    valid [B, T] (object present), num_valid: the valid-frame count to divide by; pass the count averaged over
    processes under DDP, as the original did; default: this batch's count; prior_logits [B, T, G, G]: needed
    when ``weights.prior`` > 0; object_score_logits [B, T]: needed when ``weights.object_score`` > 0) -> dict of
    scalars (loss_mask, loss_dice, loss_sim, [loss_prior,] [loss_object_score,] loss_total).
    """

    def __init__(
        self, weights: LossWeights | None = None, focal_alpha: float = 0.25, focal_gamma: float = 2.0
    ) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(
        self,
        pred_masks: Tensor,
        sentence_scores: Tensor,
        target_masks: Tensor,
        valid: Tensor,
        num_valid: float | Tensor | None = None,
        prior_logits: Tensor | None = None,
        object_score_logits: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if pred_masks.dim() != 5 or pred_masks.shape[2] != 1:
            raise ValueError(f"pred_masks must be [B, T, 1, H, W], got {tuple(pred_masks.shape)}")
        if target_masks.shape != pred_masks.shape[:2] + pred_masks.shape[3:]:
            raise ValueError(
                f"target_masks {tuple(target_masks.shape)} do not match pred_masks {tuple(pred_masks.shape)}"
            )
        if num_valid is None:
            num_valid = valid.sum()
        num_valid = torch.clamp(torch.as_tensor(num_valid, dtype=torch.float32), min=1).item()
        logits = pred_masks.squeeze(2).float()
        targets = target_masks.to(logits.dtype)
        per_clip = (logits.flatten(1), targets.flatten(1))
        loss_mask = sigmoid_focal_loss(*per_clip, num_valid, self.focal_alpha, self.focal_gamma)
        loss_dice = dice_loss(*per_clip, num_valid)
        loss_sim = sentence_similarity_loss(
            logits.flatten(0, 1).flatten(1),
            targets.flatten(0, 1).flatten(1),
            sentence_scores.flatten().float(),
        )
        total = self.weights.mask * loss_mask + self.weights.dice * loss_dice + self.weights.sim * loss_sim
        losses = {"loss_mask": loss_mask, "loss_dice": loss_dice, "loss_sim": loss_sim}
        if self.weights.prior:
            if prior_logits is None:
                raise ValueError("LossWeights.prior > 0 needs prior_logits [B, T, G, G]")
            # deviation: optional direct supervision of the mask prior (off by default). From random weights
            # it is what makes a small model learn to read the sentence within minutes (the CPU demo).
            losses["loss_prior"] = prior_loss(prior_logits.float(), targets)
            total = total + self.weights.prior * losses["loss_prior"]
        if self.weights.object_score:
            if object_score_logits is None:
                raise ValueError("LossWeights.object_score > 0 needs object_score_logits [B, T]")
            if object_score_logits.shape != valid.shape:
                raise ValueError(
                    f"object_score_logits {tuple(object_score_logits.shape)} do not match valid {tuple(valid.shape)}"
                )
            # deviation: the original trains no object-score loss; MeViS v2's no-target expressions need the head
            # to learn "absent" (SAM 2's own training supervises it the same way, per frame)
            losses["loss_object_score"] = object_score_loss(object_score_logits.float(), valid.bool())
            total = total + self.weights.object_score * losses["loss_object_score"]
        losses["loss_total"] = total
        return losses
