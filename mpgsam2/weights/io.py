"""Checkpoint readers: torch pickles (``.pt``/``.pth``/``.bin``), safetensors and HF ``save_pretrained`` folders.

Every reader returns a flat ``dict[str, Tensor]`` on the CPU and never downloads anything. Torch pickles are read
with ``weights_only=True``; a file that needs more than that is refused, not retried. Every failure is a
:class:`CheckpointError` that names the file and says what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "HF_WEIGHT_FILES",
    "STATE_DICT_WRAPPER_KEYS",
    "load_torch_file",
    "read_state_dict",
]

# Top-level keys under which training scripts store the state dict: {"model": sd} (SAM 2, BEiT-3, DETR-style
# scripts), {"state_dict": sd} (Lightning), {"module": sd} (DeepSpeed mp_rank_00_model_states.pt).
STATE_DICT_WRAPPER_KEYS: tuple[str, ...] = ("model", "state_dict", "module")

# Weight files of an HF save_pretrained folder, in the order they are preferred.
HF_WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".zip"}  # BEiT-3 files are sometimes downloaded as .zip
_SAFETENSORS_SUFFIXES = {".safetensors"}
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_MAX_LISTED = 10


class CheckpointError(Exception):
    """A checkpoint could not be read, converted or loaded. The message names the file and the problem."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a checkpoint file or HF folder into a flat state dict.

    Args:
        path: a ``.pt``/``.pth``/``.bin`` torch pickle (a state dict, or ``{"model"|"state_dict"|"module": sd}``
            when that is the only tensor container), a ``.safetensors`` file, or an HF ``save_pretrained``
            folder (``model.safetensors`` / ``pytorch_model.bin``, single or sharded with an ``*.index.json``).

    Returns:
        ``{name: tensor}`` with CPU tensors (memory-mapped where the format allows it).

    Raises:
        CheckpointError: missing path, not a checkpoint, corrupt or truncated file, a pickle that needs more
            than ``weights_only=True``, or an inconsistent HF index.
    """
    text = os.fspath(path)
    if "://" in text:
        raise CheckpointError(
            f"{text}: refusing to read a URL; download the file yourself and pass its local path"
        )
    p = Path(text)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint does not exist")
    if p.is_dir():
        return _read_hf_folder(p)
    return _read_file(p)


# ----------------------------------------------------------------------------------------------------------- files


def _read_file(p: Path) -> dict[str, Tensor]:
    kind = _sniff(p)
    if kind == "safetensors":
        return _read_safetensors(p)
    if kind in ("torch-zip", "torch-legacy"):
        return _read_torch(p, mmap=kind == "torch-zip")
    raise CheckpointError(
        f"{p}: not a checkpoint ({kind}); expected a torch pickle (.pt/.pth/.bin), a .safetensors file or an "
        f"HF save_pretrained folder"
    )


def _sniff(p: Path) -> str:
    """Classify a file by its first bytes (the suffix only decides what a damaged file was meant to be)."""
    size = p.stat().st_size
    if size == 0:
        return "empty file"
    with p.open("rb") as f:
        head = f.read(9)
    suffix = p.suffix.lower()
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode: legacy torch.save
        return "torch-legacy"
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len <= size or suffix in _SAFETENSORS_SUFFIXES:
            return "safetensors"  # a truncated safetensors file is reported by the safetensors reader
    if suffix in _SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in _TORCH_SUFFIXES:
        return f"the file has a {suffix} name but does not start like a torch checkpoint (first bytes {head[:8]!r})"
    return f"unrecognised content (first bytes {head[:8]!r})"


def _read_safetensors(p: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(p), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p}: corrupt or truncated safetensors file ({e})") from e


def _read_torch(p: Path, *, mmap: bool) -> dict[str, Tensor]:
    return _extract_state_dict(load_torch_file(p, mmap=mmap), p)


def load_torch_file(path: str | os.PathLike[str], *, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that name the file.

    Raises:
        CheckpointError: the file is missing, damaged, or holds objects other than tensors and plain containers
            (an arbitrary pickle is refused, never retried with ``weights_only=False``).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # A zip-format file is checksummed, so only a legacy-format file can reach here through damage.
        found = re.search(r"GLOBAL (\S+)", str(e))
        checksummed = mmap or zipfile.is_zipfile(p)  # a zip-format file cannot be damaged into a refusal
        if found and "weights only" in str(e).lower() and (checksummed or not _names_missing_global(str(e))):
            needs = f" (it needs {found.group(1)})"
            # `from None`: torch's own message advises weights_only=False, which this project never does
            raise CheckpointError(
                f"{p}: refusing to load an arbitrary pickle{needs}: the file holds objects other than tensors and "
                "plain containers, and this project only loads checkpoints with torch.load(weights_only=True). "
                "Re-save the state dict alone (torch.save(model.state_dict(), ...)) from a trusted environment."
            ) from None
        detail = _unpickler_detail(str(e))
        raise CheckpointError(f"{p}: corrupt or truncated torch checkpoint ({detail})") from None
    except Exception as e:  # weights_only unpickling of damaged bytes fails in many ways (EOF, Index, Key...)
        raise CheckpointError(
            f"{p}: corrupt or truncated torch checkpoint ({type(e).__name__}: {_first_line(str(e))})"
        ) from e


def _unpickler_detail(message: str) -> str:
    """What torch's weights-only unpickler found wrong, without its advice around it."""
    tail = message.split("WeightsUnpickler error:", 1)[-1]
    return _first_line(tail) or "unreadable pickle"


def _names_missing_global(message: str) -> bool:
    """True when a refused pickle global cannot be a real name, e.g. 'collections.Ord' from a legacy-format file
    cut inside 'collections.OrderedDict': that is damage, not a custom class. Only modules that are imported
    already are consulted, so nothing the file names gets imported."""
    m = re.search(r"GLOBAL (\S+)", message)
    if m is None:
        return False
    parts = m.group(1).split(".")
    if len(parts) < 2 or not all(parts):
        return True
    obj = sys.modules.get(parts[0])
    # Cannot tell for modules not imported here, nor for __main__ (a class of another program's __main__).
    if obj is None or parts[0] == "__main__":
        return False
    for i, part in enumerate(parts[1:], start=2):
        obj = getattr(obj, part, None) or sys.modules.get(".".join(parts[:i]))
        if obj is None:
            return True
    return False


def _first_line(text: str, containing: str = "") -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if containing:
        lines = [ln for ln in lines if containing in ln]
    return lines[0][:300] if lines else ""


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _extract_state_dict(obj: object, p: Path) -> dict[str, Tensor]:
    """Return the state dict inside a loaded torch object, unwrapping {"model"|"state_dict"|"module": sd}."""
    if _is_tensor_dict(obj):
        return dict(obj)  # type: ignore[arg-type]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: not a state dict: the file holds a {type(obj).__name__}, not a mapping")
    containers = [k for k, v in obj.items() if _is_tensor_dict(v) or isinstance(v, Tensor)]
    if len(containers) == 1 and containers[0] in STATE_DICT_WRAPPER_KEYS:
        log.debug("%s: using the state dict under top-level key %r", p, containers[0])
        return dict(obj[containers[0]])
    if len(containers) > 1:
        raise CheckpointError(
            f"{p}: ambiguous checkpoint: several top-level entries hold tensors ({', '.join(map(repr, containers))});"
            f" extract the one you want and save it alone"
        )
    detail = ""
    for key in STATE_DICT_WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            bad = [f"{k!r} ({type(v).__name__})" for k, v in inner.items() if not isinstance(v, Tensor)]
            detail = f"; {key!r} holds non-tensor entries: {_listing(bad)}" if bad else f"; {key!r} is empty"
            break
    top = _listing([repr(k) for k in obj.keys()])
    raise CheckpointError(
        f"{p}: no state dict found (top-level keys: {top}){detail}; expected a mapping name -> tensor, or one of "
        f"{', '.join(map(repr, STATE_DICT_WRAPPER_KEYS))} holding one"
    )


def name_listing(items: Sequence[str], limit: int, inline: bool = False) -> str:
    """At most ``limit`` names for an error message, then how many more: ``a, b, ... and 3 more`` (``inline``) or
    one indented name per line."""
    items = list(items)
    more = len(items) - limit
    if inline:
        return ", ".join(items[:limit]) + (f", ... and {more} more" if more > 0 else "")
    rows = [f"  {x}" for x in items[:limit]] + ([f"  ... and {more} more"] if more > 0 else [])
    return "\n".join(rows)


def _listing(items: Sequence[str]) -> str:
    return name_listing(items, _MAX_LISTED, inline=True)


# ------------------------------------------------------------------------------------------------------ HF folders


def _read_hf_folder(folder: Path) -> dict[str, Tensor]:
    present = [name for name in HF_WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        listing = _listing(sorted(x.name for x in folder.iterdir()))
        raise CheckpointError(
            f"{folder}: not an HF checkpoint folder: none of {', '.join(HF_WEIGHT_FILES)} found (contents: "
            f"{listing or 'empty'})"
        )
    chosen = present[0]
    if len(present) > 1:
        log.info("%s: reading %s (also present, ignored: %s)", folder, chosen, ", ".join(present[1:]))
    if chosen.endswith(".index.json"):
        return _read_sharded(folder / chosen)
    return _read_file(folder / chosen)


def _read_sharded(index_path: Path) -> dict[str, Tensor]:
    folder = index_path.parent
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index_path}: bad index JSON ({e})") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: bad index JSON: expected a non-empty object under 'weight_map'")
    bad = [f"{k!r}: {v!r}" for k, v in weight_map.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise CheckpointError(
            f"{index_path}: bad index JSON: weight_map entries must map str -> str: {_listing(bad)}"
        )

    shard_names = sorted(set(weight_map.values()))
    outside = [n for n in shard_names if Path(n).name != n]
    if outside:
        raise CheckpointError(
            f"{index_path}: bad index JSON: shard names must be plain file names: {_listing(outside)}"
        )
    missing_files = [n for n in shard_names if not (folder / n).is_file()]
    if missing_files:
        raise CheckpointError(
            f"{index_path}: the index lists shard files that do not exist: {_listing(missing_files)}"
        )

    out: dict[str, Tensor] = {}
    for name in shard_names:
        shard = _read_file(folder / name)
        listed = {k for k, v in weight_map.items() if v == name}
        absent = sorted(listed - shard.keys())
        if absent:
            raise CheckpointError(
                f"{index_path}: {len(absent)} tensor(s) the index places in {name} are not in that file: "
                f"{_listing(absent)}"
            )
        extra = sorted(shard.keys() - listed)
        if extra:
            raise CheckpointError(
                f"{index_path}: shard {name} holds {len(extra)} tensor(s) the index does not list there: "
                f"{_listing(extra)}"
            )
        # Each key has exactly one shard in weight_map and no shard holds unlisted keys, so nothing is duplicated.
        out.update((k, shard[k]) for k in listed)
    log.debug("%s: read %d tensors from %d shard(s)", index_path, len(out), len(shard_names))
    return out
