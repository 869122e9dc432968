"""Building models from users' weights: our export round trip, released folders, official component files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.tiny import make_tiny_model, random_clip
from safetensors.torch import load_file

from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.weights import (
    convert_mpgsam2_to_original,
    init_from_components,
    load_model,
    load_mpgsam2,
    load_weights,
    save_mpgsam2,
)
from mpgsam2.weights.io import CheckpointError


def _same_outputs(a: MPGSAM2, b: MPGSAM2) -> bool:
    sam, beit, ids, pad = random_clip(a, 2)
    with torch.no_grad():
        return torch.equal(a.eval()(sam, beit, ids, pad).pred_masks, b.eval()(sam, beit, ids, pad).pred_masks)


def test_export_round_trip(tmp_path):
    model = make_tiny_model(use_object_historical_fusion=False)
    save_mpgsam2(model, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(tmp_path / "export")
    assert loaded.model.config == model.config and loaded.tokenizer_path is None and loaded.run_config is None
    assert _same_outputs(model, loaded.model)
    assert _same_outputs(model, load_mpgsam2(tmp_path / "export"))  # the deprecated name, kept for a release


def test_released_folder_and_deepspeed_file(fixture_dir, tmp_path):
    """The fixture's weights laid out as a released HF folder, and as a DeepSpeed export with its prefix."""
    folder = tmp_path / "MPG-SAM2-release"
    folder.mkdir()
    meta = json.loads((fixture_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(meta["hf_config_json"]))
    shutil.copy(fixture_dir / "state_dict.safetensors", folder / "model.safetensors")
    model = load_model(folder).model

    original = load_file(str(fixture_dir / "state_dict.safetensors"))
    deepspeed = tmp_path / "pytorch_model.bin"
    torch.save({f"module.evf_model.{k}": v for k, v in original.items()}, deepspeed)
    from_deepspeed = load_model(deepspeed, config_path=folder / "config.json").model
    alias = load_mpgsam2(deepspeed, config_path=folder / "config.json")  # the deprecated name
    for (name, a), b, c in zip(
        model.state_dict().items(), from_deepspeed.state_dict().values(), alias.state_dict().values()
    ):
        assert torch.equal(a, b) and torch.equal(a, c), name
    with pytest.raises(CheckpointError, match="config_path"):
        load_mpgsam2(deepspeed)

    compat = load_model(folder, hf_gamma_compat=True).model
    gamma = compat.sam.memory_encoder.fuser.layers[0].gamma
    assert torch.all(gamma == 1e-6)
    assert not torch.equal(gamma, model.sam.memory_encoder.fuser.layers[0].gamma)


def test_init_from_official_component_files(tmp_path):
    """A SAM 2 ``{"model": ...}`` .pt and a BEiT-3 ``{"model": ...}`` .pth written from a donor model load into
    a fresh model, leaving only the new MPG-SAM 2 modules at their initialisation."""
    donor = make_tiny_model()
    original = convert_mpgsam2_to_original(donor.state_dict())
    sam2 = {k[len("visual_model.") :]: v for k, v in original.items() if k.startswith("visual_model.")}
    mpg_decoder = ("vtlfusion_module", "mmfusion_module", "objfusion_module", "patch_linear")
    sam2 = {k: v for k, v in sam2.items() if not any(f"sam_mask_decoder.{m}." in k for m in mpg_decoder)}
    beit3 = {k[len("mm_extractor.") :]: v for k, v in original.items() if k.startswith("mm_extractor.")}
    torch.save({"model": sam2}, tmp_path / "sam2_hiera_tiny.pt")
    torch.save({"model": beit3}, tmp_path / "beit3_base_patch16_224.pth")

    fresh = make_tiny_model(seed=1)
    load_weights(fresh, tmp_path / "beit3_base_patch16_224.pth", fmt="beit3")
    load_weights(fresh, tmp_path / "sam2_hiera_tiny.pt", fmt="sam2")
    by_alias = make_tiny_model(seed=1)  # init_from_components: the deprecated name, kept for a release
    init_from_components(
        by_alias, beit3=tmp_path / "beit3_base_patch16_224.pth", sam2=tmp_path / "sam2_hiera_tiny.pt"
    )
    assert all(torch.equal(v, by_alias.state_dict()[k]) for k, v in fresh.state_dict().items())
    donor_state = donor.state_dict()
    new_modules = (
        "pixel_global_fusion",
        "object_global_fusion",
        "object_historical_fusion",
        "context_patch_proj",
    )
    for name, value in fresh.state_dict().items():
        if name.startswith(("beit3.", "sam.")) and not any(m in name for m in new_modules):
            assert torch.equal(value, donor_state[name]), name
    # the MPG-SAM 2 modules keep their own (random) initialisation
    kept = "sam.sam_mask_decoder.pixel_global_fusion.multihead_attn.in_proj_weight"
    assert not torch.equal(fresh.state_dict()[kept], donor_state[kept])
    assert not torch.equal(fresh.mask_prior.token_proj.weight, donor.mask_prior.token_proj.weight)

    # a SAM 2.1 file does not fit a SAM 2.0 model: the error names the file and the keys
    sam21 = dict(sam2, no_obj_embed_spatial=torch.zeros(1, 16))
    torch.save({"model": sam21}, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(
        CheckpointError,
        match=r"(?s)sam2\.1_hiera_tiny\.pt.*no_obj_embed_spatial",
    ):
        load_weights(fresh, tmp_path / "sam2.1_hiera_tiny.pt", fmt="sam2")


def test_export_is_atomic(tmp_path, monkeypatch):
    """An export that fails half way leaves no config/weights pair behind."""
    model = make_tiny_model()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("mpgsam2.weights.pretrained.save_file", broken)
    with pytest.raises(OSError):
        save_mpgsam2(model, tmp_path / "export")
    assert not (tmp_path / "export" / "model.safetensors").exists()
    assert not (tmp_path / "export" / "config.json").exists()
