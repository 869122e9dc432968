"""Torch datasets of RefCOCO-family images and their collate: an image is a 1-frame clip (spec §2.1 stage 1).

:class:`ReferringImageDataset` (training: augmentation, resampling of empty targets),
:class:`ReferringImageEvalDataset` (one item per sentence, masks at the original size) and
:class:`ReferringImageCollate` (batches the model's image path takes) read
:class:`~mpgsam2.data.refcoco.RefCOCOSource` objects; the video counterparts are in
:mod:`mpgsam2.data.video_dataset`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mpgsam2.data.batch import ImageRef, ItemMeta, ReferringItem
from mpgsam2.data.collate import ReferringCollate
from mpgsam2.data.indexing import ResamplingDataset, make_item
from mpgsam2.data.refcoco import RefCOCOSample, RefCOCOSource, swap_captions_within_image
from mpgsam2.data.transforms import ClipTransform
from mpgsam2.data.video_dataset import normalize_caption

__all__ = ["ReferringImageCollate", "ReferringImageDataset", "ReferringImageEvalDataset"]

log = logging.getLogger(__name__)


def _meta(source: RefCOCOSource, sample: RefCOCOSample) -> ItemMeta:
    stem = Path(sample.file_name).stem
    return ItemMeta(
        # an image is a 1-frame video per sentence, so code written for videos reads it as one
        video=stem,
        exp_id=str(sample.sample_id),
        frame_names=[stem],
        frame_indices=[0],
        orig_size=(sample.height, sample.width),
        image=ImageRef(
            dataset=source.dataset,
            split=source.split,
            sample_id=sample.sample_id,
            image_id=sample.image_id,
            ann_id=sample.ann_ids[0] if len(sample.ann_ids) == 1 else list(sample.ann_ids),
            file_name=sample.file_name,
        ),
    )


class ReferringImageDataset(ResamplingDataset):
    """Training items of one or more RefCOCO sources, concatenated (stage 1: refcoco + refcoco+ + refcocog).

    Item ``i`` is sample ``i`` of the concatenation (sources in the given order). Augmentation (spec §2.4,
    RefCOCO): horizontal flip with p = ``transform.hflip_p`` swapping "left"/"right" in the caption, then resize;
    no photometric distortion (pass ``ClipTransform(..., photometric=False)``). deviation: both views come from
    the flipped image (the original computes the BEiT view before the flip, spec §8.1).

    Resampling: when the target is empty at the SAM resolution, a new index is drawn uniformly (parity: the
    original redraws ``random.randint`` when no valid box is left); after ``max_resample`` failed attempts the
    last item is returned with ``valid`` False and a warning.

    Reproducibility: item ``i`` is a pure function of ``(seed, epoch, i)``; call :meth:`set_epoch` every epoch.

    Args:
        sources: the RefCOCO sources (at least one).
        transform: ``ClipTransform(..., train=True, photometric=False)``.
        seed: base seed.
        max_resample: attempts after the first before giving up on a non-empty target.

    Items (:class:`~mpgsam2.data.batch.ReferringItem`): sam_frames float32 (1, 3, S, S); beit_frames float32 (1, 3, Hb, Hb); masks float32 (1, S, S) 0/1;
    valid bool (1,); caption str (lower-cased, whitespace-normalised, then left/right swapped if flipped);
    meta dict(dataset, split, sample_id, image_id, ann_id, file_name, orig_size=(H, W), and the video keys video,
    exp_id, frame_names, frame_indices).
    """

    _rng_tag = "image"
    _unit = "samples"

    def __init__(
        self,
        sources: Sequence[RefCOCOSource],
        transform: ClipTransform,
        seed: int = 0,
        max_resample: int = 10,
    ) -> None:
        if not sources:
            raise ValueError("ReferringImageDataset needs at least one source")
        self.sources = list(sources)
        self.transform = transform
        self._init_index([len(s) for s in self.sources], seed, max_resample)

    def locate(self, index: int) -> tuple[RefCOCOSource, RefCOCOSample]:
        """The source and sample of item ``index``."""
        k, offset = self._position(index)
        return self.sources[k], self.sources[k].sample(offset)

    def _draw(self, index: int, rng: random.Random) -> tuple[tuple[RefCOCOSource, RefCOCOSample], np.ndarray]:
        source, sample = self.locate(index)
        return (source, sample), source.read_mask(sample)

    def _warn_exhausted(self, index: int) -> None:
        log.warning(
            "no sample with a non-empty target in %d attempts from item %d; using the last one (valid False)",
            self.max_resample + 1,
            index,
        )

    def _make_item(
        self, source: RefCOCOSource, sample: RefCOCOSample, mask: np.ndarray, np_rng: np.random.Generator
    ) -> ReferringItem:
        image = source.read_image(sample)
        sam, beit, target, caption = self.transform(
            image[None], mask[None], normalize_caption(sample.caption), rng=np_rng
        )
        assert target is not None
        return make_item(sam, beit, target, caption, _meta(source, sample))


class ReferringImageEvalDataset(Dataset):
    """Evaluation items of one RefCOCO source: one per (image, sentence), T = 1, no augmentation.

    Args:
        source: the split (e.g. ``refcoco/val``).
        transform: ``ClipTransform(..., train=False)``.
        swap_captions: give every sample the caption of another object of its image (samples without one are
            dropped; see :func:`swap_captions_within_image`); a control that the model reads the sentence.
        seed: chooses the swapped captions.

    Items (:class:`~mpgsam2.data.batch.ReferringItem`): the training fields with the caption RAW (parity: inference
    captions are not lower-cased, spec §1.1), plus ``orig_masks``: bool (1, H, W) at the original resolution (for
    J&F / IoU).
    """

    def __init__(
        self, source: RefCOCOSource, transform: ClipTransform, swap_captions: bool = False, seed: int = 0
    ) -> None:
        if getattr(transform, "train", False):
            raise ValueError("ReferringImageEvalDataset needs a transform with train=False (no augmentation)")
        self.source = source
        self.transform = transform
        self._entries: list[tuple[int, str | None]] = (
            list(swap_captions_within_image(source, seed))
            if swap_captions
            else [(i, None) for i in range(len(source))]
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def sample_indices(self) -> list[int]:
        """The source's sample index of each item, in item order."""
        return [i for i, _ in self._entries]

    def __getitem__(self, index: int) -> ReferringItem:
        sample_index, caption = self._entries[index]
        sample = self.source.sample(sample_index)
        if caption is not None:
            sample = replace(sample, caption=caption)
        mask = self.source.read_mask(sample)
        image = self.source.read_image(sample)
        sam, beit, target, caption_out = self.transform(image[None], mask[None], sample.caption)
        assert target is not None
        item = make_item(sam, beit, target, caption_out, _meta(self.source, sample))
        item.orig_masks = torch.from_numpy(mask[None].copy())
        return item


class ReferringImageCollate(ReferringCollate):
    """:class:`~mpgsam2.data.collate.ReferringCollate` for image items (T = 1): its batches have
    ``is_image=True``, so the Lightning module and evaluation take the model's batched image path
    (``MPGSAM2.forward_images`` on ``sam_frames[:, 0]`` / ``beit_frames[:, 0]``, spec §1.7)."""

    is_image = True
