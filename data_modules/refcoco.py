"""RefCOCO / RefCOCO+ / RefCOCOg (ReferFormer's converted layout; see ``mpgsam2.data.refcoco``): the image
pre-training stage (spec §2.1 stage 1): the training splits concatenated, one item per (image, sentence), T = 1.

Every batch has ``is_image=True`` (``ReferringImageCollate``) so that the Lightning module can run the model's
batched image path (``MPGSAM2.forward_images``, spec §1.7) instead of the video path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from data_modules.base import ReferringVideoDataModule
from mpgsam2.data import (
    RefCOCOSource,
    ReferringImageCollate,
    ReferringImageDataset,
    ReferringImageEvalDataset,
)
from mpgsam2.evaluation.benchmarks import Benchmark

__all__ = ["RefCOCODataModule"]


class RefCOCODataModule(ReferringVideoDataModule):
    """Args:
    root: the folder holding ``train2014/`` and ``refcoco/``, ``refcoco+/``, ``refcocog/`` (ReferFormer's
        ``data/coco``; a folder holding them in ``coco/`` works too).
    names: the datasets whose ``train_split`` is concatenated for training (stage 1: all three).
    train_split: "train".
    val_name / val_split: the split used for validation and prediction (default ``refcoco/val``).
    val_batch_size: images per validation batch (default ``batch_size``).
    photometric: default False (spec §2.4: no photometric distortion for RefCOCO).
    num_frames: must be 1 (images).
    **kwargs: see ReferringVideoDataModule (tokenizer_path, sam_size, beit_size, batch_size, num_workers,
        hflip_p, seed, swap_expressions: validate with the caption of another object of the same image).
    """

    collate_class = ReferringImageCollate
    benchmark = "refcoco"

    def __init__(
        self,
        root: str,
        names: Sequence[str] = ("refcoco", "refcoco+", "refcocog"),
        train_split: str = "train",
        val_name: str = "refcoco",
        val_split: str = "val",
        val_batch_size: int | None = None,
        photometric: bool = False,
        num_frames: int = 1,
        **kwargs: object,
    ) -> None:
        if num_frames != 1:
            raise ValueError(f"RefCOCO items are single images: num_frames must be 1, got {num_frames}")
        if not names:
            raise ValueError("names must list at least one of refcoco, refcoco+, refcocog")
        self.root = Path(root)
        self.names = tuple(names)
        self.train_split = train_split
        self.val_name = val_name
        super().__init__(val_split=val_split, num_frames=1, photometric=photometric, **kwargs)  # type: ignore[arg-type]
        self.val_batch_size = val_batch_size or self.batch_size

    def train_sources(self) -> list[RefCOCOSource]:
        return [RefCOCOSource(self.root, name, self.train_split) for name in self.names]

    def split_source(self, split: str) -> RefCOCOSource:  # type: ignore[override]
        """``split`` of the validation dataset (``val_name``), e.g. ``"testA"``."""
        return RefCOCOSource(self.root, self.val_name, split)

    def val_source(self) -> RefCOCOSource:  # type: ignore[override]
        return self.split_source(self.val_split)  # type: ignore[arg-type]

    def make_train_dataset(self) -> ReferringImageDataset:
        return ReferringImageDataset(self.train_sources(), self.train_transform(), seed=self.seed)

    def make_val_dataset(self) -> ReferringImageEvalDataset:
        # every item has T = 1 and the same view sizes, so validation batches may hold several images
        return self._image_eval_dataset(self.val_source())

    def image_eval_dataset(self, bench: Benchmark, split: str | None = None) -> ReferringImageEvalDataset:
        """What ``eval.py`` predicts or scores: ``split`` (default: ``val_split``, else the benchmark's default
        split) of the validation dataset (``val_name``), captions swapped on request (``swap_expressions``)."""
        return self._image_eval_dataset(self.split_source(split or self.val_split or bench.default_split))

    def _image_eval_dataset(self, source: RefCOCOSource) -> ReferringImageEvalDataset:
        return ReferringImageEvalDataset(
            source, self.eval_transform(), swap_captions=bool(self.swap_expressions), seed=int(self.seed)
        )
