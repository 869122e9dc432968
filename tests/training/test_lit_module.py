"""The Lightning system: parameter groups, batched vs. streamed evaluation, the frozen encoder, image batches."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from helpers.datasets import item_meta, model_batch
from helpers.tiny import make_tiny_model, random_clip, tiny_preset
from torch import nn

from mpgsam2.inference import predict_expression
from mpgsam2.lit_module import RVOSLitModule, build_param_groups
from mpgsam2.losses import MPGSAM2Criterion
from mpgsam2.modeling.mpgsam2 import MPGSAM2


def _system(model: MPGSAM2, **kwargs) -> RVOSLitModule:
    return RVOSLitModule(model, MPGSAM2Criterion(), partial(torch.optim.AdamW, lr=1e-3), **kwargs)


def test_param_groups_split_by_pattern_and_rest_gets_base_lr():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = build_param_groups(model, [{"pattern": r"^1\.", "lr": 5e-5}])
    assert groups[0]["lr"] == 5e-5 and len(groups[0]["params"]) == 2
    assert "lr" not in groups[1] and len(groups[1]["params"]) == 2


def test_param_group_errors_name_the_pattern():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="nothing_here"):
        build_param_groups(model, [{"pattern": "nothing_here", "lr": 1.0}])
    with pytest.raises(ValueError, match="more than one"):
        build_param_groups(model, [{"pattern": r"^0\.", "lr": 1.0}, {"pattern": "weight", "lr": 2.0}])
    with pytest.raises(ValueError, match="pattern"):
        build_param_groups(model, [{"lr": 1.0}])


def test_frozen_parameters_are_left_out_of_the_groups():
    model = make_tiny_model()
    groups = build_param_groups(model, [])
    ids = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in ids for p in model.sam.image_encoder.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_the_original_fast_group_matches_the_mpg_modules():
    pattern = (
        r"^(mask_prior\.(token_refine|token_proj|prior_head)|sam\.sam_mask_decoder\."
        r"(pixel_global_fusion|object_global_fusion|object_historical_fusion))\."
    )
    model = make_tiny_model()
    fast, rest = build_param_groups(model, [{"pattern": pattern, "lr": 5e-5}])
    names = {id(p): n for n, p in model.named_parameters()}
    fast_names = {names[id(p)] for p in fast["params"]}
    assert any(n.startswith("mask_prior.token_refine.") for n in fast_names)
    assert any(n.startswith("sam.sam_mask_decoder.object_historical_fusion.") for n in fast_names)
    assert not any(n.startswith(("beit3.", "mask_prior.global_attn.")) for n in fast_names)


def _eval_batch(model: MPGSAM2, batch: int):
    sam, beit, ids, pad = random_clip(model, frames=3, batch=batch, seed=3)
    meta = [item_meta(f"v{i}", (48, 40), 3) for i in range(batch)]
    return model_batch(sam, beit, ids, pad, meta)


def test_batched_clip_evaluation_matches_streaming_one_expression_at_a_time():
    system = _system(make_tiny_model()).eval()
    batch = _eval_batch(system.model, 2)
    batched = system.predict_batch(batch)
    for i in range(2):
        single = model_batch(
            *(
                x[i : i + 1]
                for x in (batch.sam_frames, batch.beit_frames, batch.text_ids, batch.text_padding_mask)
            ),
            batch.meta[i : i + 1],
        )
        streamed = system.predict_batch(single)[0]
        assert streamed.shape == (3, 48, 40)
        torch.testing.assert_close(batched[i], streamed, atol=1e-4, rtol=1e-4)


def test_several_expressions_run_as_one_clip_forward_unless_chunked(monkeypatch):
    """The batched path must not fall back to streaming (equal masks would hide that); chunks must stream."""
    import mpgsam2.lit_module as lit

    system = _system(make_tiny_model()).eval()
    batch = _eval_batch(system.model, 2)
    streamed, original = [], lit.predict_expression

    def counting(*args, **kwargs):
        streamed.append(kwargs.get("chunk_size"))
        return original(*args, **kwargs)

    monkeypatch.setattr(lit, "predict_expression", counting)
    forwards = []
    system.model.register_forward_hook(lambda *_: forwards.append(1))
    out = system.predict_batch(batch)
    assert [p.shape for p in out] == [(3, 48, 40)] * 2
    assert streamed == [] and len(forwards) == 1
    system.eval_chunk_size = 2  # MeViS-style chunks are independent runs: only the streaming path has them
    system.predict_batch(batch)
    assert streamed == [2, 2]


def test_image_batches_are_predicted_at_each_image_size():
    model = make_tiny_model()
    system = _system(model).eval()
    sam, beit, ids, pad = random_clip(model, frames=1, batch=2)
    sizes = [(30, 50), (41, 17)]
    batch = model_batch(
        sam, beit, ids, pad, [item_meta(f"image{i}", s) for i, s in enumerate(sizes)], is_image=True
    )
    out = system.predict_batch(batch)
    assert [tuple(p.shape) for p in out] == [(1, *s) for s in sizes]
    expected = model.forward_images(sam[:, 0], beit[:, 0], ids, pad).pred_masks[1:2]
    resized = torch.nn.functional.interpolate(expected, size=sizes[1], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[1], resized[0])


def test_validation_accumulates_jf_at_the_original_size():
    system = _system(make_tiny_model()).eval()
    batch = _eval_batch(system.model, 1)
    pred = system.predict_batch(batch)[0] > 0
    batch.orig_masks = [pred.clone()]  # a perfect target
    system.validation_step(batch, 0)
    assert system.val_jf.compute()["jf"] == pytest.approx(1.0)


def test_image_batches_use_the_image_path():
    model = make_tiny_model()
    system = _system(model).eval()  # no dropout: the two calls must agree
    sam, beit, ids, pad = random_clip(model, frames=1, batch=2)
    batch = model_batch(sam, beit, ids, pad, is_image=True)
    pred, scores, prior = system._clip_logits(batch)
    expected = model.forward_images(sam[:, 0], beit[:, 0], ids, pad)
    torch.testing.assert_close(pred[:, 0], expected.pred_masks)
    assert scores.shape == (2, 1) and prior.shape[:2] == (2, 1)


def test_tokenizer_larger_than_the_vocabulary_is_refused():
    system = _system(make_tiny_model())

    class _Trainer:
        datamodule = type("DM", (), {"tokenizer_vocab_size": 10_000, "tokenizer_path": "big.model"})()

    system._trainer = _Trainer()  # what Lightning sets before setup()
    with pytest.raises(ValueError, match=r"big\.model.*model\.beit3\.vocab_size >= 10000"):
        system.setup("fit")


def test_setup_records_the_tokenizer_for_checkpoints(tmp_path):
    system = _system(make_tiny_model())
    spm = tmp_path / "tok.model"

    class _Trainer:
        datamodule = type("DM", (), {"tokenizer_vocab_size": 64, "tokenizer_path": str(spm)})()

    system._trainer = _Trainer()
    system.setup("fit")  # a vocabulary of exactly the model's size fits
    checkpoint: dict = {}
    system.on_save_checkpoint(checkpoint)
    stored = checkpoint["mpgsam2"]
    assert stored["config"]["data"]["tokenizer_path"] == str(spm.resolve())  # stored once, resolved
    assert set(stored) == {"config", "model_config"}
    assert stored["model_config"]["beit3"]["vocab_size"] == 64
    assert (
        torch.load(_saved(tmp_path, checkpoint), weights_only=True)["mpgsam2"] == stored
    )  # plain containers


def test_a_checkpoint_s_tokenizer_is_read_in_either_layout(tmp_path):
    """load_model finds the tokenizer in the run config's data.tokenizer_path (stored once since 2026-12-06) and,
    for checkpoints written before, beside the run config."""
    from mpgsam2.weights import load_model
    from mpgsam2.weights.checkpoints import train_checkpoint_record

    model = make_tiny_model()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    record = train_checkpoint_record({"data": {"root": "/d"}}, model, "/w/new.spm")
    assert record["config"]["data"] == {"root": "/d", "tokenizer_path": "/w/new.spm"}
    torch.save({"mpgsam2": record, "state_dict": state}, tmp_path / "new.ckpt")
    assert load_model(tmp_path / "new.ckpt").tokenizer_path == Path("/w/new.spm")
    old = {
        "config": {"data": {"root": "/d"}},
        "model_config": record["model_config"],
        "tokenizer_path": "/w/old.spm",
    }
    torch.save({"mpgsam2": old, "state_dict": state}, tmp_path / "old.ckpt")
    assert load_model(tmp_path / "old.ckpt").tokenizer_path == Path("/w/old.spm")


def _saved(tmp_path: Path, obj: dict) -> Path:
    path = tmp_path / "c.pt"
    torch.save(obj, path)
    return path


def test_build_model_starts_from_a_train_checkpoint(tmp_path):
    from mpgsam2.build import build_model

    conf, sam2 = tiny_preset()
    torch.manual_seed(0)
    source = build_model(conf, sam2)
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(1)
    loaded = build_model(conf, sam2, weights={"mpgsam2": str(path)})
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("total_steps", [1, 2, 3, 20, 100])
def test_one_cycle_schedule_runs_every_step_of_a_short_run(total_steps):
    from mpgsam2.lit_module import one_cycle_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = one_cycle_schedule(optimizer, max_lr=1e-3, total_steps=total_steps, pct_start=0.05)
    lrs = []
    for _ in range(total_steps):  # one scheduler step after every optimizer step, as Lightning does
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(0 < lr <= 1e-3 for lr in lrs)
    if total_steps >= 3:
        assert max(lrs) > lrs[0] and lrs[-1] < max(lrs)  # warms up, then anneals


def test_one_cycle_schedule_needs_a_fixed_length():
    from mpgsam2.lit_module import one_cycle_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="max_steps"):
        one_cycle_schedule(optimizer, max_lr=1e-3, total_steps=-1)


@pytest.mark.parametrize(("bench", "chunk"), [("mevis", 24), ("ytvos", None), ("davis", None)])
def test_auto_eval_chunk_size_is_the_benchmark_s_protocol(bench, chunk):
    from types import SimpleNamespace

    from mpgsam2.benchmarks import benchmark

    system = _system(make_tiny_model())
    system.eval_chunk_size = "auto"
    system._trainer = SimpleNamespace(datamodule=SimpleNamespace(benchmark=bench))
    system.setup("validate")
    assert system.eval_chunk_size == chunk == benchmark(bench).chunk_size


def test_expressions_of_one_video_run_through_predict_video_trimmed_to_their_length(monkeypatch):
    import mpgsam2.lit_module as lit

    system = _system(make_tiny_model()).eval()
    sam, beit, ids, _ = random_clip(system.model, frames=3, seed=4)
    # a collated batch: 3 expressions of one video, right-padded with pad id 3 to the longest; the middle one
    # has an unknown piece (id 3, masked like padding) inside it, which trimming must keep
    rows = [[0, 11, 12, 13, 14, 2], [0, 21, 3, 2, 3, 3], [0, 31, 2, 3, 3, 3]]
    text_ids = torch.tensor(rows)
    batch = model_batch(
        sam.expand(3, -1, -1, -1, -1),
        beit.expand(3, -1, -1, -1, -1),
        text_ids,
        text_ids == 3,
        [item_meta("v", (48, 40), 3) for _ in range(3)],
    )
    calls = []
    original = lit.predict_video
    monkeypatch.setattr(lit, "predict_video", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    out = system.predict_batch(batch)
    assert len(calls) == 1 and [len(ids) for ids, _ in calls[0]] == [6, 4, 3]
    assert calls[0][1][1].tolist() == [False, False, True, False]
    for row, logits in zip(range(3), out):
        n = [6, 4, 3][row]
        reference = predict_expression(
            system.model, sam[0], beit[0], text_ids[row, :n], text_ids[row, :n] == 3, (48, 40)
        )
        torch.testing.assert_close(logits, reference.logits, atol=1e-4, rtol=1e-4)
