"""MeViS (official layout; see ``mpgsam2.data.mevis``): train for training, valid_u (public ground truth, scored
locally) or valid (no public masks: scored by the server) for validation / prediction."""

from __future__ import annotations

from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import MeViSSource, ReferringVideoSource

__all__ = ["MeViSDataModule"]


class MeViSDataModule(ReferringVideoDataModule):
    """Args: root: the ``mevis`` folder (``train/``, ``valid_u/``, ``valid/``); val_split: the split used for
    validation/prediction ("valid_u" or "valid"); **kwargs: see ReferringVideoDataModule (MeViS trains on
    ``num_frames=8`` clips)."""

    def __init__(self, root: str, val_split: str = "valid_u", **kwargs: object) -> None:
        self.root = Path(root)
        self.val_split = val_split
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def train_source(self) -> ReferringVideoSource:
        source = MeViSSource(self.root, "train")
        # Read mask_dict.json (GBs) here, once, in the main process: forked DataLoader workers then share it
        # instead of each worker re-reading it every epoch (the loaders' workers are not persistent).
        source.load_masks()
        return source

    def val_source(self) -> ReferringVideoSource:
        return MeViSSource(self.root, self.val_split)
