"""MeViS v1 or v2 (official layout; see ``mpgsam2.data.mevis``): train for training, valid_u (public ground truth,
scored locally) for validation, valid (no public masks: scored by the server) for submissions."""

from __future__ import annotations

from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import MeViSSource, ReferringVideoSource
from mpgsam2.data.mevis import MEVIS_VERSIONS, detect_mevis_version

__all__ = ["MeViSDataModule"]


class MeViSDataModule(ReferringVideoDataModule):
    """Args: root: the ``mevis`` folder (``train/``, ``valid_u/``, ``valid/``); version: ``"v1"``, ``"v2"`` or
    None (detected from the expressions files, see :func:`mpgsam2.data.mevis.mevis_expressions_file`); **kwargs:
    see ReferringVideoDataModule (``val_split`` "valid_u" by default; MeViS trains on ``num_frames=8`` clips).

    The benchmark row (:mod:`mpgsam2.evaluation.benchmarks`) follows the version: ``mevis`` (v1, CodaLab 15094) or
    ``mevis_v2`` (v2, Codabench 11420)."""

    def __init__(
        self, root: str, val_split: str | None = "valid_u", version: str | None = None, **kwargs: object
    ) -> None:
        if version is not None and version not in MEVIS_VERSIONS:
            raise ValueError(
                f"data.version must be one of {MEVIS_VERSIONS} or null (detect), got {version!r}"
            )
        self.root = Path(root)
        self.version = version
        super().__init__(val_split=val_split, **kwargs)  # type: ignore[arg-type]

    @property
    def dataset_version(self) -> str:
        """``data.version``, or the version of the files under ``root`` (v1 when none is there yet: the readers
        then name the files they expected)."""
        return self.version or detect_mevis_version(self.root) or "v1"

    @property
    def benchmark(self) -> str:  # type: ignore[override]
        return "mevis" if self.dataset_version == "v1" else f"mevis_{self.dataset_version}"

    def split_source(self, split: str) -> ReferringVideoSource:
        return MeViSSource(self.root, split, self.version)

    def train_source(self) -> ReferringVideoSource:
        source = super().train_source()
        # Read mask_dict.json (GBs) here, once, in the main process: forked DataLoader workers then share it
        # instead of each worker re-reading it every epoch (the loaders' workers are not persistent).
        source.load_masks()  # type: ignore[attr-defined]
        return source
