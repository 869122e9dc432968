"""build_model: the config values it reads, the errors for bad ones, and the BEiT-3 position init option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mpgsam2.build import ConfigError, build_model, sam2_config_name
from mpgsam2.modeling.beit3 import BEiT3

CONF = Path(__file__).resolve().parents[1] / "conf"


def _tiny() -> tuple[dict, dict]:
    beit3 = OmegaConf.to_container(OmegaConf.load(CONF / "model/beit3/tiny.yaml"))
    sam2 = OmegaConf.to_container(OmegaConf.load(CONF / "model/sam2/tiny.yaml"))
    return beit3, sam2


def test_sam2_config_names_cover_sizes_and_versions():
    assert sam2_config_name("b+", "2.1") == "sam2.1_hiera_b+.yaml"
    assert sam2_config_name("large", "2.0") == "sam2_hiera_l.yaml"
    with pytest.raises(ConfigError, match="version"):
        sam2_config_name("t", "3.0")
    with pytest.raises(ConfigError, match="size"):
        sam2_config_name("xl", "2.0")


def test_settings_edit_the_sam2_config_after_the_overrides():
    beit3, sam2 = _tiny()
    assert build_model(beit3, sam2).sam.pred_obj_scores is True  # the Hiera-T yaml predicts object scores
    sam2["settings"] = {"pred_obj_scores": False, "pred_obj_scores_mlp": False, "fixed_no_obj_ptr": False}
    assert build_model(beit3, sam2).sam.pred_obj_scores is False


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
