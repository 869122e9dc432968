"""Tests for SAM 2's memory encoder and memory attention: fixture parity, memory assembly, key layout."""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mpgsam2.modeling.sam2.memory_attention import MemoryAttention, build_memory_attention
from mpgsam2.modeling.sam2.memory_encoder import CXBlock, MemoryEncoder, build_memory_encoder
from mpgsam2.modeling.sam2.position_encoding import PositionEmbeddingSine
from mpgsam2.modeling.sam2.presets import sam2_model_config
from mpgsam2.parity import DEFAULT_FIXTURE

FIXTURE = DEFAULT_FIXTURE
ATOL = 1e-5

# Memory sections of sam2_hiera_l.yaml (the layout of the released large checkpoint).
# The official SAM 2.0 Hiera-L sections (one source: the presets).
LARGE_MEMORY_ATTENTION = sam2_model_config("sam2_hiera_l.yaml")["memory_attention"]
LARGE_MEMORY_ENCODER = sam2_model_config("sam2_hiera_l.yaml")["memory_encoder"]


def _strip(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "_target_"}


@cache
def _fixture() -> dict:
    if not (FIXTURE / "config.json").is_file():
        pytest.fail(f"parity fixture not found at {FIXTURE}")
    from safetensors.torch import load_file

    cfg = json.loads((FIXTURE / "config.json").read_text())["sam2_config_resolved"]
    state = load_file(str(FIXTURE / "state_dict.safetensors"))
    outputs = torch.load(FIXTURE / "outputs.pt", weights_only=True)
    return {"cfg": cfg, "state": state, "out": outputs}


def _sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@cache
def _modules() -> tuple[MemoryEncoder, MemoryAttention]:
    fx = _fixture()
    enc = build_memory_encoder(fx["cfg"]["memory_encoder"])
    att = build_memory_attention(fx["cfg"]["memory_attention"])
    enc.load_state_dict(_sub(fx["state"], "visual_model.memory_encoder."), strict=True)
    att.load_state_dict(_sub(fx["state"], "visual_model.memory_attention."), strict=True)
    return enc.eval(), att.eval()


def _encode(prefix: str, t: int) -> torch.Tensor:
    """Memory of frame t as SAM 2's _encode_new_memory computes it (fp32, before the bf16 storage cast)."""
    fx = _fixture()
    cfg, out = fx["cfg"], fx["out"]
    enc, _ = _modules()
    size = cfg["image_size"]
    level2 = out[prefix + "sam.backbone_feats.level2"][t]  # [HW, B, C], raw backbone feature
    hw, b, c = level2.shape
    h = w = int(round(hw**0.5))
    pix_feat = level2.permute(1, 2, 0).reshape(b, c, h, w)
    logits = out[prefix + "sam.lowres_mask_logits"][t]  # [B, 1, S/4, S/4]
    high_res = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    mask = torch.sigmoid(high_res) * cfg["sigmoid_scale_for_mem_enc"] + cfg["sigmoid_bias_for_mem_enc"]
    with torch.no_grad():
        result = enc(pix_feat, mask, skip_mask_sigmoid=True)
    assert len(result["vision_pos_enc"]) == 1
    assert result["vision_pos_enc"][0].shape == result["vision_features"].shape
    return result["vision_features"]


def _seq(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [HW, B, C]."""
    return x.flatten(2).permute(2, 0, 1)


def _assemble_memory(prefix: str, frame: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The memory of ``frame`` as SAM2Base._prepare_memory_conditioned_features builds it (frame 0 = cond frame).

    Returns memory [M, B, Cm] (float32 holding bf16-rounded spatial memories), its position encoding and the
    number of object-pointer tokens at its end.
    """
    fx = _fixture()
    cfg, out, state = fx["cfg"], fx["out"], fx["state"]
    enc, _ = _modules()
    num_maskmem = cfg["num_maskmem"]
    tpos = state["visual_model.maskmem_tpos_enc"]  # [num_maskmem, 1, 1, Cm]
    num_frames = out[prefix + "sam.backbone_feats.level2"].shape[0]
    stored = {0: out[prefix + "sam.cond_frame_maskmem_features.frame0"]}  # bf16 as stored
    for t in range(1, frame):
        stored[t] = out[prefix + f"sam.maskmem_features.frame{t}"].to(torch.bfloat16)
    spatial_pe = _seq(enc.position_encoding(stored[0].float()))  # same for every frame

    # Conditioning frame first (t_pos 0 -> tpos[num_maskmem - 1]), then the previous non-conditioning frames
    # oldest first: frame - k gets tpos[k - 1] (k = 1 .. num_maskmem - 1), skipping frames < 1.
    mems = [_seq(stored[0])]
    pos = [spatial_pe + tpos[num_maskmem - 1]]
    for t_pos in range(1, num_maskmem):
        prev = frame - (num_maskmem - t_pos)
        if prev >= 1:
            mems.append(_seq(stored[prev]))
            pos.append(spatial_pe + tpos[num_maskmem - t_pos - 1])

    # Object pointers: cond frame, then frame-1, frame-2, ... (up to min(T, max_obj_ptrs) - 1 of them),
    # each split into C / Cm tokens; zero position (add_tpos_enc_to_obj_ptrs is false).
    assert not cfg["add_tpos_enc_to_obj_ptrs"]
    obj_ptr = out[prefix + "sam.obj_ptr"]  # [T, B, C]
    max_ptrs = min(num_frames, cfg.get("max_obj_ptrs_in_encoder", 16))
    ptr_frames = [0] + [frame - d for d in range(1, max_ptrs) if frame - d >= 1]
    ptrs = torch.stack([obj_ptr[t] for t in ptr_frames], dim=0)  # [n, B, C]
    n, b, c = ptrs.shape
    mem_dim = tpos.shape[-1]
    ptrs = ptrs.reshape(n, b, c // mem_dim, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
    mems.append(ptrs)
    pos.append(ptrs.new_zeros(ptrs.shape))
    # parity: torch.cat promotes the bf16 spatial memories to float32.
    return torch.cat(mems, dim=0), torch.cat(pos, dim=0), ptrs.shape[0]


def _condition(prefix: str, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    fx = _fixture()
    cfg, out = fx["cfg"], fx["out"]
    _, att = _modules()
    level2 = out[prefix + "sam.backbone_feats.level2"][frame]  # [HW, B, C]
    hw, b, c = level2.shape
    h = w = int(round(hw**0.5))
    neck_pe = PositionEmbeddingSine(**_strip(cfg["image_encoder"]["neck"]["position_encoding"]))
    curr_pos = _seq(neck_pe(torch.zeros(b, c, h, w)))
    memory, memory_pos, num_ptr_tokens = _assemble_memory(prefix, frame)
    with torch.no_grad():
        result = att(
            curr=[level2],
            curr_pos=[curr_pos],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_ptr_tokens,
        )
    assert result.shape == level2.shape
    return result.permute(1, 2, 0).reshape(b, c, h, w), out[prefix + "sam.pix_feat_with_mem"][frame]


def _frames(prefix: str) -> list[int]:
    return list(range(_fixture()["out"][prefix + "sam.backbone_feats.level2"].shape[0]))


@pytest.mark.parametrize("prefix", ["", "train."])
def test_cond_frame_memory_matches_fixture(prefix: str) -> None:
    ref = _fixture()["out"][prefix + "sam.cond_frame_maskmem_features.frame0"]
    mem = _encode(prefix, 0)
    assert ref.dtype == torch.bfloat16
    # Same fp32 value up to bf16 rounding; a value on a rounding boundary may move by one bf16 step.
    diff = (mem.to(torch.bfloat16).float() - ref.float()).abs()
    step = ref.float().abs().clamp_min(1e-3) * 2**-7
    assert bool((diff <= step).all())
    assert (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("prefix", ["", "train."])
def test_frame_memories_match_fixture(prefix: str) -> None:
    out = _fixture()["out"]
    for t in _frames(prefix)[1:]:
        key = prefix + f"sam.maskmem_features.frame{t}"
        if key not in out:
            continue
        torch.testing.assert_close(_encode(prefix, t), out[key], atol=ATOL, rtol=0)


@pytest.mark.parametrize("prefix", ["", "train."])
@pytest.mark.parametrize("math_kernel", [False, True])
def test_memory_conditioned_features_match_fixture(prefix: str, math_kernel: bool) -> None:
    out = _fixture()["out"]
    frames = [
        t
        for t in _frames(prefix)[1:]
        if all(f"{prefix}sam.maskmem_features.frame{s}" in out for s in range(1, t))
    ]
    assert frames and frames[0] == 1
    for t in frames:
        # parity: the original runs SDPA on the CPU under a context that disables the flash kernel (math only).
        if math_kernel:
            with sdpa_kernel([SDPBackend.MATH]):
                got, ref = _condition(prefix, t)
        else:
            got, ref = _condition(prefix, t)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_first_frame_uses_no_mem_embed() -> None:
    fx = _fixture()
    out, no_mem = fx["out"], fx["state"]["visual_model.no_mem_embed"]
    level2 = out["sam.backbone_feats.level2"][0]
    hw, b, c = level2.shape
    h = w = int(round(hw**0.5))
    got = (level2 + no_mem).permute(1, 2, 0).reshape(b, c, h, w)
    torch.testing.assert_close(got, out["sam.pix_feat_with_mem"][0], atol=0, rtol=0)


def test_skip_mask_sigmoid_and_position_encoding() -> None:
    enc, _ = _modules()
    cfg = _fixture()["cfg"]
    size = cfg["image_size"]
    c = cfg["memory_encoder"]["in_dim"]
    g = torch.Generator().manual_seed(0)
    # the memory encoder works at the mask downsampler's total stride (16 unless the config says otherwise)
    h = size // cfg["memory_encoder"]["mask_downsampler"].get("total_stride", 16)
    pix = torch.randn(2, c, h, h, generator=g)
    logits = torch.randn(2, 1, size, size, generator=g)
    with torch.no_grad():
        a = enc(pix, logits)
        b = enc(pix, torch.sigmoid(logits), skip_mask_sigmoid=True)
    torch.testing.assert_close(a["vision_features"], b["vision_features"], atol=0, rtol=0)
    assert a["vision_features"].shape == (2, cfg["memory_encoder"]["out_dim"], h, h)
    # the spatial encoding depends on the grid only, not on the batch element or the mask
    pe = a["vision_pos_enc"][0]
    torch.testing.assert_close(pe[0], pe[1], atol=0, rtol=0)


def test_obj_ptr_tokens_are_not_rotated() -> None:
    """Object-pointer tokens at the end of memory get no RoPE: permuting them leaves the output unchanged,
    while permuting spatial memory tokens (which are rotated by their grid position) does not."""
    _, att = _modules()
    cfg = _fixture()["cfg"]
    d = cfg["memory_attention"]["d_model"]
    dm = cfg["memory_attention"]["layer"]["cross_attention"]["kv_in_dim"]
    hw = cfg["memory_attention"]["layer"]["self_attention"]["feat_sizes"]
    n_sp = hw[0] * hw[1]
    g = torch.Generator().manual_seed(1)
    curr, curr_pos = torch.randn(n_sp, 1, d, generator=g), torch.randn(n_sp, 1, d, generator=g)
    memory, memory_pos = torch.randn(n_sp + 6, 1, dm, generator=g), torch.randn(n_sp + 6, 1, dm, generator=g)
    perm = torch.cat([torch.arange(n_sp), n_sp + torch.tensor([5, 2, 0, 4, 1, 3])])
    perm_spatial = torch.cat([torch.randperm(n_sp, generator=g), n_sp + torch.arange(6)])
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        a = att(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=6)
        b = att(curr, memory[perm], curr_pos, memory_pos[perm], num_obj_ptr_tokens=6)
        c = att(curr, memory[perm_spatial], curr_pos, memory_pos[perm_spatial], num_obj_ptr_tokens=6)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_gamma_is_a_parameter_named_gamma() -> None:
    block = CXBlock(dim=8, layer_scale_init_value=1e-6)
    params = dict(block.named_parameters())
    assert "gamma" in params and isinstance(block.gamma, torch.nn.Parameter)
    assert params["gamma"].shape == (8,) and torch.all(params["gamma"] == 1e-6)
    assert "gamma" in block.state_dict()
    assert CXBlock(dim=8, layer_scale_init_value=0.0).gamma is None
    enc, _ = _modules()
    assert any(k.endswith(".gamma") for k, _ in enc.named_parameters())


def test_dropout_and_train_mode_do_not_change_eval_free_path() -> None:
    """With dropout probabilities forced to 0, train mode computes the same function (as the fixture's train step)."""
    cfg = _fixture()["cfg"]
    att = build_memory_attention(cfg["memory_attention"])
    for m in att.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout_p"):
            m.dropout_p = 0.0
    d = cfg["memory_attention"]["d_model"]
    dm = cfg["memory_attention"]["layer"]["cross_attention"]["kv_in_dim"]
    g = torch.Generator().manual_seed(2)
    curr, memory = torch.randn(64, 2, d, generator=g), torch.randn(72, 2, dm, generator=g)
    cp, mp = torch.randn(64, 2, d, generator=g), torch.randn(72, 2, dm, generator=g)
    a = att.train()(curr, memory, cp, mp, num_obj_ptr_tokens=8)
    b = att.eval()(curr, memory, cp, mp, num_obj_ptr_tokens=8)
    torch.testing.assert_close(a.detach(), b.detach(), atol=0, rtol=0)
    a.sum().backward()
    assert all(p.grad is not None for p in att.parameters())
    # inference (no autograd) runs the fused attention kernel: the same function up to float rounding
    with torch.no_grad():
        fused = att.eval()(curr, memory, cp, mp, num_obj_ptr_tokens=8)
    torch.testing.assert_close(fused, b.detach(), atol=1e-5, rtol=1e-5)


def _expected_keys(prefix: str) -> dict[str, list[int]]:
    path = FIXTURE / "full_size_keys.json"
    if not path.is_file():
        pytest.fail(f"full_size_keys.json not found at {path}")
    entries = json.loads(path.read_text())["large"]["entries"]
    return {e["key"][len(prefix) :]: e["shape"] for e in entries if e["key"].startswith(prefix)}


@pytest.mark.parametrize(
    ("prefix", "builder", "cfg"),
    [
        ("visual_model.memory_attention.", build_memory_attention, LARGE_MEMORY_ATTENTION),
        ("visual_model.memory_encoder.", build_memory_encoder, LARGE_MEMORY_ENCODER),
    ],
)
def test_full_size_keys_and_shapes(prefix: str, builder, cfg: dict) -> None:
    expected = _expected_keys(prefix)
    with torch.device("meta"):
        module = builder(cfg)
    got = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert got == expected


def test_builders_ignore_targets() -> None:
    cfg = _fixture()["cfg"]
    enc = build_memory_encoder(cfg["memory_encoder"])
    enc_plain = build_memory_encoder(json.loads(json.dumps(cfg["memory_encoder"]), object_hook=_strip))
    assert enc.state_dict().keys() == enc_plain.state_dict().keys()
    # the config dicts are not consumed by the builders
    assert "layer" in cfg["memory_attention"] and "fuser" in cfg["memory_encoder"]


def test_one_frame_for_several_targets_self_attends_once() -> None:
    """Inference with ``shared_frame``: curr / curr_pos one frame for the batch (predict_video's K expressions):
    the first layer's self-attention runs on one row, and the output equals the batch computed row by row. Without
    the flag nothing is shared, whatever the strides; in train mode the flag is refused."""
    cfg = _fixture()["cfg"]
    att = build_memory_attention(cfg["memory_attention"]).eval()
    d = cfg["memory_attention"]["d_model"]
    dm = cfg["memory_attention"]["layer"]["cross_attention"]["kv_in_dim"]
    g = torch.Generator().manual_seed(4)
    frame, frame_pos = torch.randn(64, 1, d, generator=g), torch.randn(64, 1, d, generator=g)
    memory, memory_pos = torch.randn(72, 3, dm, generator=g), torch.randn(72, 3, dm, generator=g)
    batches = []
    att.layers[0].self_attn.register_forward_hook(lambda m, args, out: batches.append(out.shape[0]))
    with torch.no_grad():
        shared = att(
            frame.expand(-1, 3, -1),
            memory,
            frame_pos.expand(-1, 3, -1),
            memory_pos,
            num_obj_ptr_tokens=8,
            shared_frame=True,
        )
        assert batches == [1]
        plain = att(frame.expand(-1, 3, -1), memory, frame_pos.expand(-1, 3, -1), memory_pos, 8)
        assert batches == [1, 3]  # expanded (stride 0) but not declared shared: computed per row
        rows = [att(frame, memory[:, i : i + 1], frame_pos, memory_pos[:, i : i + 1], 8) for i in range(3)]
        with pytest.raises(ValueError, match="shared_frame is for inference"):
            # train mode: dropout draws per row, so nothing may be shared
            att.train()(frame.expand(-1, 3, -1), memory, frame_pos.expand(-1, 3, -1), memory_pos, 8, True)
        att.eval()
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared, torch.cat(rows, dim=1), atol=1e-5, rtol=1e-5)


def test_one_frame_for_several_masks_projects_the_frame_once() -> None:
    """The memory encoder on one frame's feature for B masks (``shared_frame``, predict_video's K expressions)
    projects the feature once and gives the memories of the feature copied per row."""
    enc, _ = _modules()
    cfg = _fixture()["cfg"]
    size, c = cfg["image_size"], cfg["memory_encoder"]["in_dim"]
    h = size // cfg["memory_encoder"]["mask_downsampler"].get("total_stride", 16)
    g = torch.Generator().manual_seed(5)
    pix = torch.randn(1, c, h, h, generator=g)
    masks = torch.randn(3, 1, size, size, generator=g)
    rows = []
    enc.pix_feat_proj.register_forward_hook(lambda m, args, out: rows.append(out.shape[0]))
    with torch.no_grad():
        shared = enc(pix.expand(3, -1, -1, -1), masks, shared_frame=True)["vision_features"]
        copied = enc(pix.repeat(3, 1, 1, 1), masks)["vision_features"]
        enc(pix.expand(3, -1, -1, -1), masks)  # not declared shared: projected per row, whatever the strides
    assert rows == [1, 3, 3]
    torch.testing.assert_close(shared, copied, atol=1e-5, rtol=1e-5)
