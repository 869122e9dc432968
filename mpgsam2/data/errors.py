"""The error type of every dataset reader in :mod:`mpgsam2.data`."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """Bad dataset input: a missing, truncated or malformed file, or an inconsistent annotation.

    By convention the message starts with the offending path (file or folder) and then says what was expected and
    what was found, e.g. ``"/data/ytvos/train/JPEGImages/abc/00005.jpg: frame file not found"``.
    """
