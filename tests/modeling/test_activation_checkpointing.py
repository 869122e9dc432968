"""Activation checkpointing (``model.activation_checkpointing``): the named blocks are recomputed in backward
while training, the loss and every gradient equal the run that keeps all activations (dropout on, same seed),
nothing changes without autograd, and configs stored without the key still load."""

from __future__ import annotations

import pytest
import torch
from helpers.configs import compose_config
from helpers.tiny import make_tiny_model, random_clip, tiny_config
from torch import nn

from mpgsam2.losses import MPGSAM2Criterion
from mpgsam2.modeling.checkpointing import ACTIVATION_CHECKPOINTING_BLOCKS
from mpgsam2.modeling.config import MPGSAM2Config
from mpgsam2.modeling.mpgsam2 import MPGSAM2

NAMES = list(ACTIVATION_CHECKPOINTING_BLOCKS)
FRAMES = 3  # frame 0 conditions; frames 1-2 run memory attention and the historical fusion


def _blocks(model: MPGSAM2) -> dict[str, list[nn.Module]]:
    """The modules each name recomputes."""
    decoder = model.sam.sam_mask_decoder
    return {
        "beit3": list(model.beit3.encoder.layers),
        "mask_prior": [model.mask_prior.global_attn, model.mask_prior.token_refine],
        "memory_attention": list(model.sam.memory_attention.layers),
        "decoder_fusion": [
            decoder.pixel_global_fusion,
            decoder.object_global_fusion,
            decoder.object_historical_fusion,
        ],
    }


def _model(names: list[str]) -> MPGSAM2:
    return make_tiny_model(activation_checkpointing=names)


def _loss(model: MPGSAM2, seed: int = 1) -> torch.Tensor:
    sam, beit, ids, pad = random_clip(model, FRAMES, batch=2)
    g = torch.Generator().manual_seed(7)
    size = model.sam.image_size
    targets = (torch.rand(2, FRAMES, size, size, generator=g) > 0.5).float()
    torch.manual_seed(seed)  # the dropout masks
    out = model(sam, beit, ids, pad)
    valid = torch.ones(2, FRAMES, dtype=torch.bool)
    return MPGSAM2Criterion()(out.pred_masks, out.sentence_scores, targets, valid)["loss_total"]


def _gradients(model: MPGSAM2, seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    model.train()
    loss = _loss(model, seed)
    loss.backward()
    return loss.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_the_tiny_model_has_dropout_in_the_recomputed_blocks() -> None:
    """What makes the gradient test below a test of the RNG replay: dropout draws in these blocks (BEiT-3 has
    none), and two dropout seeds give two losses."""
    model = _model([])
    blocks = _blocks(model)
    for name in ("mask_prior", "memory_attention", "decoder_fusion"):
        rates = [m.p for block in blocks[name] for m in block.modules() if isinstance(m, nn.Dropout)]
        rates += [
            m.dropout
            for block in blocks[name]
            for m in block.modules()
            if isinstance(m, nn.MultiheadAttention)
        ]
        assert max(rates, default=0.0) > 0, name
    model.train()
    with torch.no_grad():
        assert _loss(model, seed=1) != _loss(model, seed=2)


@pytest.mark.parametrize("names", [[n] for n in NAMES] + [NAMES], ids=[*NAMES, "all"])
def test_checkpointing_gives_the_same_loss_and_gradients(names: list[str]) -> None:
    plain_loss, plain = _gradients(_model([]))
    model = _model(names)
    loss, grads = _gradients(model)
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=0)
    assert grads.keys() == plain.keys()
    for name, grad in grads.items():
        if plain[name] is None:
            assert grad is None, name  # the frozen image encoder
            continue
        torch.testing.assert_close(grad, plain[name], atol=1e-6, rtol=0, msg=name)
    # the recomputed blocks do receive gradient (not a comparison of zeros)
    for group in names:
        inside = {id(p) for block in _blocks(model)[group] for p in block.parameters()}
        assert any(grads[n].abs().sum() > 0 for n, p in model.named_parameters() if id(p) in inside), group


def _count_calls(model: MPGSAM2) -> tuple[dict[str, int], list]:
    counts = dict.fromkeys(NAMES, 0)
    handles = []
    for name, blocks in _blocks(model).items():
        for block in blocks:

            def hook(*_, name=name) -> None:
                counts[name] += 1

            # a pre-hook: torch stops a recompute as soon as it has the tensors backward needs, so a block's
            # forward hook (after its last op) may never run in the recompute
            handles.append(block.register_forward_pre_hook(hook))
    return counts, handles


@pytest.mark.parametrize("name", NAMES)
def test_the_named_blocks_run_again_in_backward_and_no_others(name: str) -> None:
    model = _model([name]).train()
    counts, _ = _count_calls(model)
    loss = _loss(model)
    in_forward = dict(counts)
    assert all(in_forward.values()), in_forward  # every block ran
    loss.backward()
    in_backward = {k: counts[k] - in_forward[k] for k in NAMES}
    assert in_backward == {k: in_forward[k] if k == name else 0 for k in NAMES}


def test_no_recompute_in_eval_mode_or_without_autograd() -> None:
    model = _model(NAMES).eval()
    counts, _ = _count_calls(model)
    loss = _loss(model)  # eval mode with autograd (e.g. a gradient check of a trained model)
    in_forward = dict(counts)
    loss.backward()
    assert counts == in_forward
    model.train()
    with torch.no_grad():
        _loss(model)  # training mode, no autograd: a plain call (nothing to recompute for)
    assert model.sam.image_encoder.training is False  # the frozen image encoder stays as it was


def test_unknown_block_names_are_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown block 'hiera'; known: beit3, mask_prior, memory_attention"):
        tiny_config(activation_checkpointing=["beit3", "hiera"])
    with pytest.raises(ValueError, match="must be a list of block names"):
        tiny_config(activation_checkpointing="beit3")
    model = _model([])
    with pytest.raises(ValueError, match="unknown block 'beit'"):
        model.set_activation_checkpointing(["beit"])
    model.set_activation_checkpointing(["memory_attention"])  # after construction, e.g. for a benchmark
    assert model.config.activation_checkpointing == ["memory_attention"]
    assert model.sam.memory_attention.checkpoint_layers and not model.beit3.encoder.checkpoint_layers


def test_a_model_config_stored_without_the_key_still_loads(tmp_path) -> None:
    from mpgsam2.weights import load_model
    from mpgsam2.weights.checkpoints import train_checkpoint_record

    model = _model(["beit3"])
    record = train_checkpoint_record({"data": {"root": "/d"}}, model, "/w/t.spm")
    assert record["model_config"]["activation_checkpointing"] == ["beit3"]
    del record["model_config"]["activation_checkpointing"]  # as written before the option existed
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"mpgsam2": record, "state_dict": state}, tmp_path / "old.ckpt")
    loaded = load_model(tmp_path / "old.ckpt").model
    assert loaded.config.activation_checkpointing == []
    assert MPGSAM2Config.from_dict(record["model_config"]).activation_checkpointing == []


def test_the_hydra_key_reaches_the_model_as_a_plain_list(tmp_path) -> None:
    from hydra.utils import instantiate

    cfg = compose_config("train", ["experiment=demo"], tmp_path)
    assert list(cfg.model.activation_checkpointing) == []
    cfg = compose_config(
        "train", ["experiment=demo", "model.activation_checkpointing=[beit3,decoder_fusion]"], tmp_path
    )
    model = instantiate(cfg.model)
    assert type(model.config.activation_checkpointing) is list  # stored in checkpoints as a plain container
    assert model.config.activation_checkpointing == ["beit3", "decoder_fusion"]
    assert model.beit3.encoder.checkpoint_layers and model.sam.sam_mask_decoder.checkpoint_fusion
    assert not model.mask_prior.checkpoint_layers and not model.sam.memory_attention.checkpoint_layers
