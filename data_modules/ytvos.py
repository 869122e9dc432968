"""Ref-YouTube-VOS (official layout; see ``mpgsam2.data.ytvos``): train for training, the 202-video valid split
for inference (no public masks: it is scored by the server)."""

from __future__ import annotations

from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import ReferringVideoSource, RefYTVOSSource

__all__ = ["RefYTVOSDataModule"]


class RefYTVOSDataModule(ReferringVideoDataModule):
    """Args: root: the ``ref-youtube-vos`` folder (``train/``, ``valid/``, ``meta_expressions/``);
    val_split: the split used for validation/prediction ("valid"); **kwargs: see ReferringVideoDataModule."""

    def __init__(self, root: str, val_split: str = "valid", **kwargs: object) -> None:
        self.root = Path(root)
        self.val_split = val_split
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def train_source(self) -> ReferringVideoSource:
        return RefYTVOSSource(self.root, "train")

    def val_source(self) -> ReferringVideoSource:
        return RefYTVOSSource(self.root, self.val_split)
