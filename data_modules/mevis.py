"""MeViS (official layout; see ``mpgsam2.data.mevis``): train for training, valid_u (public ground truth, scored
locally) for validation, valid (no public masks: scored by the server) for submissions."""

from __future__ import annotations

from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import MeViSSource, ReferringVideoSource

__all__ = ["MeViSDataModule"]


class MeViSDataModule(ReferringVideoDataModule):
    """Args: root: the ``mevis`` folder (``train/``, ``valid_u/``, ``valid/``); **kwargs: see
    ReferringVideoDataModule (``val_split`` "valid_u" by default; MeViS trains on ``num_frames=8`` clips)."""

    benchmark = "mevis"

    def __init__(self, root: str, val_split: str | None = "valid_u", **kwargs: object) -> None:
        self.root = Path(root)
        super().__init__(val_split=val_split, **kwargs)  # type: ignore[arg-type]

    def split_source(self, split: str) -> ReferringVideoSource:
        return MeViSSource(self.root, split)

    def train_source(self) -> ReferringVideoSource:
        source = super().train_source()
        # Read mask_dict.json (GBs) here, once, in the main process: forked DataLoader workers then share it
        # instead of each worker re-reading it every epoch (the loaders' workers are not persistent).
        source.load_masks()  # type: ignore[attr-defined]
        return source
