"""Tests for mpgsam2.weights: readers, rule-table converters and the strict loader."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mpgsam2.weights import (
    BEIT3_CHECKPOINT_GAPS,
    MPG_DECODER_MODULES,
    SAM2_CHECKPOINT_GAPS,
    CheckpointError,
    check_keys,
    convert_beit3,
    convert_mpgsam2,
    convert_mpgsam2_to_original,
    convert_sam2,
    detect_format,
    load_checkpoint,
    load_into,
    load_weights,
    original_name,
    our_name,
    read_state_dict,
    strip_prefix,
)

SAM2_KEYS_JSON = Path(__file__).resolve().parents[1] / "fixtures" / "sam2_official_keys.json"
ORIGINAL_MPG_DECODER = ("vtlfusion_module", "mmfusion_module", "objfusion_module", "patch_linear")


# ------------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def fixture_sd(fixture_dir: Path) -> dict[str, Tensor]:
    return read_state_dict(fixture_dir / "state_dict.safetensors")


@pytest.fixture(scope="module")
def full_size(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "full_size_keys.json").read_text())


@pytest.fixture(scope="module")
def sam2_official() -> dict[str, dict[str, list[int]]]:
    return json.loads(SAM2_KEYS_JSON.read_text())["keys"]


def _meta(shapes: dict[str, list[int]]) -> dict[str, Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _module_from_keys(shapes: dict[str, list[int]], buffers: set[str] = frozenset()) -> nn.Module:
    """An nn.Module tree on the meta device whose state_dict() has exactly these names and shapes."""
    root = nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        t = torch.empty(shape, device="meta")
        if key in buffers:
            mod.register_buffer(leaf, t)
        else:
            mod.register_parameter(leaf, nn.Parameter(t))
    return root


def _manifest(full_size: dict, size: str) -> tuple[dict[str, list[int]], set[str]]:
    entries = full_size[size]["entries"]
    return {e["key"]: e["shape"] for e in entries}, {e["key"] for e in entries if e["kind"] == "buffer"}


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.register_buffer("table", torch.zeros(2, 3))


def _tiny_sd(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in Tiny().state_dict().items()}


# -------------------------------------------------------------------------------------------------- MPG-SAM 2


def test_fixture_round_trip(fixture_sd: dict[str, Tensor]) -> None:
    ours = convert_mpgsam2(fixture_sd)
    assert ours.source_format == "mpgsam2"
    assert len(ours) == len(fixture_sd) == 465  # every key mapped, none dropped or merged
    assert not ours.ignored
    for orig, tensor in fixture_sd.items():
        new = our_name(orig)
        assert ours[new] is tensor  # same tensor, untouched
        assert original_name(new) == orig
    back = convert_mpgsam2_to_original(ours)
    assert list(back) == list(fixture_sd)
    assert all(back[k] is fixture_sd[k] for k in fixture_sd)
    tops = {k.split(".")[0] for k in ours}
    assert tops == {"beit3", "mask_prior", "sparse_prompt_mlp", "text_proj", "sentence_head", "sam"}


@pytest.mark.parametrize(
    ("original", "ours"),
    [
        (
            "mm_extractor.beit3.encoder.layers.0.self_attn.q_proj.A.weight",
            "beit3.encoder.layers.0.self_attn.q_proj.A.weight",
        ),
        ("visual_ifi.linear1.weight", "mask_prior.global_attn.linear1.weight"),
        ("vmtoken.multihead_attn.in_proj_weight", "mask_prior.token_refine.attn.in_proj_weight"),
        ("mask_linear.bias", "mask_prior.token_proj.bias"),
        ("mask_product.weight", "mask_prior.prior_head.weight"),
        ("meo_linear.weight", "mask_prior.context_proj.weight"),
        ("text_hidden_fcs.0.2.weight", "sparse_prompt_mlp.2.weight"),
        ("text_feat_linear.weight", "text_proj.weight"),
        ("text2one_linear.bias", "sentence_head.bias"),
        (
            "visual_model.sam_mask_decoder.vtlfusion_module.multihead_attn.in_proj_weight",
            "sam.sam_mask_decoder.pixel_global_fusion.multihead_attn.in_proj_weight",
        ),
        (
            "visual_model.sam_mask_decoder.mmfusion_module.norm1.weight",
            "sam.sam_mask_decoder.object_global_fusion.norm1.weight",
        ),
        (
            "visual_model.sam_mask_decoder.objfusion_module.linear2.bias",
            "sam.sam_mask_decoder.object_historical_fusion.linear2.bias",
        ),
        (
            "visual_model.sam_mask_decoder.patch_linear.weight",
            "sam.sam_mask_decoder.context_patch_proj.weight",
        ),
        (
            "visual_model.sam_mask_decoder.transformer.layers.0.norm1.weight",
            "sam.sam_mask_decoder.transformer.layers.0.norm1.weight",
        ),
        ("visual_model.memory_encoder.fuser.layers.1.gamma", "sam.memory_encoder.fuser.layers.1.gamma"),
        ("visual_model.maskmem_tpos_enc", "sam.maskmem_tpos_enc"),
    ],
)
def test_single_key_names(original: str, ours: str) -> None:
    assert our_name(original) == ours
    assert original_name(ours) == original
    assert our_name("module.evf_model." + original) == ours


def test_unknown_single_keys_raise() -> None:
    with pytest.raises(CheckpointError, match="text_hidden_fcs.1.0.weight"):
        our_name("text_hidden_fcs.1.0.weight")
    with pytest.raises(CheckpointError, match="decoder.weight"):
        original_name("decoder.weight")


@pytest.mark.parametrize("size", ["large", "tiny"])
def test_full_size_keys_round_trip(full_size: dict, size: str) -> None:
    shapes, _ = _manifest(full_size, size)
    ours = convert_mpgsam2(_meta(shapes))
    assert len(ours) == len(shapes)
    assert {original_name(k) for k in ours} == set(shapes)
    n_mpg = sum(k.startswith(MPG_DECODER_MODULES) for k in ours)
    assert (
        n_mpg == sum(any(f"sam_mask_decoder.{m}." in k for m in ORIGINAL_MPG_DECODER) for k in shapes) == 38
    )


def test_unmapped_key_is_an_error_listing_it(fixture_sd: dict[str, Tensor]) -> None:
    sd = dict(fixture_sd)
    sd["lm_head.weight"] = torch.zeros(2)
    sd["text_hidden_fcs.1.0.bias"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as e:
        convert_mpgsam2(sd, source="ckpt/model.safetensors")
    msg = str(e.value)
    assert "ckpt/model.safetensors" in msg and "lm_head.weight" in msg and "text_hidden_fcs.1.0.bias" in msg
    assert "2 key(s)" in msg


def test_deepspeed_prefix(fixture_sd: dict[str, Tensor]) -> None:
    wrapped = {"module.evf_model." + k: v for k, v in fixture_sd.items()}
    ours = convert_mpgsam2(wrapped)
    assert dict(ours) == dict(convert_mpgsam2(fixture_sd))
    assert any("module.evf_model." in n for n in ours.notes)
    assert detect_format(wrapped) == "mpgsam2"
    # ReferFormer's own state dict (main.py model_without_ddp) carries 'evf_model.'
    assert set(convert_mpgsam2({"evf_model." + k: v for k, v in fixture_sd.items()})) == set(ours)

    mixed = dict(wrapped)
    mixed["mask_linear.weight"] = fixture_sd["mask_linear.weight"]
    with pytest.raises(CheckpointError, match=r"prefix 'module.evf_model.'.*\n.*mask_linear.weight"):
        convert_mpgsam2(mixed)


def test_gamma_loaded_by_default_and_compat_option(fixture_sd: dict[str, Tensor]) -> None:
    gamma_keys = [k for k in fixture_sd if k.endswith(".gamma")]
    assert gamma_keys == [
        "visual_model.memory_encoder.fuser.layers.0.gamma",
        "visual_model.memory_encoder.fuser.layers.1.gamma",
    ]
    plain = convert_mpgsam2(fixture_sd)
    compat = convert_mpgsam2(fixture_sd, hf_gamma_compat=True)
    for k in gamma_keys:
        new = our_name(k)
        assert torch.equal(plain[new], fixture_sd[k])
        # the fixture's layer scales are noisy, so the replacement is visible
        assert not torch.allclose(fixture_sd[k], torch.full_like(fixture_sd[k], 1e-6))
        assert compat[new].shape == fixture_sd[k].shape and compat[new].dtype == fixture_sd[k].dtype
        assert torch.equal(compat[new], torch.full_like(fixture_sd[k], 1e-6))
    others = [k for k in plain if not k.endswith(".gamma")]
    assert all(compat[k] is plain[k] for k in others)
    assert not any("hf_gamma_compat" in n for n in plain.notes)
    note = next(n for n in compat.notes if "hf_gamma_compat" in n)
    assert "2 memory-encoder layer scale(s)" in note and "sam.memory_encoder.fuser.layers.0.gamma" in note


def test_evf_sam_weight_alias_for_gamma(fixture_sd: dict[str, Tensor]) -> None:
    renamed = {re.sub(r"(fuser\.layers\.\d+)\.gamma$", r"\1.weight", k): v for k, v in fixture_sd.items()}
    assert "visual_model.memory_encoder.fuser.layers.0.weight" in renamed
    ours = convert_mpgsam2(renamed)
    assert dict(ours) == dict(convert_mpgsam2(fixture_sd))
    assert any("EVF-SAM" in n for n in ours.notes)
    both = dict(fixture_sd)
    both["visual_model.memory_encoder.fuser.layers.0.weight"] = fixture_sd[
        "visual_model.memory_encoder.fuser.layers.0.gamma"
    ]
    with pytest.raises(CheckpointError, match="map to the same name"):
        convert_mpgsam2(both)


# ------------------------------------------------------------------------------------------------------- SAM 2


def test_sam2_official_key_lists_present(sam2_official: dict) -> None:
    expected = {f"sam2{v}_hiera_{s}" for v in ("", ".1") for s in ("tiny", "small", "base_plus", "large")}
    assert set(sam2_official) == expected
    # parameter + buffer counts of SAM2Base.state_dict() (2.1 adds obj_ptr_tpos_proj.{weight,bias}, no_obj_embed_spatial)
    counts = {k: len(v) for k, v in sam2_official.items()}
    assert counts["sam2_hiera_large"] == 900 and counts["sam2.1_hiera_large"] == 903
    assert counts["sam2_hiera_tiny"] == 468 and counts["sam2.1_hiera_tiny"] == 471


@pytest.mark.parametrize(
    "name", [f"sam2{v}_hiera_{s}" for v in ("", ".1") for s in ("tiny", "small", "base_plus", "large")]
)
def test_sam2_official_keys_convert_into_sam_namespace(sam2_official: dict, name: str) -> None:
    shapes = sam2_official[name]
    ours = convert_sam2(_meta(shapes))
    assert len(ours) == len(shapes)
    assert all(k.startswith("sam.") for k in ours)
    assert not any(k.startswith(MPG_DECODER_MODULES) for k in ours)
    assert {k: list(v.shape) for k, v in ours.items()} == {"sam." + k: s for k, s in shapes.items()}
    assert detect_format(_meta(shapes)) == "sam2"


def test_sam2_large_equals_fixture_large_minus_mpg_modules(sam2_official: dict, full_size: dict) -> None:
    shapes, _ = _manifest(full_size, "large")
    mpg_ours = {k: list(v.shape) for k, v in convert_mpgsam2(_meta(shapes)).items()}
    sam_part = {
        k: s for k, s in mpg_ours.items() if k.startswith("sam.") and not k.startswith(MPG_DECODER_MODULES)
    }
    official = {k: list(v.shape) for k, v in convert_sam2(_meta(sam2_official["sam2_hiera_large"])).items()}
    assert official == sam_part  # names and shapes
    assert list(official) == list(sam_part)  # and even the order


def test_sam2_into_full_model_declares_only_the_expected_gaps(sam2_official: dict, full_size: dict) -> None:
    shapes, buffers = _manifest(full_size, "large")
    ours = {k: list(v.shape) for k, v in convert_mpgsam2(_meta(shapes)).items()}
    model = _module_from_keys(ours, {our_name(b) for b in buffers})
    sd = convert_sam2(_meta(sam2_official["sam2_hiera_large"]))
    with pytest.raises(CheckpointError, match="pixel_global_fusion"):
        check_keys(model, sd, source="sam2_hiera_large.pt")
    report = check_keys(model, sd, source="sam2_hiera_large.pt", allow_missing=SAM2_CHECKPOINT_GAPS)
    assert report.ok and not report.expected_unexpected
    assert set(report.expected_missing) == set(ours) - set(sd)
    decoder = {k for k in report.expected_missing if k.startswith(MPG_DECODER_MODULES)}
    assert len(decoder) == 38
    assert all("SAM 2 mask decoder" in report.expected_missing[k] for k in decoder)
    # SAM 2.1 carries three tensors a SAM 2.0-semantics model lacks: reported, not dropped
    with pytest.raises(CheckpointError, match="obj_ptr_tpos_proj"):
        check_keys(
            model,
            convert_sam2(_meta(sam2_official["sam2.1_hiera_large"])),
            allow_missing=SAM2_CHECKPOINT_GAPS,
        )


def test_sam2_converter_rejects_foreign_keys(fixture_sd: dict[str, Tensor]) -> None:
    with pytest.raises(CheckpointError, match="convert_mpgsam2"):
        convert_sam2(fixture_sd, source="evf/model.safetensors")


# ------------------------------------------------------------------------------------------------------ BEiT-3


def test_beit3_official_checkpoint(full_size: dict) -> None:
    shapes, _ = _manifest(full_size, "large")
    beit = {k.removeprefix("mm_extractor."): s for k, s in shapes.items() if k.startswith("mm_extractor.")}
    d = beit["beit3.text_embed.weight"][1]
    ckpt = {
        **_meta(beit),
        **_meta(
            {
                "mim_head.weight": [8192, d],
                "mim_head.bias": [8192],
                "beit3.encoder.output_projection.weight": [64010, d],
            }
        ),
    }
    assert detect_format(ckpt) == "beit3"
    ours = convert_beit3(ckpt)
    assert set(ours) == set(beit) and all(ours[k] is ckpt[k] for k in beit)
    assert set(ours.ignored) == {"mim_head.weight", "mim_head.bias", "beit3.encoder.output_projection.weight"}
    assert all("pre-training" in r for r in ours.ignored.values())
    # the parameter count of the published pre-training checkpoint (746M) is the encoder plus these heads
    assert round(sum(torch.Size(s).numel() for s in beit.values()) / 1e6, 2) == 672.70
    assert int(sum(t.numel() for t in ckpt.values()) / 1e6) == 746

    full = {k: list(v.shape) for k, v in convert_mpgsam2(_meta(shapes)).items()}
    report = check_keys(_module_from_keys(full), ours, allow_missing=BEIT3_CHECKPOINT_GAPS)
    assert report.ok and set(report.expected_unexpected) == set(ours.ignored)
    assert set(report.expected_missing) == {k for k in full if not k.startswith("beit3.")}

    with pytest.raises(CheckpointError, match="vision_head.weight"):  # -itc variants carry other heads
        convert_beit3({**ckpt, "vision_head.weight": torch.empty(2, device="meta")})


# ------------------------------------------------------------------------------------------------------ loader


def test_load_into_copies_and_casts(tmp_path: Path) -> None:
    sd = _tiny_sd()
    path = tmp_path / "tiny.pt"
    torch.save({"model": {k: v.double() for k, v in sd.items()}}, path)
    m = Tiny()
    weight = m.proj.weight
    report = load_into(m, read_state_dict(path), source=str(path))
    assert report.ok and sorted(report.loaded) == sorted(sd)
    assert m.proj.weight is weight and m.proj.weight.dtype == torch.float32  # in place, dtype of the module
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=1e-7)
    assert any("torch.float64->torch.float32" in n for n in report.notes)


def test_missing_extra_and_wrong_shape_fail_naming_file_and_keys(tmp_path: Path) -> None:
    sd = _tiny_sd()
    del sd["norm.bias"]
    sd["head.weight"] = torch.zeros(5)
    sd["proj.weight"] = torch.zeros(3, 5)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    m = Tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_weights(m, path, fmt="native")
    msg = str(e.value)
    assert str(path) in msg and "Tiny" in msg
    assert "norm.bias" in msg and "head.weight" in msg
    assert "proj.weight: checkpoint [3, 5] vs model [3, 4]" in msg
    assert "1 missing, 1 unexpected, 1 wrong-shape" in msg
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # nothing copied


def test_load_weights_reads_a_train_checkpoint_and_load_checkpoint_is_its_alias(tmp_path: Path) -> None:
    """A train.py (Lightning) checkpoint is told apart by its .ckpt name: its ``model.`` weights load (what
    build_model(weights={"mpgsam2": "x.ckpt"}) uses); load_checkpoint, the deprecated name, does the same."""
    sd = {k: v + 1 for k, v in _tiny_sd().items()}
    path = tmp_path / "final.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 3}, path)
    for load in (load_weights, load_checkpoint):
        m = Tiny()
        report = load(m, path)
        assert report.ok and sorted(report.loaded) == sorted(sd)
        assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    torch.save({"state_dict": {"model.proj.weight": torch.zeros(3, 4)}}, path)
    with pytest.raises(CheckpointError, match=r"(?s)final\.ckpt.*norm\.weight"):
        load_weights(Tiny(), path)


def test_declared_gaps_with_reasons(tmp_path: Path) -> None:
    sd = _tiny_sd()
    del sd["norm.bias"], sd["norm.weight"]
    sd["extra.head.weight"] = torch.zeros(1)
    report = load_into(
        Tiny(),
        sd,
        source="mem",
        allow_missing=[("norm.*", "new layer")],
        allow_unexpected={"re:extra\\.(head|tail)\\.weight": "pre-training head"},
    )
    assert report.expected_missing == {"norm.weight": "new layer", "norm.bias": "new layer"}
    assert report.expected_unexpected == {"extra.head.weight": "pre-training head"}
    assert report.ok and "norm.bias" not in report.loaded
    # regular expressions are recognised by their syntax and applied with re.search
    for pattern in (r"^(?!proj\.)", re.compile(r"^norm\."), "re:norm", "norm.[wb]*"):
        rep = load_into(Tiny(), sd, source="mem", allow_missing=[pattern], allow_unexpected=[r"^extra\."])
        assert set(rep.expected_missing) == {"norm.weight", "norm.bias"}, pattern
        assert rep.expected_missing["norm.bias"].startswith("declared expected by the caller")
    with pytest.raises(CheckpointError, match="norm.weight"):  # a glob matches the whole key
        load_into(Tiny(), sd, source="mem", allow_missing=["norm"], allow_unexpected=["extra.*"])
    # a wrong shape can never be declared away
    sd["proj.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"proj.bias: checkpoint \[7\] vs model \[3\]"):
        load_into(Tiny(), sd, source="mem", allow_missing=["norm.*"], allow_unexpected=["*"])


def test_many_keys_listing_is_capped() -> None:
    big = nn.Sequential(*[nn.Linear(1, 1) for _ in range(40)])
    with pytest.raises(CheckpointError, match=r"\.\.\. and 55 more"):
        load_into(big, {}, source="empty.pt")


def test_meta_module_checks_keys_only() -> None:
    with torch.device("meta"):
        m = Tiny()
    report = load_into(m, _tiny_sd(), source="mem")
    assert report.ok and not report.loaded
    assert any("meta device" in n for n in report.notes)


def test_strip_prefix_for_submodules(tmp_path: Path) -> None:
    sd = {"sam." + k: v for k, v in _tiny_sd().items()}
    path = tmp_path / "sub.safetensors"
    save_file(sd, str(path))
    m = Tiny()
    report = load_weights(m, path, fmt="native", prefix="sam.")
    assert report.ok and len(report.loaded) == 5
    with pytest.raises(CheckpointError, match="lack the prefix 'sam.'"):
        strip_prefix({**sd, "beit3.x": torch.zeros(1)}, "sam.")


def test_full_fixture_checkpoint_through_hf_folder(
    tmp_path: Path, fixture_sd: dict[str, Tensor], full_size: dict
) -> None:
    """The fixture, saved as a sharded HF folder of the original, loads into a module with our names."""
    folder = tmp_path / "evf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "evf"}')
    keys = list(fixture_sd)
    shards = {"model-00001-of-00002.safetensors": keys[:200], "model-00002-of-00002.safetensors": keys[200:]}
    for name, ks in shards.items():
        save_file({k: fixture_sd[k].contiguous() for k in ks}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    ours = convert_mpgsam2(fixture_sd)
    model = _module_from_keys({k: list(v.shape) for k, v in ours.items()})
    model.to_empty(device="cpu")
    report = load_weights(model, folder, hf_gamma_compat=True)
    assert report.ok and len(report.loaded) == 465
    sdm = model.state_dict()
    assert all(torch.equal(sdm[k], v) for k, v in ours.items() if not k.endswith(".gamma"))
    assert torch.equal(
        sdm["sam.memory_encoder.fuser.layers.0.gamma"],
        torch.full_like(sdm["sam.memory_encoder.fuser.layers.0.gamma"], 1e-6),
    )
    assert any("hf_gamma_compat" in n for n in report.notes)


# ------------------------------------------------------------------------------------------------------ readers


def test_read_safetensors_and_pickles(tmp_path: Path) -> None:
    sd = _tiny_sd()
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save(sd, tmp_path / "b.pth")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "c.ckpt")
    torch.save(
        {"module": OrderedDict(sd), "buffer_names": ["table"], "ds_version": "0.14"}, tmp_path / "d.pt"
    )
    torch.save({"model": sd}, tmp_path / "e.pth.zip")  # BEiT-3 files are sometimes downloaded with .zip names
    torch.save(sd, tmp_path / "f.bin", _use_new_zipfile_serialization=False)
    for name in ("a.safetensors", "b.pth", "c.ckpt", "d.pt", "e.pth.zip", "f.bin"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd), name


def test_ambiguous_or_missing_state_dict(tmp_path: Path) -> None:
    sd = _tiny_sd()
    torch.save({"model": sd, "ema": sd}, tmp_path / "two.pt")
    with pytest.raises(CheckpointError, match=r"two\.pt.*ambiguous.*'model', 'ema'"):
        read_state_dict(tmp_path / "two.pt")
    torch.save({"model": {"a": torch.zeros(1), "b": None}}, tmp_path / "none.pt")
    with pytest.raises(
        CheckpointError, match=r"none\.pt.*'model' holds non-tensor entries: 'b' \(NoneType\)"
    ):
        read_state_dict(tmp_path / "none.pt")


class _Custom:
    def __init__(self) -> None:
        self.x = 1


def test_arbitrary_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"model": _tiny_sd(), "extra": _Custom()}, path)
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    msg = str(e.value)
    assert str(path) in msg and "refusing to load an arbitrary pickle" in msg and "weights_only=True" in msg
    assert "_Custom" in msg


def test_missing_corrupt_truncated_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    torch.save({"model": _tiny_sd()}, good)
    data = good.read_bytes()
    for name, blob in [
        ("trunc.pt", data[: len(data) // 2]),
        ("flip.pt", data[:40] + b"\0" * 64 + data[104:200]),
    ]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match=rf"{name}: corrupt or truncated torch checkpoint"):
            read_state_dict(tmp_path / name)
    legacy = tmp_path / "legacy.pt"
    torch.save(_tiny_sd(), legacy, _use_new_zipfile_serialization=False)
    blob = legacy.read_bytes()
    (tmp_path / "legacy_trunc.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="legacy_trunc.pt: corrupt or truncated"):
        read_state_dict(tmp_path / "legacy_trunc.pt")

    save_file(_tiny_sd(), str(tmp_path / "s.safetensors"))
    blob = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "s_trunc.safetensors").write_bytes(blob[: len(blob) - 20])
    with pytest.raises(CheckpointError, match="s_trunc.safetensors: corrupt or truncated safetensors"):
        read_state_dict(tmp_path / "s_trunc.safetensors")

    (tmp_path / "notes.pt").write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.pt: not a checkpoint"):
        read_state_dict(tmp_path / "notes.pt")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"config\.json: not a checkpoint"):
        read_state_dict(tmp_path / "config.json")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.bin: not a checkpoint \(empty file\)"):
        read_state_dict(tmp_path / "empty.bin")
    with pytest.raises(CheckpointError, match="refusing to read a URL"):
        read_state_dict("https://example.com/model.pt")


def _sharded_bin_folder(folder: Path, sd: dict[str, Tensor]) -> dict:
    folder.mkdir()
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[:2], "pytorch_model-00002-of-00002.bin": keys[2:]}
    for name, ks in shards.items():
        torch.save({k: sd[k] for k in ks}, folder / name)
    index = {"metadata": {"total_size": 0}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text("{}")
    return index


def test_hf_folders_single_and_sharded(tmp_path: Path) -> None:
    sd = _tiny_sd()
    single = tmp_path / "single"
    single.mkdir()
    save_file(sd, str(single / "model.safetensors"))
    torch.save({k: v * 0 for k, v in sd.items()}, single / "pytorch_model.bin")  # safetensors is preferred
    got = read_state_dict(single)
    assert all(torch.equal(got[k], sd[k]) for k in sd)

    index = _sharded_bin_folder(tmp_path / "sharded", sd)
    got = read_state_dict(tmp_path / "sharded")
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)

    # the index names a shard file that is not there
    bad = json.loads(json.dumps(index))
    bad["weight_map"]["proj.bias"] = "pytorch_model-00003-of-00002.bin"
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"index\.json: the index lists shard files that do not exist"):
        read_state_dict(tmp_path / "sharded")
    # a key of the index is not in the shard it names
    bad = json.loads(json.dumps(index))
    bad["weight_map"]["proj.missing"] = "pytorch_model-00001-of-00002.bin"
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"proj\.missing"):
        read_state_dict(tmp_path / "sharded")
    # a shard holds a key the index does not list
    bad = json.loads(json.dumps(index))
    del bad["weight_map"]["proj.bias"]
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"does not list there.*\n?.*proj\.bias"):
        read_state_dict(tmp_path / "sharded")
    # malformed JSON and a missing weight_map
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad index JSON"):
        read_state_dict(tmp_path / "sharded")
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="bad index JSON.*weight_map"):
        read_state_dict(tmp_path / "sharded")
    (tmp_path / "sharded" / "pytorch_model.bin.index.json").write_text('{"weight_map": {"a": "../x.bin"}}')
    with pytest.raises(CheckpointError, match="plain file names"):
        read_state_dict(tmp_path / "sharded")

    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="not an HF checkpoint folder"):
        read_state_dict(tmp_path / "empty_dir")


# ------------------------------------------------------------------------------- our model, full size, meta device

SAM2_CONFIG_NAMES = [
    f"sam2{v}_hiera_{s}" for v in ("", ".1") for s in ("tiny", "small", "base_plus", "large")
]


@pytest.mark.parametrize("name", SAM2_CONFIG_NAMES)
def test_official_sam2_keys_fit_our_model(name: str) -> None:
    from mpgsam2.modeling.mpgsam2 import MPGSAM2, MPGSAM2Config

    about = json.loads(SAM2_KEYS_JSON.read_text())
    config_file = about["configs"][name].rsplit("/", 1)[-1]
    with torch.device("meta"):
        model = MPGSAM2(MPGSAM2Config.from_presets("base", config_file))
    sd = convert_sam2(_meta(about["keys"][name]))
    report = check_keys(model, sd, source=f"{name}.pt", allow_missing=SAM2_CHECKPOINT_GAPS)
    assert report.ok and not report.expected_unexpected
    assert sum(k.startswith(MPG_DECODER_MODULES) for k in report.expected_missing) == 38


@pytest.mark.parametrize(
    ("size", "beit3", "sam2"),
    [("large", "large", "sam2_hiera_l.yaml"), ("tiny", "base", "sam2_hiera_t.yaml")],
)
def test_full_size_original_and_beit3_keys_fit_our_model(
    full_size: dict, size: str, beit3: str, sam2: str
) -> None:
    from mpgsam2.modeling.mpgsam2 import MPGSAM2, MPGSAM2Config

    with torch.device("meta"):
        model = MPGSAM2(MPGSAM2Config.from_presets(beit3, sam2))
    shapes, _ = _manifest(full_size, size)
    report = check_keys(model, convert_mpgsam2(_meta(shapes)), source=f"MPG-SAM 2 {size}")
    assert report.ok and not report.expected_missing and not report.expected_unexpected

    beit = {k.removeprefix("mm_extractor."): s for k, s in shapes.items() if k.startswith("mm_extractor.")}
    d = beit["beit3.text_embed.weight"][1]
    extras = {
        "mim_head.weight": [8192, d],
        "mim_head.bias": [8192],
        "beit3.encoder.output_projection.weight": [64010, d],
    }
    report = check_keys(model, convert_beit3(_meta({**beit, **extras})), allow_missing=BEIT3_CHECKPOINT_GAPS)
    assert report.ok and set(report.expected_unexpected) == set(extras)
