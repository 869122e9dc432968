"""Small helpers shared by the entry points (no Hydra, no Lightning)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from PIL import Image
from torch import Tensor, nn

# Pillow's errors for unreadable files: OSError (missing, truncated, decoder errors, UnidentifiedImageError),
# SyntaxError / ValueError (corrupt PNG chunks), DecompressionBombError (huge images)
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

__all__ = ["atomic_write", "check_tokenizer_fits", "local_values", "parameter_counts", "write_json_atomic"]


def check_tokenizer_fits(
    tokenizer_vocab: int, model: nn.Module, tokenizer_path: str | os.PathLike[str], hint: str = ""
) -> None:
    """Refuse a tokenizer whose ids do not all have a row in the model's BEiT-3 word embedding.

    Args:
        tokenizer_vocab: the tokenizer's vocabulary size (its largest id + 1).
        model: an ``MPGSAM2`` (reads ``model.config.beit3["vocab_size"]``).
        tokenizer_path: named in the error. hint: appended to the error (what to change).

    Raises:
        ValueError: ``tokenizer_vocab`` exceeds the model's vocabulary.
    """
    model_vocab = int(model.config.beit3["vocab_size"])  # type: ignore[union-attr, index]
    if tokenizer_vocab > model_vocab:
        raise ValueError(
            f"the tokenizer ({tokenizer_path}) produces ids up to {tokenizer_vocab - 1}, but the model's BEiT-3 "
            f"vocabulary has {model_vocab} entries" + (f"; {hint}" if hint else "")
        )


def local_values(tensor: Tensor) -> Tensor:
    """This process's values of a tensor: its shard when it is sharded (a DTensor under ``trainer=fsdp``), else
    the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts (logged with the hyperparameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params/total": total, "params/trainable": trainable, "params/frozen": total - trainable}


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically (see :func:`atomic_write`): the file is complete or absent, never half-written."""
    text = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    return atomic_write(path, lambda f: f.write(text))


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file so that readers see the previous version or the complete new one, never a part of it.

    The bytes go to an unnamed file in the target's own folder (Linux ``O_TMPFILE``: a process killed while
    writing leaves nothing behind), are flushed and fsync-ed, then linked under a temporary name beside the
    target and renamed over it (atomic on one file system; nothing is written in ``$TMPDIR``, which on clusters
    is often another file system where a "move" copies and truncates the target first). Where ``O_TMPFILE`` is
    unavailable the temporary file is named ``.<name>.<pid>.tmp``; such files of dead processes are removed by
    the next write to the same target.

    Args:
        path: the target file (its folder is created).
        write: called once with a binary file object to write the content to.

    Returns:
        ``path``.

    Raises:
        OSError: the write failed (full disk, no permission ...); the message names ``path``; the target keeps
            its previous content and no temporary file is left.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = _open_unnamed(path.parent)
        linked = False
        if fd >= 0:
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                linked = _link_unnamed(fd, tmp)
            finally:
                os.close(fd)
        if not linked:  # no O_TMPFILE (or no /proc to name it): a named temporary file
            _write_named(tmp, write)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    except OSError as err:
        if str(path) in str(err):
            raise
        raise OSError(err.errno, f"{path}: could not write ({err.strerror or err})") from err
    return path


def _open_unnamed(folder: Path) -> int:
    """An unnamed, writable file in ``folder`` (-1 where the platform or file system has no O_TMPFILE)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return -1
    try:
        return os.open(folder, flag | os.O_WRONLY, 0o644)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return -1
        raise


def _link_unnamed(fd: int, tmp: Path) -> bool:
    """Give the unnamed file ``fd`` the name ``tmp``; False when that is not possible (no /proc)."""
    tmp.unlink(missing_ok=True)
    try:
        os.link(f"/proc/self/fd/{fd}", tmp, follow_symlinks=True)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.EPERM, errno.EXDEV, errno.EACCES):
            return False
        raise
    return True


def _write_named(tmp: Path, write: Callable[[IO[bytes]], object]) -> None:
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    # the rename is durable only once the folder's entry is on disk
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.<pid>.tmp`` files of ``path`` left by processes that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.tmp$")
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and not _process_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
