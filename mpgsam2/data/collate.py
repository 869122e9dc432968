"""Batch collation with tokenisation (the data contract's batches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from mpgsam2.data.batch import FrameView, ReferringBatch, ReferringItem

__all__ = ["ReferringCollate"]


class _Tokenizer(Protocol):
    pad_id: int

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]: ...


def _stacked(name: str, values: list[Tensor], items: Sequence[ReferringItem]) -> Tensor:
    shapes = {tuple(t.shape) for t in values}
    if len(shapes) > 1:
        videos = [item.meta.video for item in items]
        raise ValueError(
            f"cannot stack {name!r} of shapes {sorted(shapes)} (videos {videos}); items of different "
            "lengths or sizes need batch size 1"
        )
    return torch.stack(values)


def _stacked_frames(
    name: str, views: list[FrameView], items: Sequence[ReferringItem]
) -> Tensor | list[FrameView]:
    if len(items) == 1 and not isinstance(views[0], Tensor):
        return views  # a lazy frame sequence (one video): kept as is, in a batch of one
    return _stacked(name, views, items)  # type: ignore[arg-type]


class ReferringCollate:
    """Collates dataset items into a :class:`~mpgsam2.data.batch.ReferringBatch` and tokenises the captions.

    Picklable when the tokenizer is (``Beit3Tokenizer`` is), so it can be a DataLoader ``collate_fn`` with
    worker processes.

    Args:
        tokenizer: ``texts -> (ids (B, L) long, attention_mask (B, L) bool, True = real token)``, right-padded
            with ``tokenizer.pad_id`` (e.g. :class:`mpgsam2.text.Beit3Tokenizer`).

    The batch's shapes are documented on :class:`~mpgsam2.data.batch.ReferringBatch`; ``text_padding_mask`` is
    ``ids == pad_id`` (parity: derived from the ids, so with ``unk_as_pad`` unknown pieces count as padding too).
    ``is_image`` is the class attribute :attr:`is_image` (True for :class:`~mpgsam2.data.image_dataset.ReferringImageCollate`).
    """

    is_image = False

    def __init__(self, tokenizer: _Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return f"ReferringCollate(tokenizer={self.tokenizer!r})"

    def __call__(self, items: Sequence[ReferringItem]) -> ReferringBatch:
        """Stacks ``items`` (they must share T and sizes; eval items of different videos: use batch size 1)."""
        if not items:
            raise ValueError("cannot collate an empty batch")
        sam_frames = _stacked_frames("sam_frames", [item.sam_frames for item in items], items)
        beit_frames = _stacked_frames("beit_frames", [item.beit_frames for item in items], items)
        masks = _stacked("masks", [item.masks for item in items], items)
        valid = _stacked("valid", [item.valid for item in items], items)
        captions = [str(item.caption) for item in items]
        ids, attention = self.tokenizer(captions)
        has_truth = any(item.orig_masks is not None for item in items)
        return ReferringBatch(
            sam_frames=sam_frames,
            beit_frames=beit_frames,
            masks=masks,
            valid=valid,
            text_ids=ids,
            text_padding_mask=~attention,
            caption=captions,
            meta=[item.meta for item in items],
            orig_masks=[item.orig_masks for item in items] if has_truth else None,
            is_image=self.is_image,
        )
