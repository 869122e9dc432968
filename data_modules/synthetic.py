"""The embedded default dataset: synthetic referring videos in the Ref-YouTube-VOS layout (generated on first use)."""

from __future__ import annotations

from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import ReferringVideoSource, RefYTVOSSource
from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos

__all__ = ["SyntheticDataModule"]


class SyntheticDataModule(ReferringVideoDataModule):
    """Generates the synthetic dataset under ``root`` (deterministic from ``generator``'s seed; skipped when it
    exists) and reads it with the Ref-YouTube-VOS reader. Its tokenizer is ``root/tokenizer.model``. Every video
    has a no-target expression (:mod:`mpgsam2.data.synthetic`), so validation and ``eval.py`` also report MeViS v2's
    N-acc, T-acc and Final (a split with no-target expressions is scored so, whatever the benchmark row).

    Args:
        root: dataset folder.
        generator: ``SyntheticConfig`` fields (seed, number of videos, frames, image size, objects per video).
        **kwargs: see :class:`ReferringVideoDataModule`.
    """

    benchmark = "ytvos"  # the Ref-YouTube-VOS layout and protocol

    def __init__(
        self, root: str, generator: dict | None = None, val_split: str | None = "valid", **kwargs: object
    ) -> None:
        self.root = Path(root)
        self.generator_config = SyntheticConfig(**(generator or {}))
        kwargs.setdefault("tokenizer_path", str(self.root / "tokenizer.model"))
        super().__init__(val_split=val_split, **kwargs)  # type: ignore[arg-type]

    def prepare_data(self) -> None:
        generate_synthetic_ytvos(self.root, self.generator_config)

    def split_source(self, split: str) -> ReferringVideoSource:
        return RefYTVOSSource(self.root, split)
