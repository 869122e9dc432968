"""The typed data contract: datasets give ``ReferringItem``s, the collate a ``ReferringBatch`` with the documented
shapes and dtypes, an image batch is told by its ``is_image`` field, and Lightning moves a batch to a device."""

from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch
from helpers.datasets import item_meta

from mpgsam2.data import ReferringBatch, ReferringCollate, ReferringImageCollate, ReferringItem
from mpgsam2.data.transforms import NormalizedFrames
from mpgsam2.lit_module import RVOSLitModule

B, T, S, HB = 2, 3, 16, 8
PAD = 1


class _Tokenizer:
    """Word count + 2 ids per caption, right-padded with ``PAD``."""

    pad_id = PAD

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[0, *range(4, 4 + len(t.split())), 2] for t in texts]
        ids = torch.full((len(rows), max(map(len, rows))), PAD)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != PAD


def _item(k: int, frames: int = T, truth: bool = False) -> ReferringItem:
    g = torch.Generator().manual_seed(k)
    masks = (torch.rand(frames, S, S, generator=g) > 0.5).float()
    return ReferringItem(
        sam_frames=torch.randn(frames, 3, S, S, generator=g),
        beit_frames=torch.randn(frames, 3, HB, HB, generator=g),
        masks=masks,
        valid=masks.flatten(1).any(1),
        caption=" ".join(["word"] * (k + 1)),
        meta=item_meta(f"v{k}", (20, 24), frames),
        orig_masks=torch.zeros(frames, 20, 24, dtype=torch.bool) if truth else None,
    )


def test_collate_gives_the_batch_type_with_the_documented_shapes() -> None:
    items = [_item(0), _item(1)]
    batch = ReferringCollate(_Tokenizer())(items)
    assert type(batch) is ReferringBatch and batch.is_image is False
    assert batch.sam_frames.shape == (B, T, 3, S, S) and batch.sam_frames.dtype == torch.float32
    assert batch.beit_frames.shape == (B, T, 3, HB, HB) and batch.beit_frames.dtype == torch.float32
    assert batch.masks.shape == (B, T, S, S) and batch.masks.dtype == torch.float32
    assert batch.valid.shape == (B, T) and batch.valid.dtype == torch.bool
    assert batch.text_ids.shape == (B, 4) and batch.text_ids.dtype == torch.long
    assert batch.text_padding_mask.dtype == torch.bool
    assert torch.equal(batch.text_padding_mask, batch.text_ids == PAD)
    assert batch.caption == ["word", "word word"] and batch.meta == [items[0].meta, items[1].meta]
    assert batch.orig_masks is None  # no item has ground truth
    for i, item in enumerate(items):
        assert torch.equal(batch.sam_frames[i], item.sam_frames) and torch.equal(batch.valid[i], item.valid)


def test_collate_keeps_ground_truth_per_item_and_refuses_unequal_clips() -> None:
    batch = ReferringCollate(_Tokenizer())([_item(0, truth=True), _item(1)])
    assert batch.orig_masks is not None and batch.orig_masks[0].shape == (T, 20, 24)
    assert batch.orig_masks[1] is None
    with pytest.raises(ValueError, match="batch size 1"):
        ReferringCollate(_Tokenizer())([_item(0), _item(1, frames=T + 1)])


def test_a_lazy_frame_sequence_stays_in_a_batch_of_one() -> None:
    lazy = NormalizedFrames(torch.zeros(T, 3, S, S, dtype=torch.uint8))
    item = dataclasses.replace(_item(0), sam_frames=lazy)
    batch = ReferringCollate(_Tokenizer())([item])
    assert isinstance(batch.sam_frames, list) and batch.sam_frames[0] is lazy
    assert batch.beit_frames.shape == (1, T, 3, HB, HB)


def test_an_image_batch_is_told_by_its_typed_field() -> None:
    items = [_item(0, frames=1), _item(1, frames=1)]
    image = ReferringImageCollate(_Tokenizer())(items)
    video = ReferringCollate(_Tokenizer())(items)
    assert image.is_image is True and video.is_image is False
    assert image.sam_frames.shape == (B, 1, 3, S, S)
    assert {f.name for f in dataclasses.fields(ReferringBatch)} >= {"is_image"}
    assert "image_batch" not in {f.name for f in dataclasses.fields(ReferringBatch)}


def test_lightning_moves_a_batch_to_the_device() -> None:
    # the system relies on Lightning's own transfer (apply_to_collection rebuilds dataclasses field by field)
    assert RVOSLitModule.transfer_batch_to_device is L.LightningModule.transfer_batch_to_device
    batch = ReferringImageCollate(_Tokenizer())([_item(0, frames=1, truth=True), _item(1, frames=1)])
    moved = L.LightningModule().transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert type(moved) is ReferringBatch and moved is not batch
    for name in ("sam_frames", "beit_frames", "masks", "valid", "text_ids", "text_padding_mask"):
        before, after = getattr(batch, name), getattr(moved, name)
        assert after.device.type == "meta", name
        assert (after.shape, after.dtype) == (before.shape, before.dtype), name
        assert before.device.type == "cpu", name  # the original batch is left as it was
    assert moved.orig_masks[0].device.type == "meta" and moved.orig_masks[1] is None
    assert moved.caption == batch.caption and moved.meta == batch.meta and moved.is_image is True
