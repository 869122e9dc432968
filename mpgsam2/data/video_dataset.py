"""Torch datasets over any :class:`~mpgsam2.data.sources.ReferringVideoSource` (the data contract's items).

- :class:`ReferringClipDataset`: training clips, one item per (expression, anchor frame) with anchors every
  ``num_frames`` frames (spec §2.2 epoch definition), clip frames by spec §2.3.
- :class:`ReferringVideoEvalDataset`: one item per expression with the whole video (spec §3.1).

Original: ``datasets/ytvos.py`` / ``datasets/mevis.py`` (``__getitem__``) and ``inference_ytvos.py``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mpgsam2.data.batch import ItemMeta, ReferringItem
from mpgsam2.data.indexing import ResamplingDataset, make_item
from mpgsam2.data.records import ExpressionRecord
from mpgsam2.data.sampling import sample_clip_indices
from mpgsam2.data.sources import ReferringVideoSource
from mpgsam2.data.transforms import ClipTransform

__all__ = ["ReferringClipDataset", "ReferringVideoEvalDataset", "normalize_caption"]

log = logging.getLogger(__name__)


def normalize_caption(caption: str) -> str:
    """Training caption clean-up: lower-cased, whitespace runs -> one space, stripped (parity: spec §1.1)."""
    return " ".join(caption.lower().split())


def _meta(expr: ExpressionRecord, indices: list[int], orig_size: tuple[int, int]) -> ItemMeta:
    return ItemMeta(
        video=expr.video.video_id,
        exp_id=expr.exp_id,
        frame_names=[expr.video.frame_names[i] for i in indices],
        frame_indices=list(indices),
        orig_size=orig_size,
    )


class ReferringClipDataset(ResamplingDataset):
    """Training clips of a referring-video source.

    Item ``i`` is the anchor ``k * num_frames`` of one expression (expressions in source order, anchors in
    temporal order), so ``len = Σ_expressions ceil(n_frames / num_frames)``. Its clip indices come from
    :func:`~mpgsam2.data.sampling.sample_clip_indices`, and the clip goes through ``transform``.

    Resampling: when the object is in no frame of the clip (after the transform's resize, parity: the
    original's ``Check``), a new dataset index is drawn uniformly and tried instead (parity: the original
    draws ``random.randint(0, len - 1)``), so the returned item may belong to another expression; ``meta`` says
    which. An expression that refers to nothing (``no_target``, MeViS v2) is never redrawn: its clips are sampled
    like the others and keep their empty target (``valid`` all False), which supervises the object-score head
    (:mod:`mpgsam2.losses`). deviation: the original retries forever; here after ``max_resample`` failed attempts the last clip
    is returned anyway with ``valid`` all False (a warning is logged), which the loss then sees as an empty
    target.

    Reproducibility: item ``i`` is a pure function of ``(seed, epoch, i)`` (clip, resampling and augmentation
    draws all come from one generator seeded with them), independent of DataLoader workers and of the order in
    which items are requested. Call :meth:`set_epoch` at the start of every epoch; DataLoader workers receive a
    copy of the dataset when their iterator is created, so this works unless ``persistent_workers=True``.

    Args:
        source: the split; must have masks.
        num_frames: T, frames per clip (5 for Ref-YTVOS, 8 for MeViS).
        transform: usually ``ClipTransform(..., train=True)``.
        seed: base seed.
        max_resample: attempts after the first before giving up on finding the object.

    Items (:class:`~mpgsam2.data.batch.ReferringItem`):
        sam_frames: float32 (T, 3, S, S); beit_frames: float32 (T, 3, Hb, Hb); masks: float32 (T, S, S) 0/1;
        valid: bool (T,) object present in the frame; caption: str (lower-cased, whitespace-normalised, then
        left/right swapped if flipped); meta: dict(video, exp_id, frame_names, frame_indices, orig_size=(H, W));
        orig_masks: None.
    """

    _rng_tag = "clip"
    _unit = "clips"

    def __init__(
        self,
        source: ReferringVideoSource,
        num_frames: int,
        transform: ClipTransform,
        seed: int = 0,
        max_resample: int = 10,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if not source.has_masks:
            raise ValueError(f"{source.name}: training needs ground-truth masks, but this source has none")
        self.source = source
        self.num_frames = num_frames
        self.transform = transform
        clips_per_expr = [math.ceil(e.video.num_frames / num_frames) for e in source.expressions]
        self._init_index(clips_per_expr, seed, max_resample)

    def locate(self, index: int) -> tuple[ExpressionRecord, int]:
        """The expression and anchor frame of item ``index``."""
        k, offset = self._position(index)
        return self.source.expressions[k], offset * self.num_frames

    def _draw(self, index: int, rng: random.Random) -> tuple[tuple[ExpressionRecord, list[int]], np.ndarray]:
        expr, anchor = self.locate(index)
        indices = sample_clip_indices(anchor, expr.video.num_frames, self.num_frames, rng)
        return (expr, indices), self.source.read_masks(expr, indices)

    def _expects_empty(self, key: tuple[object, ...]) -> bool:
        return bool(getattr(key[0], "no_target", False))

    def _warn_exhausted(self, index: int) -> None:
        log.warning(
            "%s: no clip with a visible object in %d attempts from item %d; using the last one (valid all False)",
            self.source.name,
            self.max_resample + 1,
            index,
        )

    def _make_item(
        self, expr: ExpressionRecord, indices: list[int], masks: np.ndarray, np_rng: np.random.Generator
    ) -> ReferringItem:
        frames = self.source.read_frames(expr.video, indices)
        orig_size = (int(frames.shape[1]), int(frames.shape[2]))
        sam, beit, target, caption = self.transform(
            frames, masks, normalize_caption(expr.caption), rng=np_rng
        )
        assert target is not None
        return make_item(sam, beit, target, caption, _meta(expr, indices, orig_size))


class ReferringVideoEvalDataset(Dataset):
    """Evaluation items: one per expression, the whole video, no augmentation (spec §3.1).

    Args:
        source: the split.
        transform: ``ClipTransform(..., train=False)`` (a training transform is rejected).
        max_frames: keep only the first ``max_frames`` frames of each video (smoke runs and debugging; the
            benchmark protocols use every frame). None = all.
        with_masks: read the ground truth when the source has it (False: frames only, for prediction runs that
            score or submit afterwards).

    Items (:class:`~mpgsam2.data.batch.ReferringItem`): the training fields with T = number of frames
    (``frame_indices`` = 0..T-1) and the caption RAW (parity: inference captions are not lower-cased, spec §1.1).
    When ground truth is read: ``masks`` / ``valid`` from the ground truth and ``orig_masks``: bool (T, H, W) at the
    original resolution (for J&F); otherwise ``masks`` are zeros, ``valid`` all False and ``orig_masks`` None.
    """

    def __init__(
        self,
        source: ReferringVideoSource,
        transform: ClipTransform,
        max_frames: int | None = None,
        with_masks: bool = True,
    ) -> None:
        if getattr(transform, "train", False):
            raise ValueError("ReferringVideoEvalDataset needs a transform with train=False (no augmentation)")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
        self.source = source
        self.transform = transform
        self.max_frames = max_frames
        self.with_masks = with_masks and source.has_masks

    def __len__(self) -> int:
        return len(self.source.expressions)

    def __getitem__(self, index: int) -> ReferringItem:
        expr = self.source.expressions[index]
        n = expr.video.num_frames if self.max_frames is None else min(self.max_frames, expr.video.num_frames)
        indices = list(range(n))
        frames = self.source.read_frames(expr.video, indices)
        masks = self.source.read_masks(expr, indices) if self.with_masks else None
        sam, beit, target, caption = self.transform(frames, masks, expr.caption)
        meta = _meta(expr, indices, (int(frames.shape[1]), int(frames.shape[2])))
        if target is not None:
            item = make_item(sam, beit, target, caption, meta)
            item.orig_masks = torch.from_numpy(np.ascontiguousarray(masks))
            return item
        s = self.transform.sam_size
        return ReferringItem(
            sam_frames=sam,
            beit_frames=beit,
            masks=torch.zeros(n, s, s),
            valid=torch.zeros(n, dtype=torch.bool),
            caption=caption,
            meta=meta,
        )

    def video_items(self, indices: Sequence[int]) -> list[ReferringItem]:
        """The items of expressions ``indices`` of one video with its frames read and transformed once.

        The first item holds the video's views as :class:`~mpgsam2.data.transforms.NormalizedFrames` (uint8,
        normalised when a frame is read: the frames of ``self[indices[0]]``); the others carry their own caption
        and meta and empty ``sam_frames`` / ``beit_frames`` tensors (for a consumer that predicts the video's
        expressions together from the first item's frames). ``masks`` / ``valid`` are empty. Only without ground
        truth (prediction runs).
        """
        if self.with_masks:
            raise ValueError("video_items is for prediction runs (with_masks=False)")
        expr = self.source.expressions[indices[0]]
        n = expr.video.num_frames if self.max_frames is None else min(self.max_frames, expr.video.num_frames)
        frames = self.source.read_frames(expr.video, list(range(n)))
        # the views stay uint8 until a frame is read (a quarter of the float views' memory for a long video)
        sam, beit = self.transform.held_views(frames)
        meta = _meta(expr, list(range(n)), (int(frames.shape[1]), int(frames.shape[2])))
        items = [
            ReferringItem(
                sam_frames=sam,
                beit_frames=beit,
                masks=torch.empty(0),
                valid=torch.empty(0),
                caption=expr.caption,
                meta=meta,
            )
        ]
        for index in indices[1:]:
            expr = self.source.expressions[index]
            if expr.video.video_id != meta.video:
                raise ValueError(
                    f"expression {index} is of video {expr.video.video_id!r}, not {meta.video!r}"
                )
            # the evaluation transform leaves captions as they are (no flip; raw case, spec §1.1)
            items.append(
                ReferringItem(
                    sam_frames=torch.empty(0),
                    beit_frames=torch.empty(0),
                    masks=torch.empty(0),
                    valid=torch.empty(0),
                    caption=expr.caption,
                    meta=_meta(expr, meta.frame_indices, meta.orig_size),
                )
            )
        return items
