"""Build an ``MPGSAM2`` from plain configuration values (what ``conf/model/*.yaml`` instantiates).

The config tree names the BEiT-3 size by its constructor arguments, the SAM 2 size and version by the official
config file they correspond to, and the weights to start from. Nothing here imports Hydra: the function takes
plain values, so it is equally usable from Python.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpgsam2.modeling.beit3 import BEIT3_PRESETS
from mpgsam2.modeling.config import MPGSAM2Config
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.modeling.sam2.presets import SAM2_CONFIG_NAMES, SAM2_SIZES, merge_settings, sam2_model_config

__all__ = ["ConfigError", "beit3_config", "build_model", "model_config", "sam2_config_name"]

logger = logging.getLogger(__name__)

_SAM2_VERSIONS = {"2.0": "sam2", "2.1": "sam2.1"}
_WEIGHT_KINDS = ("mpgsam2", "beit3", "sam2")


class ConfigError(ValueError):
    """A configuration value is invalid (the message names the key and the accepted values)."""


def sam2_config_name(size: str, version: str) -> str:
    """The official SAM 2 config file for a size ("t", "s", "b+" or "l": the size tag of the official file names)
    and a version ("2.0" or "2.1"), e.g. ``sam2.1_hiera_b+.yaml``."""
    if str(version) not in _SAM2_VERSIONS:
        raise ConfigError(f"model.sam2.version={version!r}: expected one of {sorted(_SAM2_VERSIONS)}")
    if size not in SAM2_SIZES:
        raise ConfigError(f"model.sam2.size={size!r}: expected one of {', '.join(SAM2_SIZES)}")
    name = f"{_SAM2_VERSIONS[str(version)]}_hiera_{size}.yaml"
    assert name in SAM2_CONFIG_NAMES, name
    return name


def beit3_config(beit3: Mapping[str, Any]) -> dict[str, Any]:
    """BEiT-3 constructor arguments: ``{"preset": "base"|"large", ...}`` is the preset's numbers
    (``BEIT3_PRESETS``, the one place they are stated) with the other keys over them; without ``preset``, the
    mapping as given (e.g. the test model, ``conf/model/beit3/test.yaml``).

    Raises:
        ConfigError: an unknown preset.
    """
    beit3 = dict(beit3)
    preset = beit3.pop("preset", None)
    if preset is None:
        return beit3
    if preset not in BEIT3_PRESETS:
        raise ConfigError(f"model.beit3.preset={preset!r}: expected one of {sorted(BEIT3_PRESETS)}")
    return {**BEIT3_PRESETS[preset], **beit3}


def model_config(beit3: Mapping[str, Any], sam2: Mapping[str, object], **options: object) -> MPGSAM2Config:
    """The model configuration ``build_model`` builds (same arguments, without the weights).

    Raises:
        ConfigError: an unknown option, size, version or SAM 2 setting.
    """
    beit3 = beit3_config(beit3)
    sam2 = dict(sam2)
    unknown = set(sam2) - {"size", "version", "settings"}
    if unknown:
        hint = (
            " (model.sam2.overrides became model.sam2.settings, a nested mapping)"
            if "overrides" in unknown
            else ""
        )
        raise ConfigError(
            f"model.sam2 has unknown keys {sorted(unknown)}; expected size, version, settings{hint}"
        )
    name = sam2_config_name(str(sam2.get("size", "l")), str(sam2.get("version", "2.0")))
    try:
        sam2_dict = merge_settings(
            sam2_model_config(name), dict(sam2.get("settings") or {}), "model.sam2.settings"
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    fields = set(MPGSAM2Config.__dataclass_fields__) - {"beit3", "sam2", "extra"}
    bad = set(options) - fields
    if bad:
        raise ConfigError(f"unknown model option(s) {sorted(bad)}; known: {sorted(fields)}")
    config = MPGSAM2Config(beit3=beit3, sam2=sam2_dict, **options)  # type: ignore[arg-type]
    return config


def build_model(
    beit3: Mapping[str, Any],
    sam2: Mapping[str, object],
    weights: Mapping[str, str | None] | None = None,
    hf_gamma_compat: bool = False,
    compile: bool = False,
    **options: object,
) -> MPGSAM2:
    """Build MPG-SAM 2 and optionally initialise it from checkpoints.

    Args:
        beit3: ``BEiT3`` constructor arguments (embed_dim, num_heads, ffn_dim, num_layers, vocab_size,
            img_size, patch_size), or ``{"preset": "base"|"large", ...}`` (see :func:`beit3_config`).
        sam2: ``{"size": "t"|"s"|"b+"|"l", "version": "2.0"|"2.1", "settings": {nested mapping}}``: the official
            config of that size and version with ``settings`` deep-merged over it (e.g. the test model, or
            ``model.sam2.settings.memory_attention.num_layers=2``; see ``presets.merge_settings``).
        weights: ``{"mpgsam2": path, "beit3": path, "sam2": path}``, each optional. ``mpgsam2`` (a full model:
            a train.py ``.ckpt``, our export or a released MPG-SAM 2 checkpoint) excludes the other two, which are
            the original's training start (official BEiT-3 ``.pth`` and SAM 2 ``.pt``). Each is loaded by
            ``mpgsam2.weights.load_weights``, strictly.
        hf_gamma_compat: passed to the MPG-SAM 2 converter (see ``mpgsam2.weights.convert_mpgsam2``).
        compile: run the image encoder and memory attention through ``torch.compile``
            (:meth:`MPGSAM2.compile_for_inference`; a build option, not part of the model's config).
        **options: any other ``MPGSAM2Config`` field (``dropout``, the ``use_*`` ablation switches,
            ``freeze_image_encoder`` ...).

    Raises:
        ConfigError: an unknown option, size or version, or conflicting weights.
    """
    config = model_config(beit3, sam2, **options)
    try:
        model = MPGSAM2(config)
    except TypeError as err:  # a nested SAM 2 setting no module takes, e.g. memory_attention.layer.d_modle
        raise ConfigError(f"model.sam2.settings: a key no SAM 2 module takes ({err})") from None
    _load_weights(model, dict(weights or {}), hf_gamma_compat)
    if compile:
        model.compile_for_inference()
    return model


def _load_weights(model: MPGSAM2, weights: dict[str, str | None], hf_gamma_compat: bool) -> None:
    unknown = set(weights) - set(_WEIGHT_KINDS)
    if unknown:
        raise ConfigError(f"model.weights has unknown keys {sorted(unknown)}; expected {list(_WEIGHT_KINDS)}")
    given = {k: Path(v) for k, v in weights.items() if v}
    if "mpgsam2" in given and len(given) > 1:
        raise ConfigError("model.weights.mpgsam2 is a full model: leave model.weights.beit3/sam2 empty")
    from mpgsam2.weights import load_weights

    for kind in _WEIGHT_KINDS:  # full model first; BEiT-3 and SAM 2 fill disjoint parts
        if kind in given:
            # a full model is a train.py checkpoint (.ckpt, e.g. the RefCOCO stage that initialises the video
            # stages), our export or a released checkpoint: load_weights tells them apart
            fmt = "auto" if kind == "mpgsam2" else kind
            compat = hf_gamma_compat and kind == "mpgsam2"
            logger.info("%s", load_weights(model, given[kind], fmt=fmt, hf_gamma_compat=compat))
