"""Model configuration: official SAM 2 presets, Hydra-style overrides, the original's config.json, typos."""

from __future__ import annotations

import json

import pytest
import torch

from mpgsam2.modeling.config import MPGSAM2Config, config_from_original, load_config_file
from mpgsam2.modeling.sam2.presets import SAM2_CONFIG_NAMES, apply_overrides, sam2_model_config
from mpgsam2.modeling.sam2.tracker import _IGNORED_KEYS, build_sam2_tracker


def _strip_targets(node):
    if isinstance(node, dict):
        return {k: _strip_targets(v) for k, v in node.items() if k != "_target_"}
    return node


def test_fixture_config_resolves_exactly_as_the_original(fixture_dir):
    """Preset + the fixture's Hydra overrides equal the SAM 2 config the original resolved (every key)."""
    meta = json.loads((fixture_dir / "config.json").read_text())
    hf = meta["hf_config_json"]
    ours = apply_overrides(sam2_model_config(hf["sam2_config_name"]), hf["sam2_hydra_overrides"])
    resolved = _strip_targets(meta["sam2_config_resolved"])
    trunk_defaults = {"drop_path_rate", "q_pool", "q_stride", "dim_mul", "head_mul", "return_interm_layers"}
    ours["image_encoder"]["trunk"] = {
        k: v
        for k, v in ours["image_encoder"]["trunk"].items()
        if k in resolved["image_encoder"]["trunk"] or k not in trunk_defaults
    }
    for section in ("memory_attention", "memory_encoder"):
        assert ours[section] == resolved[section], section
    for key, value in resolved.items():
        if not isinstance(value, dict):
            assert ours[key] == value, key
    cfg = load_config_file(fixture_dir / "config.json")
    assert cfg.beit_dim == meta["beit3"]["encoder_embed_dim"]
    assert cfg.sam_dim == meta["sam2"]["hidden_dim"]


def test_sam21_presets_switch_on_the_21_semantics():
    for name in SAM2_CONFIG_NAMES:
        model = sam2_model_config(name)
        is_21 = name.startswith("sam2.1")
        assert model.get("no_obj_embed_spatial", False) == is_21
        assert model.get("use_signed_tpos_enc_to_obj_ptrs", False) == is_21
        assert model["add_tpos_enc_to_obj_ptrs"] == is_21
    assert (
        sam2_model_config("configs/sam2.1/sam2.1_hiera_b+.yaml")["image_encoder"]["trunk"]["embed_dim"] == 112
    )


def test_typos_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="unknown SAM 2 config 'sam2_hiera_xl.yaml'"):
        sam2_model_config("sam2_hiera_xl.yaml")
    with pytest.raises(ValueError, match="no key model.image_encoder.trunk.embed_dimm"):
        apply_overrides(sam2_model_config("sam2_hiera_t.yaml"), ["model.image_encoder.trunk.embed_dimm=8"])
    model = sam2_model_config("sam2_hiera_t.yaml")
    model["num_maskmemm"] = 3
    with pytest.raises(ValueError, match="unknown SAM 2 config keys: num_maskmemm"):
        build_sam2_tracker(model)
    with pytest.raises(ValueError, match="unknown MPGSAM2Config keys: dropuot"):
        MPGSAM2Config.from_dict(
            {**MPGSAM2Config.from_presets("base", "sam2_hiera_t.yaml").to_dict(), "dropuot": 0}
        )


@pytest.mark.parametrize("name", ["sam2_hiera_t.yaml", "sam2.1_hiera_t.yaml"])
def test_every_tracker_config_key_reaches_one_settings_field(name):
    # the flat SAM 2 keys are split into settings objects by field name: each accepted key lands in exactly one
    # place and keeps its value (a key no settings object has would fail as unknown, see the test above)
    model = sam2_model_config(name)
    with torch.device("meta"):  # shapes only: no weights are computed
        tracker = build_sam2_tracker(model)
    groups = [tracker.memory_settings, tracker.pointer_settings, tracker.head_settings]
    for key, value in model.items():
        holders = [g for g in groups if hasattr(g, key)]
        if key in ("image_size", "backbone_stride"):
            assert not holders and getattr(tracker, key) == value
        elif key in _IGNORED_KEYS or key in (
            "_target_",
            "image_encoder",
            "memory_attention",
            "memory_encoder",
        ):
            assert not holders, key
        else:
            assert len(holders) == 1 and getattr(holders[0], key) == value, key


def test_original_config_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="x.json: 'mm_extractor_scale'"):
        config_from_original({"model_type": "evf"}, source="x.json")
    with pytest.raises(ValueError, match="hidden_size 512 differs"):
        config_from_original({"mm_extractor_scale": "base", "hidden_size": 512})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_config_file(bad)
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="neither an mpgsam2 config"):
        load_config_file(bad)


def test_released_large_config_is_beit3_large_with_sam2_hiera_l():
    cfg = config_from_original(
        {"model_type": "evf", "mm_extractor_scale": "large", "hidden_size": 1024, "out_dim": 256}
    )
    assert cfg.beit3["embed_dim"] == 1024 and cfg.beit3["num_layers"] == 24
    assert cfg.sam2["image_encoder"]["trunk"]["embed_dim"] == 144
    assert "no_obj_embed_spatial" not in cfg.sam2  # the original is SAM 2.0
