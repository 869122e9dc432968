"""Tests for the BEiT-3 multiway encoder: fixture parity, padding, gradients, full-size key layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.tiny import make_tiny_model

from mpgsam2.modeling.beit3 import BEIT3_PRESETS, BEiT3
from mpgsam2.parity import DEFAULT_FIXTURE

FIXTURE = DEFAULT_FIXTURE
PREFIX = "mm_extractor.beit3."


def _fixture_dir() -> Path:
    if not (FIXTURE / "config.json").is_file():
        pytest.fail(f"parity fixture not found at {FIXTURE}")
    return FIXTURE


def _fixture_model() -> BEiT3:
    from safetensors.torch import load_file

    d = _fixture_dir()
    cfg = json.loads((d / "config.json").read_text())["beit3"]
    model = BEiT3(
        embed_dim=cfg["encoder_embed_dim"],
        num_heads=cfg["encoder_attention_heads"],
        ffn_dim=cfg["encoder_ffn_embed_dim"],
        num_layers=cfg["encoder_layers"],
        vocab_size=cfg["vocab_size"],
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        max_text_positions=cfg["max_source_positions"],
        layernorm_eps=cfg["layernorm_eps"],
    )
    state = load_file(str(d / "state_dict.safetensors"))
    state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _small_model(seed: int = 0) -> BEiT3:
    torch.manual_seed(seed)
    return BEiT3(
        embed_dim=32, num_heads=4, ffn_dim=64, num_layers=2, vocab_size=50, img_size=32, patch_size=8
    ).eval()


@pytest.mark.parametrize("prefix", ["", "train."])
def test_beit3_matches_original_fixture(prefix: str) -> None:
    d = _fixture_dir()
    inputs = torch.load(d / "inputs.pt", weights_only=True)
    outputs = torch.load(d / "outputs.pt", weights_only=True)
    model = _fixture_model()
    frames = inputs["frames_beit"]
    if prefix:
        frames = frames[inputs["train.frame_indices"]]
    t = frames.shape[0]
    ids = inputs[f"{prefix}input_ids"][None].repeat(t, 1)
    padding = (~inputs[f"{prefix}attention_mask"])[None].repeat(t, 1)
    assert torch.equal(padding, inputs["text_padding_position"][None].repeat(t, 1))
    with torch.no_grad():
        out = model(frames, ids, padding)
    expected = outputs[f"{prefix}beit3.encoder_out"]
    assert out.shape == expected.shape == (t, 1 + model.num_patches + ids.shape[1], model.embed_dim)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_beit3_padding_mask_is_honoured() -> None:
    model = _small_model()
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 50, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True  # last two tokens of sample 0 are padding
    other = ids.clone()
    other[0, 4:] = torch.tensor([7, 9])
    with torch.no_grad():
        a = model(pixels, ids, pad)
        b = model(pixels, other, pad)
        # Without the mask the same id change must matter, otherwise the test proves nothing.
        c = model(pixels, ids, None)
        d = model(pixels, other, None)
        # Dropping the padded keys entirely gives the same non-padded tokens.
        short = model(pixels[:1], ids[:1, :4])
    keep = 1 + model.num_patches + 4
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (c[0] - d[0]).abs().max() > 1e-3
    torch.testing.assert_close(a[:1, :keep], short, atol=1e-5, rtol=1e-5)
    # Sample 1 has no padding: an all-False mask equals no mask.
    torch.testing.assert_close(a[1], c[1], atol=0, rtol=0)


def test_beit3_inference_attention_is_the_training_attention() -> None:
    """Without autograd the attention runs the fused kernel; with autograd torchscale's explicit form (parity of
    gradients). The two agree up to float rounding, padding included."""
    model = _small_model().eval()
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 50, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 3:] = True
    explicit = model(pixels, ids, pad).detach()
    with torch.no_grad():
        fused = model(pixels, ids, pad)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert not torch.equal(fused, explicit)  # two kernels really ran


def test_beit3_samples_are_independent() -> None:
    model = _small_model()
    torch.manual_seed(2)
    pixels = torch.randn(3, 3, 32, 32)
    ids = torch.randint(4, 50, (3, 5))
    with torch.no_grad():
        full = model(pixels, ids)
        single = model(pixels[1:2], ids[1:2])
    torch.testing.assert_close(full[1:2], single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_beit3_shared_images_equal_repeated_images(grad: bool) -> None:
    """``image_repeats``: 2 images read by 3 x 2 token sequences (sequence n reads image n mod 2) give the tokens
    of the 6 images passed one per sequence, with and without autograd, and gradients reach the shared images."""
    model = _small_model().eval()
    torch.manual_seed(4)
    pixels = torch.randn(2, 3, 32, 32, requires_grad=grad)
    ids = torch.randint(4, 50, (6, 5))
    pad = torch.zeros(6, 5, dtype=torch.bool)
    pad[3, 2:] = True
    with torch.set_grad_enabled(grad):
        shared = model(pixels, ids, pad, image_repeats=3)
        repeated = model(pixels.repeat(3, 1, 1, 1), ids, pad)
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-5)
    if grad:
        (g_shared,) = torch.autograd.grad(shared.square().sum(), pixels)
        (g_repeated,) = torch.autograd.grad(repeated.square().sum(), pixels)
        torch.testing.assert_close(g_shared, g_repeated, atol=1e-4, rtol=1e-4)


def test_beit3_without_layers_repeats_shared_images() -> None:
    """With no layer to expand them, shared image rows are repeated before the final norm."""
    torch.manual_seed(6)
    model = BEiT3(
        embed_dim=32, num_heads=4, ffn_dim=64, num_layers=0, vocab_size=50, img_size=32, patch_size=8
    )
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 50, (4, 5))
    with torch.no_grad():
        shared = model(pixels, ids, image_repeats=2)
        repeated = model(pixels.repeat(2, 1, 1, 1), ids)
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=1e-6)


def test_beit3_image_repeats_must_match_the_sequences() -> None:
    model = _small_model()
    with pytest.raises(ValueError, match="2 images x 2 repeats vs 6 token sequences"):
        model(torch.randn(2, 3, 32, 32), torch.randint(4, 50, (6, 5)), image_repeats=2)


def test_clip_encoding_shares_frames_expanded_over_clips(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MPGSAM2.encode_tokens(..., frames_shared=True)`` on one video's frames for B expressions passes the
    frames once to BEiT-3, and gives the tokens of the frames copied per clip; without the flag, frames expanded
    over B (stride 0) are embedded per clip."""
    model = make_tiny_model(seed=5).eval()
    size = model.input_sizes["beit_size"]
    frames = torch.randn(3, 3, size, size)
    ids = torch.randint(4, 50, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    images_seen: list[int] = []
    forward = model.beit3.forward

    def counting(pixel_values, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        images_seen.append(pixel_values.shape[0])
        return forward(pixel_values, *args, **kwargs)

    monkeypatch.setattr(model.beit3, "forward", counting)
    with torch.no_grad():
        shared = model.encode_tokens(frames.unsqueeze(0), ids, pad, frames_shared=True)
        copied = model.encode_tokens(frames.unsqueeze(0).repeat(2, 1, 1, 1, 1), ids, pad)
        model.encode_tokens(frames.unsqueeze(0).expand(2, *frames.shape), ids, pad)
    assert images_seen == [3, 6, 6]
    torch.testing.assert_close(shared, copied, atol=1e-5, rtol=1e-5)


def test_beit3_gradients_reach_all_parameters_but_mask_token() -> None:
    model = _small_model().train()
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(4, 50, (2, 5))
    model(pixels, ids).square().mean().backward()
    for name, param in model.named_parameters():
        if name == "vision_embed.mask_token":
            assert param.grad is None
        else:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_beit3_rejects_wrong_image_size() -> None:
    model = _small_model()
    with pytest.raises(ValueError, match="32x32"):
        model(torch.randn(1, 3, 48, 48), torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize(("preset", "manifest"), [("large", "large"), ("base", "tiny")])
def test_beit3_full_size_keys_and_parameter_count(preset: str, manifest: str) -> None:
    d = _fixture_dir()
    entries = json.loads((d / "full_size_keys.json").read_text())[manifest]["entries"]
    expected = [(e["key"][len(PREFIX) :], tuple(e["shape"])) for e in entries if e["key"].startswith(PREFIX)]
    assert all(not e["key"].startswith("mm_extractor.") or e["key"].startswith(PREFIX) for e in entries)
    with torch.device("meta"):
        model = BEiT3(**BEIT3_PRESETS[preset])
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == sum(
        e["numel"] for e in entries if e["key"].startswith(PREFIX)
    )
