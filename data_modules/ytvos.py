"""Ref-YouTube-VOS (official layout; see ``mpgsam2.data.ytvos``): train for training; the 202-video valid split
has no public masks (the server scores it): eval.py writes its submission. Training validates on held-out
training videos (``val_split=holdout``) or not at all (the paper's recipe)."""

from __future__ import annotations

from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import ReferringVideoSource, RefYTVOSSource

__all__ = ["RefYTVOSDataModule"]


class RefYTVOSDataModule(ReferringVideoDataModule):
    """Args: root: the ``ref-youtube-vos`` folder (``train/``, ``valid/``, ``meta_expressions/``);
    **kwargs: see ReferringVideoDataModule (``val_split``: None, "holdout" or a split with masks)."""

    benchmark = "ytvos"

    def __init__(self, root: str, **kwargs: object) -> None:
        self.root = Path(root)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def split_source(self, split: str) -> ReferringVideoSource:
        return RefYTVOSSource(self.root, split)
