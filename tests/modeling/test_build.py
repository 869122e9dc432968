"""build_model: the config values it reads, the errors for bad ones, and the BEiT-3 position init option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import tiny_preset

from mpgsam2.build import ConfigError, build_model, sam2_config_name
from mpgsam2.modeling.beit3 import BEiT3

CONF = Path(__file__).resolve().parents[2] / "conf"


def _tiny() -> tuple[dict, dict]:
    return tiny_preset()


def test_sam2_config_names_cover_sizes_and_versions():
    assert sam2_config_name("b+", "2.1") == "sam2.1_hiera_b+.yaml"
    assert sam2_config_name("l", "2.0") == "sam2_hiera_l.yaml"
    # one spelling per size: the official file names' tag; a long name is refused, naming the accepted ones
    for long_name in ("tiny", "small", "base_plus", "large", "hiera_l"):
        with pytest.raises(ConfigError, match=r"model\.sam2\.size=.*expected one of t, s, b\+, l"):
            sam2_config_name(long_name, "2.0")
    with pytest.raises(ConfigError, match="version"):
        sam2_config_name("t", "3.0")
    with pytest.raises(ConfigError, match="size"):
        sam2_config_name("xl", "2.0")


def test_settings_are_deep_merged_over_the_official_sam2_config():
    beit3, sam2 = _tiny()
    model = build_model(beit3, sam2)
    assert model.sam.head_settings.pred_obj_scores is True  # the Hiera-T yaml predicts object scores
    assert model.config.sam2["memory_attention"]["layer"]["d_model"] == 32  # the tiny preset's nested key
    assert model.config.sam2["memory_attention"]["layer"]["self_attention"]["rope_theta"] == 10000.0  # kept
    sam2["settings"] = {
        **sam2["settings"],
        "pred_obj_scores": False,
        "pred_obj_scores_mlp": False,
        "fixed_no_obj_ptr": False,
        "memory_attention": {**sam2["settings"]["memory_attention"], "num_layers": 2},
    }
    model = build_model(beit3, sam2)
    assert model.sam.head_settings.pred_obj_scores is False and len(model.sam.memory_attention.layers) == 2
    assert model.config.sam2["memory_attention"]["layer"]["d_model"] == 32


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"num_maskmemm": 3}, "unknown SAM 2 config keys: num_maskmemm"),
        (
            {"memory_attention": {"layer": {"d_modle": 3}}},
            r"model.sam2.settings: a key no SAM 2 module .*d_modle",
        ),
        ({"memory_attention": 3}, r"model.sam2.settings.memory_attention=3: .*holds a mapping"),
        (
            {"image_size": {"h": 1}},
            r"model.sam2.settings.image_size: a mapping, but .*plain value there \(1024\)",
        ),
    ],
)
def test_bad_sam2_settings_are_named(settings, match):
    beit3, sam2 = _tiny()
    with pytest.raises((ConfigError, ValueError), match=match):
        build_model(beit3, {"size": "t", "version": "2.0", "settings": settings})


def test_the_old_override_strings_are_refused_with_their_replacement():
    beit3, sam2 = _tiny()
    with pytest.raises(ConfigError, match="overrides became model.sam2.settings"):
        build_model(beit3, {**sam2, "overrides": ["++model.num_maskmem=3"]})


def test_options_reach_the_model_config():
    beit3, sam2 = _tiny()
    model = build_model(beit3, sam2, use_dense_prior=False, dropout=0.0, freeze_image_encoder=False)
    assert model.config.use_dense_prior is False and model.config.dropout == 0.0
    assert all(p.requires_grad for p in model.sam.image_encoder.parameters())


@pytest.mark.parametrize(
    ("sam2_extra", "options", "weights", "match"),
    [
        ({"sizes": "t"}, {}, None, "unknown keys"),
        ({}, {"use_dense_priors": False}, None, "use_dense_priors"),
        ({}, {}, {"mpgsam2": "a", "sam2": "b"}, "leave model.weights.beit3/sam2 empty"),
        ({}, {}, {"clip": "a"}, "unknown keys"),
    ],
)
def test_bad_values_are_named(sam2_extra, options, weights, match):
    beit3, sam2 = _tiny()
    with pytest.raises(ConfigError, match=match):
        build_model(beit3, {**sam2, **sam2_extra}, weights=weights, **options)


def test_position_init_std_sets_the_random_position_tables():
    torch.manual_seed(0)
    default = BEiT3(
        embed_dim=32, num_heads=2, ffn_dim=64, num_layers=1, vocab_size=50, img_size=32, patch_size=8
    )
    small = BEiT3(
        embed_dim=32,
        num_heads=2,
        ffn_dim=64,
        num_layers=1,
        vocab_size=50,
        img_size=32,
        patch_size=8,
        position_init_std=0.02,
    )
    for model, std in ((default, 1.0), (small, 0.02)):
        table = model.encoder.embed_positions.B.weight
        assert table.std().item() == pytest.approx(std, rel=0.05)


def test_beit3_presets_are_named_and_keys_given_beside_them_win():
    from mpgsam2.build import beit3_config
    from mpgsam2.modeling.beit3 import BEIT3_PRESETS

    large = beit3_config({"preset": "large", "img_size": 224, "patch_size": 16})
    assert large == {**BEIT3_PRESETS["large"], "img_size": 224, "patch_size": 16}
    assert beit3_config({"preset": "base", "num_layers": 2})["num_layers"] == 2
    with pytest.raises(ConfigError, match="model.beit3.preset='huge'"):
        beit3_config({"preset": "huge"})
