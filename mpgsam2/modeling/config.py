"""Model configuration: one dataclass that fully describes an MPG-SAM 2 model, and readers for the original's
``config.json`` (released checkpoints) and for our own exported config."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpgsam2.modeling.beit3 import BEIT3_PRESETS
from mpgsam2.modeling.checkpointing import checkpointing_blocks
from mpgsam2.modeling.sam2.presets import apply_overrides, sam2_model_config

# BEiT-3 EncoderConfig attribute names (as in the original's config.json) -> our BEiT3 constructor names.
_BEIT_OVERRIDE_NAMES = {
    "encoder_embed_dim": "embed_dim",
    "encoder_attention_heads": "num_heads",
    "encoder_ffn_embed_dim": "ffn_dim",
    "encoder_layers": "num_layers",
    "vocab_size": "vocab_size",
    "img_size": "img_size",
    "patch_size": "patch_size",
    "max_source_positions": "max_text_positions",
    "layernorm_eps": "layernorm_eps",
}


@dataclass
class MPGSAM2Config:
    """Everything needed to build ``MPGSAM2``.

    beit3: BEiT3 constructor kwargs. sam2: a SAM 2 ``model`` config dict (official YAML layout).
    prior_num_heads / prior_ffn_dim / dropout: the mask-prior generator's global self-attention and the
    decoder fusion blocks (the original: 8 heads, FFN 4 x width, dropout 0.1).
    The ``use_*`` switches remove one component each, for the paper's ablations; all on is MPG-SAM 2.
    activation_checkpointing: block groups recomputed in backward when training (names of
    ``mpgsam2.modeling.checkpointing.ACTIVATION_CHECKPOINTING_BLOCKS``): less activation memory, the same
    gradients; empty (the default, and what a config stored without the key means) keeps every activation.
    """

    beit3: dict[str, Any]
    sam2: dict[str, Any]
    prior_num_heads: int = 8
    prior_ffn_dim: int | None = None
    dropout: float = 0.1
    fusion_ffn_dim: int = 1024
    fusion_num_heads: int = 8
    use_dense_prior: bool = True
    use_sparse_token: bool = True
    use_global_pixel_attention: bool = True
    use_pixel_global_fusion: bool = True
    use_object_global_fusion: bool = True
    use_object_historical_fusion: bool = True
    freeze_image_encoder: bool = True
    memory_storage_dtype: str | None = "bfloat16"
    activation_checkpointing: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a plain list whatever sequence came in (e.g. Hydra's ListConfig): the config is stored in checkpoints
        self.activation_checkpointing = checkpointing_blocks(self.activation_checkpointing)

    @property
    def beit_dim(self) -> int:
        return int(self.beit3["embed_dim"])

    @property
    def sam_dim(self) -> int:
        return int(self.sam2["memory_attention"]["d_model"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MPGSAM2Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown MPGSAM2Config keys: {', '.join(unknown)}")
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_presets(
        cls,
        beit3: str = "large",
        sam2: str = "sam2_hiera_l.yaml",
        **kwargs: Any,
    ) -> MPGSAM2Config:
        """E.g. ``from_presets("base", "sam2.1_hiera_t.yaml")``."""
        if beit3 not in BEIT3_PRESETS:
            raise ValueError(f"unknown BEiT-3 preset {beit3!r}; known: {', '.join(BEIT3_PRESETS)}")
        return cls(beit3=dict(BEIT3_PRESETS[beit3]), sam2=sam2_model_config(sam2), **kwargs)


def config_from_original(hf_config: dict[str, Any], source: str = "config.json") -> MPGSAM2Config:
    """Build the config of a released MPG-SAM 2 checkpoint from its ``config.json`` (``model_type: evf``).

    Understands ``mm_extractor_scale`` (base/large), ``hidden_size``, ``out_dim`` and, as written by the parity
    fixtures, ``beit_overrides`` (EncoderConfig attributes), ``sam2_config_name`` and ``sam2_hydra_overrides``.
    The original always built ``sam2_hiera_l.yaml`` (SAM 2.0), which is the default here.
    """
    scale = hf_config.get("mm_extractor_scale")
    if scale not in ("base", "large"):
        raise ValueError(f"{source}: 'mm_extractor_scale' must be 'base' or 'large', got {scale!r}")
    beit3 = dict(BEIT3_PRESETS[scale])
    for key, value in (hf_config.get("beit_overrides") or {}).items():
        if key not in _BEIT_OVERRIDE_NAMES:
            raise ValueError(f"{source}: unsupported BEiT-3 override {key!r}")
        beit3[_BEIT_OVERRIDE_NAMES[key]] = value
    hidden = hf_config.get("hidden_size", beit3["embed_dim"])
    if hidden != beit3["embed_dim"]:
        raise ValueError(f"{source}: hidden_size {hidden} differs from the BEiT-3 width {beit3['embed_dim']}")
    sam2 = apply_overrides(
        sam2_model_config(hf_config.get("sam2_config_name", "sam2_hiera_l.yaml")),
        list(hf_config.get("sam2_hydra_overrides") or []),
    )
    config = MPGSAM2Config(beit3=beit3, sam2=sam2)
    out_dim = hf_config.get("out_dim", config.sam_dim)
    if out_dim != config.sam_dim:
        raise ValueError(f"{source}: out_dim {out_dim} differs from the SAM 2 width {config.sam_dim}")
    return config


def load_config_file(path: str | Path) -> MPGSAM2Config:
    """Read a config JSON: ours (``{"mpgsam2_config": ...}``) or the original's (``model_type: evf``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: config file not found") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if "mpgsam2_config" in data:
        return MPGSAM2Config.from_dict(data["mpgsam2_config"])
    if "hf_config_json" in data:  # a parity fixture's config.json carries the checkpoint's config inside
        data = data["hf_config_json"]
    if data.get("model_type") == "evf" or "mm_extractor_scale" in data:
        return config_from_original(data, source=str(path))
    raise ValueError(f"{path}: neither an mpgsam2 config nor an MPG-SAM 2 (model_type 'evf') config")
