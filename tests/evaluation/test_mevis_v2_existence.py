"""MeViS v2's expression-level existence decision (SAM 2's object scores over the video), the object-score loss,
and no-target clips in training: sampled like the others, finite losses."""

from __future__ import annotations

import pytest
import torch
from helpers.datasets import write_mevis_dataset
from helpers.tiny import make_tiny_model, random_clip

from mpgsam2.data import ClipTransform, MeViSSource, ReferringClipDataset
from mpgsam2.inference import (
    EMPTY_LOGIT,
    ExpressionPrediction,
    apply_existence,
    predict_expression,
    predict_video,
)
from mpgsam2.inference.submission import ModelPredictor
from mpgsam2.losses import LossWeights, MPGSAM2Criterion, dice_loss, sigmoid_focal_loss
from mpgsam2.modeling.mpgsam2 import MPGSAM2

SIZE = (20, 28)


def _prediction(scores: list[float]) -> ExpressionPrediction:
    logits = torch.linspace(-3, 3, len(scores) * 6).reshape(len(scores), 2, 3)
    return ExpressionPrediction(logits=logits, object_scores=torch.tensor(scores))


def test_an_expression_is_emptied_on_every_frame_when_its_best_object_score_is_below_the_threshold() -> None:
    # max sigmoid = sigmoid(1.0) = 0.731
    weak = _prediction([-4.0, 1.0, -2.0])
    assert weak.existence == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert apply_existence(weak, None) is weak  # off
    assert apply_existence(weak, 0.7) is weak  # present
    absent = apply_existence(weak, 0.75)
    assert absent.logits.shape == weak.logits.shape and bool((absent.logits == EMPTY_LOGIT).all())
    assert not absent.masks.any() and float(absent.probs.max()) == 0.0
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        apply_existence(weak, 1.5)
    with pytest.raises(ValueError, match="no object scores"):
        apply_existence(ExpressionPrediction(logits=weak.logits), 0.5)


@pytest.fixture(scope="module")
def model() -> MPGSAM2:
    return make_tiny_model().eval()


def test_predict_video_records_the_object_scores_of_every_frame(model: MPGSAM2) -> None:
    assert model.sam.head_settings.pred_obj_scores  # the tiny preset has SAM 2's object-score head
    sam, beit, ids, pad = random_clip(model, frames=5, seed=2)
    texts = [(ids[0], pad[0]), (ids[0, :4].clone(), None)]
    texts[1][0][-1] = 2
    batched = predict_video(model, sam[0], beit[0], texts, SIZE, chunk_size=3)
    for (text, mask), prediction in zip(texts, batched):
        alone = predict_expression(model, sam[0], beit[0], text, mask, SIZE, chunk_size=3)
        assert prediction.object_scores.shape == (5,)
        torch.testing.assert_close(prediction.object_scores, alone.object_scores, atol=1e-4, rtol=0)
    # the model predictor applies the threshold to what predict_video gives
    thresholds = sorted(p.existence for p in batched)
    predictor = ModelPredictor(model, "cpu", chunk_size=3, existence_threshold=thresholds[-1])

    class _Batch:  # what predict_unit reads of a collated expression
        def __init__(self, k: int) -> None:
            self.sam_frames, self.beit_frames = sam, beit
            self.text_ids = torch.nn.utils.rnn.pad_sequence([t for t, _ in texts], batch_first=True)[
                k : k + 1
            ]
            n = len(texts[k][0])
            self.text_padding_mask = torch.arange(self.text_ids.shape[1])[None] >= n
            self.meta = [type("M", (), {"orig_size": SIZE})()]

    logits = predictor.predict_unit([_Batch(0), _Batch(1)])
    weakest = min(range(2), key=lambda k: batched[k].existence)
    strongest = 1 - weakest
    assert bool((logits[weakest] == EMPTY_LOGIT).all())  # below the threshold: emptied
    torch.testing.assert_close(logits[strongest], batched[strongest].logits)  # at the threshold: kept


# ------------------------------------------------------------------------------------------------ losses


def _clip(seed: int, empty: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(1, 3, 1, 16, 16, generator=g)
    target = torch.zeros(1, 3, 16, 16)
    if not empty:
        target[0, :2, 4:9, 5:11] = 1  # present in frames 0 and 1, absent in frame 2
    return (
        pred,
        torch.randn(1, 3, generator=g),
        target,
        target.flatten(2).any(2),
        torch.randn(1, 3, generator=g),
    )


def test_a_no_target_clip_gives_finite_losses_and_supervises_the_object_score() -> None:
    pred, sentence, target, valid, obj = _clip(0, empty=True)
    assert not valid.any()
    criterion = MPGSAM2Criterion(LossWeights(object_score=1.0))
    losses = criterion(pred, sentence, target, valid, object_score_logits=obj)
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    # num_valid = 0 is clamped to 1: the focal and Dice of the clip itself
    logits, flat = pred.squeeze(2).flatten(1), target.flatten(1)
    torch.testing.assert_close(losses["loss_mask"], sigmoid_focal_loss(logits, flat, 1.0))
    torch.testing.assert_close(losses["loss_dice"], dice_loss(logits, flat, 1.0))
    expected = -torch.nn.functional.logsigmoid(-obj).mean()  # every frame absent
    torch.testing.assert_close(losses["loss_object_score"], expected)
    # gradients reach the object scores and stay finite
    obj = obj.clone().requires_grad_(True)
    criterion(pred, sentence, target, valid, object_score_logits=obj)["loss_total"].backward()
    assert bool(torch.isfinite(obj.grad).all()) and bool((obj.grad > 0).all())


def test_target_clips_keep_the_original_normalisation_and_the_term_is_optional() -> None:
    pred, sentence, target, valid, obj = _clip(1, empty=False)
    original = MPGSAM2Criterion()(pred, sentence, target, valid)
    with_term = MPGSAM2Criterion(LossWeights(object_score=0.5))(
        pred, sentence, target, valid, object_score_logits=obj
    )
    for name in ("loss_mask", "loss_dice", "loss_sim"):
        assert torch.equal(original[name], with_term[name])
    present = torch.tensor([[1.0, 1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(obj, present)
    torch.testing.assert_close(with_term["loss_total"], original["loss_total"] + 0.5 * bce)
    assert "loss_object_score" not in original
    with pytest.raises(ValueError, match="needs object_score_logits"):
        MPGSAM2Criterion(LossWeights(object_score=1.0))(pred, sentence, target, valid)


# ------------------------------------------------------------------------------------------------ training clips


def test_no_target_clips_are_sampled_like_the_others(tmp_path) -> None:
    root = write_mevis_dataset(tmp_path / "mevis", "train", version="v2")
    source = MeViSSource(root, "train")
    dataset = ReferringClipDataset(source, 3, ClipTransform(32, 32, train=True, photometric=False), seed=0)
    seen_no_target = 0
    for index in range(len(dataset)):
        expr, _ = dataset.locate(index)
        item = dataset[index]
        if expr.no_target:
            seen_no_target += 1
            # kept as drawn: the item is this expression's own clip, with an empty target
            assert (item.meta.video, item.meta.exp_id) == (expr.video.video_id, expr.exp_id)
            assert not item.valid.any() and not item.masks.any()
        else:
            assert item.valid.any()
    assert seen_no_target == 4  # mv_a/3 (6 frames: 2 clips of 3) and mv_b/1 (4 frames: 2 clips)


def test_a_stored_existence_threshold_is_checked_to_be_data() -> None:
    import eval as eval_entry
    from data_modules import UnsafeConfigError

    data = {"_target_": "data_modules.mevis.MeViSDataModule", "root": "/data/mevis", "version": "v2"}
    stored = eval_entry.stored_run_config("x.ckpt", {"data": data, "system": {"existence_threshold": 0.8}})
    assert stored.system.existence_threshold == 0.8
    old = eval_entry.stored_run_config("x.ckpt", {"data": data, "system": {"eval_chunk_size": 24}})
    assert old.system.existence_threshold == "auto"  # a checkpoint from before the setting
    with pytest.raises(UnsafeConfigError, match=r"x.ckpt: system.existence_threshold='\$\{oops\}'"):
        eval_entry.stored_run_config("x.ckpt", {"data": data, "system": {"existence_threshold": "${oops}"}})
