"""Batch collation with tokenisation (the data contract's batches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["ReferringCollate"]

_STACKED = ("sam_frames", "beit_frames", "masks", "valid")


class _Tokenizer(Protocol):
    pad_id: int

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]: ...


class ReferringCollate:
    """Collates dataset items into a batch and tokenises the captions.

    Picklable when the tokenizer is (``Beit3Tokenizer`` is), so it can be a DataLoader ``collate_fn`` with
    worker processes.

    Args:
        tokenizer: ``texts -> (ids (B, L) long, attention_mask (B, L) bool, True = real token)``, right-padded
            with ``tokenizer.pad_id`` (e.g. :class:`mpgsam2.text.Beit3Tokenizer`).

    Batch (dict):
        sam_frames: float32 (B, T, 3, S, S); beit_frames: float32 (B, T, 3, Hb, Hb); masks: float32 (B, T, S, S);
        valid: bool (B, T); text_ids: long (B, L); text_padding_mask: bool (B, L), True = padding (``ids ==
        pad_id``; parity: derived from the ids, so with ``unk_as_pad`` unknown pieces count as padding too);
        caption: list[str]; meta: list[dict]; orig_masks (when the items have it): list of bool (T, H, W).
        An item's lazy frame sequence (e.g. ``NormalizedFrames``) is kept as ``[sequence]`` in a batch of one.
    """

    def __init__(self, tokenizer: _Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return f"ReferringCollate(tokenizer={self.tokenizer!r})"

    def __call__(self, items: Sequence[dict[str, object]]) -> dict[str, object]:
        """Stacks ``items`` (they must share T and sizes; eval items of different videos: use batch size 1)."""
        if not items:
            raise ValueError("cannot collate an empty batch")
        batch: dict[str, object] = {}
        for key in _STACKED:
            tensors = [item[key] for item in items]
            if len(items) == 1 and not isinstance(tensors[0], Tensor):
                batch[key] = tensors  # a lazy frame sequence (one video): kept as is, in a batch of one
                continue
            shapes = {tuple(t.shape) for t in tensors}  # type: ignore[union-attr]
            if len(shapes) > 1:
                videos = [item["meta"]["video"] for item in items]  # type: ignore[index]
                raise ValueError(
                    f"cannot stack {key!r} of shapes {sorted(shapes)} (videos {videos}); items of different "
                    "lengths or sizes need batch size 1"
                )
            batch[key] = torch.stack(tensors)  # type: ignore[arg-type]
        captions = [str(item["caption"]) for item in items]
        ids, attention = self.tokenizer(captions)
        batch["text_ids"] = ids
        batch["text_padding_mask"] = ~attention
        batch["caption"] = captions
        batch["meta"] = [item["meta"] for item in items]
        if any("orig_masks" in item for item in items):
            batch["orig_masks"] = [item.get("orig_masks") for item in items]
        return batch
