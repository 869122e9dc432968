"""One LightningDataModule per dataset, thin over ``mpgsam2.data`` (no parsing happens here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data_modules.base import ReferringVideoDataModule
from data_modules.davis import RefDAVISDataModule
from data_modules.mevis import MeViSDataModule
from data_modules.refcoco import RefCOCODataModule
from data_modules.synthetic import SyntheticDataModule
from data_modules.ytvos import RefYTVOSDataModule

__all__ = [
    "DATA_MODULES",
    "MeViSDataModule",
    "RefCOCODataModule",
    "RefDAVISDataModule",
    "RefYTVOSDataModule",
    "ReferringVideoDataModule",
    "SyntheticDataModule",
    "UnsafeConfigError",
    "checked_data_config",
]

# the `_target_`s a data config read from a file (a checkpoint's stored run config) may name
DATA_MODULES: dict[str, type[ReferringVideoDataModule]] = {
    f"{cls.__module__}.{cls.__qualname__}": cls
    for cls in (
        SyntheticDataModule,
        RefYTVOSDataModule,
        MeViSDataModule,
        RefDAVISDataModule,
        RefCOCODataModule,
    )
}
# the keys through which Hydra's instantiate would import, call or reinterpret something
_INSTANTIATE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


class UnsafeConfigError(ValueError):
    """A configuration read from a file asks for something other than plain data (the message names the file
    and the key)."""


def checked_data_config(data: Any, source: str) -> dict[str, Any]:
    """A data config read from ``source`` (e.g. a checkpoint), checked to be data before it is instantiated.

    Its ``_target_`` must be one of :data:`DATA_MODULES`; no other value anywhere in it may be an instantiation
    key (``_target_``, ``_partial_``, ...) or an interpolation (``${...}``): nested values stay plain values.

    Returns:
        A plain copy of ``data``.

    Raises:
        UnsafeConfigError: naming ``source`` and the offending key.
    """
    if not isinstance(data, Mapping):
        raise UnsafeConfigError(f"{source}: the stored data config is not a mapping ({type(data).__name__})")
    target = data.get("_target_")
    if target not in DATA_MODULES:
        raise UnsafeConfigError(
            f"{source}: data._target_={target!r} is not one of the project's data modules {sorted(DATA_MODULES)}; "
            "refusing to instantiate it"
        )
    _check_plain(data, "data", source, top=True)
    return _plain_copy(data)


def _check_plain(value: Any, where: str, source: str, top: bool = False) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{source}: {where} has a non-string key {key!r}")
            if key in _INSTANTIATE_KEYS and not (top and key == "_target_"):
                raise UnsafeConfigError(f"{source}: {where}.{key} is not allowed in a stored data config")
            _check_plain(item, f"{where}.{key}", source)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", source)
    elif isinstance(value, str):
        if "${" in value:
            raise UnsafeConfigError(f"{source}: {where}={value!r} is an interpolation, not a stored value")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise UnsafeConfigError(f"{source}: {where} holds a {type(value).__name__}, not a plain value")


def _plain_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    return value
