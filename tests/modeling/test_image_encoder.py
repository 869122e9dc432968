"""Tests for the SAM 2 image encoder (Hiera trunk + FPN neck): fixture parity, full-size key layout, shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mpgsam2.modeling.sam2.hiera import Hiera, window_partition, window_unpartition
from mpgsam2.modeling.sam2.image_encoder import (
    HIERA_PRESETS,
    FpnNeck,
    ImageEncoder,
    build_image_encoder,
    image_encoder_config,
)
from mpgsam2.modeling.sam2.position_encoding import PositionEmbeddingSine
from mpgsam2.parity import DEFAULT_FIXTURE

FIXTURE = DEFAULT_FIXTURE
PREFIX = "visual_model.image_encoder."
DECODER = "visual_model.sam_mask_decoder."


def _fixture_dir() -> Path:
    if not (FIXTURE / "config.json").is_file():
        pytest.fail(f"parity fixture not found at {FIXTURE}")
    return FIXTURE


@pytest.fixture(scope="module")
def fixture_run() -> dict:
    from safetensors.torch import load_file

    d = _fixture_dir()
    cfg = json.loads((d / "config.json").read_text())["sam2_config_resolved"]["image_encoder"]
    encoder = build_image_encoder(cfg).eval()
    state = load_file(str(d / "state_dict.safetensors"))
    encoder.load_state_dict(
        {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}, strict=True
    )
    return {
        "encoder": encoder,
        "state": state,
        "inputs": torch.load(d / "inputs.pt", weights_only=True),
        "outputs": torch.load(d / "outputs.pt", weights_only=True),
    }


def _backbone_feats(encoder: ImageEncoder, state: dict, frames: torch.Tensor) -> list[torch.Tensor]:
    """The three levels as the fixture stores them: [T, HW, 1, C], levels 0/1 after conv_s0/conv_s1."""
    with torch.no_grad():
        # parity: the original video predictor encodes one frame at a time.
        outs = [encoder(frame[None]) for frame in frames]
    fpn = [torch.cat([o["backbone_fpn"][level] for o in outs]) for level in range(3)]
    fpn[0] = F.conv2d(fpn[0], state[DECODER + "conv_s0.weight"], state[DECODER + "conv_s0.bias"])
    fpn[1] = F.conv2d(fpn[1], state[DECODER + "conv_s1.weight"], state[DECODER + "conv_s1.bias"])
    # 'b c h w -> b (h w) 1 c': each frame is a batch of one in the original
    return [f.flatten(2).transpose(1, 2).unsqueeze(2) for f in fpn]


@pytest.mark.parametrize("prefix", ["", "train."])
def test_image_encoder_matches_original_fixture(fixture_run: dict, prefix: str) -> None:
    frames = fixture_run["inputs"]["frames_sam"]
    if prefix:
        frames = frames[fixture_run["inputs"]["train.frame_indices"]]
    got = _backbone_feats(fixture_run["encoder"], fixture_run["state"], frames)
    for level in range(3):
        ref = fixture_run["outputs"][f"{prefix}sam.backbone_feats.level{level}"]
        assert got[level].shape == ref.shape
        torch.testing.assert_close(got[level], ref, atol=1e-5, rtol=0)


def test_image_encoder_output_dict_on_fixture(fixture_run: dict) -> None:
    encoder = fixture_run["encoder"]
    frames = fixture_run["inputs"]["frames_sam"][:2]
    size = frames.shape[-1]
    d_model = encoder.neck.d_model
    with torch.no_grad():
        out = encoder(frames)
    assert out["vision_features"] is out["backbone_fpn"][-1]
    assert len(out["backbone_fpn"]) == len(out["vision_pos_enc"]) == 3  # scalp 1 drops the stride-32 level
    for level, stride in enumerate((4, 8, 16)):
        shape = (2, d_model, size // stride, size // stride)
        assert out["backbone_fpn"][level].shape == shape
        assert out["vision_pos_enc"][level].shape == shape
    # batching frames gives the same features as encoding them one at a time
    with torch.no_grad():
        single = encoder(frames[1:2])
    torch.testing.assert_close(out["vision_features"][1:2], single["vision_features"], atol=1e-6, rtol=0)


def _full_size_entries(name: str) -> dict[str, list[int]]:
    manifest = json.loads((_fixture_dir() / "full_size_keys.json").read_text())[name]
    return {e["key"][len(PREFIX) :]: e["shape"] for e in manifest["entries"] if e["key"].startswith(PREFIX)}


@pytest.mark.parametrize(("manifest", "preset"), [("large", "l"), ("tiny", "t")])
def test_preset_matches_full_size_keys(manifest: str, preset: str) -> None:
    expected = _full_size_entries(manifest)
    with torch.device("meta"):
        encoder = build_image_encoder(HIERA_PRESETS[preset])
    got = {k: list(v.shape) for k, v in encoder.state_dict().items()}
    assert sorted(got) == sorted(expected)
    assert got == expected


@pytest.mark.parametrize(("preset", "millions"), [("t", 27.22), ("s", 34.32), ("b+", 69.11), ("l", 212.70)])
def test_preset_parameter_counts(preset: str, millions: float) -> None:
    with torch.device("meta"):
        encoder = build_image_encoder(HIERA_PRESETS[preset])
    assert encoder.scalp == 1
    assert encoder.trunk.channel_list == HIERA_PRESETS[preset]["neck"]["backbone_channel_list"]
    assert round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2) == millions


def test_image_encoder_config_is_a_copy() -> None:
    cfg = image_encoder_config("l")
    cfg["trunk"]["stages"][0] = 99
    assert HIERA_PRESETS["l"]["trunk"]["stages"][0] == 2
    assert list(HIERA_PRESETS) == [
        "t",
        "s",
        "b+",
        "l",
    ]  # the official file names' size tags, the one spelling
    with pytest.raises(KeyError, match="hiera_l"):
        image_encoder_config("hiera_l")


def _small_encoder(scalp: int, drop_path_rate: float = 0.0) -> ImageEncoder:
    trunk = Hiera(
        embed_dim=8,
        num_heads=1,
        drop_path_rate=drop_path_rate,
        stages=(1, 2, 3, 1),
        global_att_blocks=(4,),
        window_pos_embed_bkg_spatial_size=(5, 7),
        window_spec=(8, 4, 6, 3),  # windows of 6 and 3 need padding on the 8x6 and 4x3 grids below
    )
    neck = FpnNeck(
        PositionEmbeddingSine(16),
        d_model=16,
        backbone_channel_list=trunk.channel_list,
        fpn_interp_model="nearest",
        fpn_top_down_levels=(2, 3),
    )
    return ImageEncoder(trunk, neck, scalp=scalp)


def test_hiera_output_shapes_non_square() -> None:
    torch.manual_seed(0)
    encoder = _small_encoder(scalp=1).eval()
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        feats = encoder.trunk(x)
    assert encoder.trunk.channel_list == [64, 32, 16, 8]
    assert [tuple(f.shape) for f in feats] == [(2, 8, 32, 24), (2, 16, 16, 12), (2, 32, 8, 6), (2, 64, 4, 3)]
    with torch.no_grad():
        out = encoder(x)
        out_full = _small_encoder(scalp=0).eval()(x)
    assert [tuple(f.shape) for f in out["backbone_fpn"]] == [(2, 16, 32, 24), (2, 16, 16, 12), (2, 16, 8, 6)]
    assert [tuple(p.shape) for p in out["vision_pos_enc"]] == [
        (2, 16, 32, 24),
        (2, 16, 16, 12),
        (2, 16, 8, 6),
    ]
    assert out["vision_features"].shape == (2, 16, 8, 6)
    assert len(out_full["backbone_fpn"]) == 4 and out_full["vision_features"].shape == (2, 16, 4, 3)
    # samples are encoded independently
    with torch.no_grad():
        single = encoder(x[1:])
    torch.testing.assert_close(out["vision_features"][1:], single["vision_features"], atol=1e-6, rtol=1e-5)


def test_hiera_return_last_layer_only() -> None:
    trunk = Hiera(
        embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,), return_interm_layers=False
    )
    assert trunk.channel_list == [64]
    feats = trunk(torch.randn(1, 3, 64, 64))
    assert len(feats) == 1 and feats[0].shape == (1, 64, 2, 2)


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    plain = _small_encoder(scalp=1).eval()
    dropped = _small_encoder(scalp=1, drop_path_rate=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = plain(x)["vision_features"]
        torch.testing.assert_close(dropped.eval()(x)["vision_features"], ref, atol=0, rtol=0)
        dropped.train()
        torch.manual_seed(1)
        a = dropped(x)["vision_features"]
        torch.manual_seed(2)
        b = dropped(x)["vision_features"]
    assert not torch.allclose(a, b)


def test_channel_mismatch_raises() -> None:
    trunk = Hiera(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,))
    neck = FpnNeck(PositionEmbeddingSine(16), d_model=16, backbone_channel_list=[8, 16, 32, 64])
    with pytest.raises(ValueError, match="Channel dims"):
        ImageEncoder(trunk, neck)


def test_window_partition_roundtrip_with_padding() -> None:
    x = torch.randn(2, 10, 7, 3)
    windows, pad_hw = window_partition(x, 4)
    assert pad_hw == (12, 8) and windows.shape == (2 * 3 * 2, 4, 4, 3)
    # the second window of the first row holds columns 4..7 of rows 0..3, zero-padded at column 7
    torch.testing.assert_close(windows[1, :, :3], x[0, :4, 4:7])
    assert windows[1, :, 3].abs().sum() == 0
    torch.testing.assert_close(window_unpartition(windows, 4, pad_hw, (10, 7)), x)
