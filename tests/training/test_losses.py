"""The training losses against the original's values in the parity fixture, and the optional prior term."""

from __future__ import annotations

import pytest
import torch

from mpgsam2.losses import LossWeights, MPGSAM2Criterion, prior_loss

LOSS_NAMES = ("loss_mask", "loss_dice", "loss_sim", "loss_total")


def _fixture_batch(fixture_dir):
    inputs = torch.load(fixture_dir / "inputs.pt", weights_only=True)
    outputs = torch.load(fixture_dir / "outputs.pt", weights_only=True)
    pred = outputs["train.pred_masks"][None]  # the original's logits for the training clip: [1, T, 1, S, S]
    scores = outputs["train.sen_feat"].reshape(1, -1)
    return pred, scores, inputs["train.target_masks"][None], inputs["train.valid"][None], outputs


def test_losses_equal_the_fixture_training_losses(fixture_dir):
    pred, scores, target, valid, outputs = _fixture_batch(fixture_dir)
    losses = MPGSAM2Criterion()(pred, scores, target, valid)
    for name in LOSS_NAMES:
        torch.testing.assert_close(losses[name], outputs[f"train.{name}"].float(), rtol=1e-5, atol=1e-6)


def test_loss_weights_scale_the_total(fixture_dir):
    pred, scores, target, valid, _ = _fixture_batch(fixture_dir)
    base = MPGSAM2Criterion()(pred, scores, target, valid)
    doubled = MPGSAM2Criterion(LossWeights(mask=4.0, dice=10.0, sim=4.0))(pred, scores, target, valid)
    torch.testing.assert_close(doubled["loss_total"], 2 * base["loss_total"])


def test_num_valid_divides_focal_and_dice(fixture_dir):
    pred, scores, target, valid, _ = _fixture_batch(fixture_dir)
    one = MPGSAM2Criterion()(pred, scores, target, valid, num_valid=1.0)
    four = MPGSAM2Criterion()(pred, scores, target, valid, num_valid=4.0)
    torch.testing.assert_close(one["loss_mask"], 4 * four["loss_mask"])
    torch.testing.assert_close(one["loss_dice"], 4 * four["loss_dice"])
    torch.testing.assert_close(one["loss_sim"], four["loss_sim"])  # not normalised by num_valid


def test_prior_loss_is_off_by_default_and_adds_when_weighted():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 1, 16, 16, generator=g)
    target = (torch.rand(2, 3, 16, 16, generator=g) > 0.7).float()
    valid = target.flatten(2).any(-1)
    scores = torch.randn(2, 3, generator=g)
    prior = torch.randn(2, 3, 4, 4, generator=g)
    off = MPGSAM2Criterion()(pred, scores, target, valid, prior_logits=prior)
    assert "loss_prior" not in off
    on = MPGSAM2Criterion(LossWeights(prior=3.0))(pred, scores, target, valid, prior_logits=prior)
    torch.testing.assert_close(on["loss_total"], off["loss_total"] + 3.0 * on["loss_prior"])
    with pytest.raises(ValueError, match="prior_logits"):
        MPGSAM2Criterion(LossWeights(prior=1.0))(pred, scores, target, valid)


def test_prior_loss_targets_cell_coverage():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1  # the top-left 2x2 cell of a 2x2 grid is fully covered, the others empty
    perfect = torch.full((1, 1, 2, 2), -30.0)
    perfect[..., 0, 0] = 30.0
    assert prior_loss(perfect, target) < 1e-6
    wrong = -perfect
    assert prior_loss(wrong, target) > 10
