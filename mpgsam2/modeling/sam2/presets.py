"""SAM 2 model configurations, as nested dicts mirroring the official Hydra YAML files (``model:`` section).

The values are facts read from facebookresearch/sam2's ``sam2_hiera_{t,s,b+,l}.yaml`` (SAM 2.0) and
``sam2.1_hiera_{t,s,b+,l}.yaml`` (SAM 2.1). Keys a YAML file leaves out take the constructor defaults of our
modules, which equal the official ones. ``apply_overrides`` understands the ``++model.a.b=value`` strings that
the original MPG-SAM 2 code passes to Hydra, so a released checkpoint's ``config.json`` rebuilds exactly.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping, Sequence
from typing import Any

from mpgsam2.modeling.sam2.image_encoder import HIERA_PRESETS, image_encoder_config

# The SAM 2 sizes, by the size tag of the official file names (sam2_hiera_<size>.yaml): the one name of a size.
# Their image-encoder sections (trunk + neck) live with the image encoder.
SAM2_SIZES: tuple[str, ...] = tuple(HIERA_PRESETS)


def _base_model(size: str) -> dict[str, Any]:
    return {
        "image_encoder": image_encoder_config(size),
        "memory_attention": {
            "d_model": 256,
            "pos_enc_at_input": True,
            "layer": {
                "activation": "relu",
                "dim_feedforward": 2048,
                "dropout": 0.1,
                "pos_enc_at_attn": False,
                "self_attention": {
                    "rope_theta": 10000.0,
                    "feat_sizes": [64, 64],
                    "embedding_dim": 256,
                    "num_heads": 1,
                    "downsample_rate": 1,
                    "dropout": 0.1,
                },
                "d_model": 256,
                "pos_enc_at_cross_attn_keys": True,
                "pos_enc_at_cross_attn_queries": False,
                "cross_attention": {
                    "rope_theta": 10000.0,
                    "feat_sizes": [64, 64],
                    "rope_k_repeat": True,
                    "embedding_dim": 256,
                    "num_heads": 1,
                    "downsample_rate": 1,
                    "dropout": 0.1,
                    "kv_in_dim": 64,
                },
            },
            "num_layers": 4,
        },
        "memory_encoder": {
            "out_dim": 64,
            "position_encoding": {
                "num_pos_feats": 64,
                "normalize": True,
                "scale": None,
                "temperature": 10000,
            },
            "mask_downsampler": {"kernel_size": 3, "stride": 2, "padding": 1},
            "fuser": {
                "layer": {
                    "dim": 256,
                    "kernel_size": 7,
                    "padding": 3,
                    "layer_scale_init_value": 1e-6,
                    "use_dwconv": True,
                },
                "num_layers": 2,
            },
        },
        "num_maskmem": 7,
        "image_size": 1024,
        "sigmoid_scale_for_mem_enc": 20.0,
        "sigmoid_bias_for_mem_enc": -10.0,
        "use_mask_input_as_output_without_sam": True,
        "directly_add_no_mem_embed": True,
        "use_high_res_features_in_sam": True,
        "multimask_output_in_sam": True,
        "iou_prediction_use_sigmoid": True,
        "use_obj_ptrs_in_encoder": True,
        "add_tpos_enc_to_obj_ptrs": False,
        "only_obj_ptrs_in_the_past_for_eval": True,
        "pred_obj_scores": True,
        "pred_obj_scores_mlp": True,
        "fixed_no_obj_ptr": True,
        "multimask_output_for_tracking": True,
        "use_multimask_token_for_obj_ptr": True,
        "multimask_min_pt_num": 0,
        "multimask_max_pt_num": 1,
        "use_mlp_for_obj_ptr_proj": True,
        "compile_image_encoder": False,
    }


def _sam21(model: dict[str, Any]) -> dict[str, Any]:
    model = copy.deepcopy(model)
    model.update(
        no_obj_embed_spatial=True,
        add_tpos_enc_to_obj_ptrs=True,
        proj_tpos_enc_in_obj_ptrs=True,
        use_signed_tpos_enc_to_obj_ptrs=True,
    )
    return model


SAM2_CONFIG_NAMES: tuple[str, ...] = tuple(
    [f"sam2_hiera_{s}.yaml" for s in SAM2_SIZES] + [f"sam2.1_hiera_{s}.yaml" for s in SAM2_SIZES]
)


def sam2_model_config(name: str) -> dict[str, Any]:
    """The ``model`` section of an official SAM 2 config, by file name (``sam2_hiera_l.yaml``,
    ``sam2.1_hiera_t.yaml``, with or without a ``configs/sam2.1/`` folder prefix)."""
    base = name.rsplit("/", 1)[-1]
    if not base.endswith(".yaml"):
        base = base + ".yaml"
    for version, builder in (("sam2.1_hiera_", _sam21), ("sam2_hiera_", lambda m: m)):
        if base.startswith(version):
            size = base[len(version) : -len(".yaml")]
            if size in SAM2_SIZES:
                return builder(_base_model(size))
    raise ValueError(f"unknown SAM 2 config {name!r}; known: {', '.join(SAM2_CONFIG_NAMES)}")


def _parse_value(text: str) -> Any:
    lowered = text.strip()
    if lowered in ("null", "None", "~"):
        return None
    if lowered in ("true", "True"):
        return True
    if lowered in ("false", "False"):
        return False
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError):
        return lowered


def merge_settings(
    model: dict[str, Any], settings: Mapping[str, Any], where: str = "settings"
) -> dict[str, Any]:
    """``model`` with the nested mapping ``settings`` deep-merged over it (a copy): a mapping merges into the
    mapping at its key, any other value replaces the value there. New keys may be added (the presets list only
    what the official yaml files state; the builder refuses a key its modules do not take).

    Raises:
        ValueError: a mapping given where the preset holds a plain value, or the reverse, naming the key.
    """
    out = copy.deepcopy(model)
    for key, value in settings.items():
        path = f"{where}.{key}"
        if isinstance(value, Mapping):
            current = out.get(key, {})
            if not isinstance(current, dict):
                raise ValueError(
                    f"{path}: a mapping, but the SAM 2 config holds a plain value there ({current!r})"
                )
            out[key] = merge_settings(current, value, path)
        elif isinstance(out.get(key), dict):
            raise ValueError(
                f"{path}={value!r}: the SAM 2 config holds a mapping there; set its keys instead"
            )
        else:
            out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """Lists and scalars of a config (e.g. OmegaConf's ListConfig) as plain Python values."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def apply_overrides(model: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply Hydra-style overrides (the form released ``config.json`` files use; configs use
    :func:`merge_settings`) (``++model.image_encoder.trunk.embed_dim=16``) to a ``model`` dict.

    ``++`` and ``+`` (add or set) and plain ``key=value`` (set an existing key) are accepted; a plain override of
    a key that does not exist is an error, as in Hydra.
    """
    model = copy.deepcopy(model)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        may_add = key.startswith("+")
        key = key.lstrip("+")
        parts = key.split(".")
        if parts[0] != "model":
            raise ValueError(f"override {item!r} must start with 'model.'")
        node = model
        for i, part in enumerate(parts[1:-1], start=1):
            if part not in node:
                if not may_add:
                    raise ValueError(f"override {item!r}: no key {'.'.join(parts[: i + 1])}")
                node[part] = {}
            node = node[part]
        if parts[-1] not in node and not may_add:
            raise ValueError(f"override {item!r}: no key {key}")
        node[parts[-1]] = _parse_value(value)
    return model
