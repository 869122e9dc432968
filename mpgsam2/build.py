"""Build an ``MPGSAM2`` from plain configuration values (what ``conf/model/*.yaml`` instantiates).

The config tree names the BEiT-3 size by its constructor arguments, the SAM 2 size and version by the official
config file they correspond to, and the weights to start from. Nothing here imports Hydra: the function takes
plain values, so it is equally usable from Python.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mpgsam2.modeling.config import MPGSAM2Config
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.modeling.sam2.presets import SAM2_CONFIG_NAMES, apply_overrides, sam2_model_config

__all__ = ["ConfigError", "build_model", "sam2_config_name"]

logger = logging.getLogger(__name__)

_SAM2_SIZES = {
    "tiny": "t",
    "small": "s",
    "base_plus": "b+",
    "large": "l",
    "t": "t",
    "s": "s",
    "b+": "b+",
    "l": "l",
}
_SAM2_VERSIONS = {"2.0": "sam2", "2.1": "sam2.1"}
_WEIGHT_KINDS = ("mpgsam2", "beit3", "sam2")


class ConfigError(ValueError):
    """A configuration value is invalid (the message names the key and the accepted values)."""


def sam2_config_name(size: str, version: str) -> str:
    """The official SAM 2 config file for a size ("t", "s", "b+", "l" or tiny/small/base_plus/large) and a
    version ("2.0" or "2.1"), e.g. ``sam2.1_hiera_b+.yaml``."""
    if str(version) not in _SAM2_VERSIONS:
        raise ConfigError(f"model.sam2.version={version!r}: expected one of {sorted(_SAM2_VERSIONS)}")
    if size not in _SAM2_SIZES:
        raise ConfigError(f"model.sam2.size={size!r}: expected one of {sorted(set(_SAM2_SIZES))}")
    name = f"{_SAM2_VERSIONS[str(version)]}_hiera_{_SAM2_SIZES[size]}.yaml"
    assert name in SAM2_CONFIG_NAMES, name
    return name


def build_model(
    beit3: Mapping[str, int],
    sam2: Mapping[str, object],
    weights: Mapping[str, str | None] | None = None,
    hf_gamma_compat: bool = False,
    **options: object,
) -> MPGSAM2:
    """Build MPG-SAM 2 and optionally initialise it from checkpoints.

    Args:
        beit3: ``BEiT3`` constructor arguments (embed_dim, num_heads, ffn_dim, num_layers, vocab_size,
            img_size, patch_size).
        sam2: ``{"size": "t"|"s"|"b+"|"l", "version": "2.0"|"2.1", "overrides": ["++model.key=value", ...],
            "settings": {"dotted.key": value}}``; both edit the official config (e.g. the tiny test size),
            ``settings`` after ``overrides`` (a dict, so an experiment can change one key without restating
            the size's list).
        weights: ``{"mpgsam2": path, "beit3": path, "sam2": path}``, each optional. ``mpgsam2`` (a full model:
            a train.py ``.ckpt``, our export or a released MPG-SAM 2 checkpoint) excludes the other two, which are the original's
            training start (official BEiT-3 ``.pth`` and SAM 2 ``.pt``). Loading is strict: see
            ``mpgsam2.weights``.
        hf_gamma_compat: passed to the MPG-SAM 2 converter (see ``mpgsam2.weights.convert_mpgsam2``).
        **options: any other ``MPGSAM2Config`` field (``dropout``, the ``use_*`` ablation switches,
            ``freeze_image_encoder`` ...).

    Raises:
        ConfigError: an unknown option, size or version, or conflicting weights.
    """
    sam2 = dict(sam2)
    unknown = set(sam2) - {"size", "version", "overrides", "settings"}
    if unknown:
        raise ConfigError(
            f"model.sam2 has unknown keys {sorted(unknown)}; expected size, version, overrides, settings"
        )
    name = sam2_config_name(str(sam2.get("size", "l")), str(sam2.get("version", "2.0")))
    overrides = [str(o) for o in sam2.get("overrides") or ()]
    overrides += [f"++model.{k}={_yaml_value(v)}" for k, v in dict(sam2.get("settings") or {}).items()]
    sam2_dict = apply_overrides(sam2_model_config(name), overrides)
    fields = set(MPGSAM2Config.__dataclass_fields__) - {"beit3", "sam2", "extra"}
    bad = set(options) - fields
    if bad:
        raise ConfigError(f"unknown model option(s) {sorted(bad)}; known: {sorted(fields)}")
    config = MPGSAM2Config(beit3=dict(beit3), sam2=sam2_dict, **options)  # type: ignore[arg-type]
    model = MPGSAM2(config)
    _load_weights(model, dict(weights or {}), hf_gamma_compat)
    return model


def _load_lightning_checkpoint(model: MPGSAM2, path: Path) -> object:
    from mpgsam2.weights import load_into
    from mpgsam2.weights.checkpoints import read_train_checkpoint

    return load_into(model, read_train_checkpoint(path).state_dict, source=str(path))


def _yaml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _load_weights(model: MPGSAM2, weights: dict[str, str | None], hf_gamma_compat: bool) -> None:
    unknown = set(weights) - set(_WEIGHT_KINDS)
    if unknown:
        raise ConfigError(f"model.weights has unknown keys {sorted(unknown)}; expected {list(_WEIGHT_KINDS)}")
    given = {k: Path(v) for k, v in weights.items() if v}
    if "mpgsam2" in given and len(given) > 1:
        raise ConfigError("model.weights.mpgsam2 is a full model: leave model.weights.beit3/sam2 empty")
    from mpgsam2.weights import load_checkpoint

    if "mpgsam2" in given and given["mpgsam2"].suffix == ".ckpt":
        # a train.py (Lightning) checkpoint, e.g. the RefCOCO stage that initialises the video stages
        logger.info("%s", _load_lightning_checkpoint(model, given["mpgsam2"]))
        return
    for kind in _WEIGHT_KINDS:  # full model first; BEiT-3 and SAM 2 fill disjoint parts
        if kind in given:
            fmt = "auto" if kind == "mpgsam2" else kind
            compat = hf_gamma_compat and kind == "mpgsam2"
            logger.info("%s", load_checkpoint(model, given[kind], fmt=fmt, hf_gamma_compat=compat))
