"""The data contract's types: what a dataset's ``__getitem__`` returns and what the collate makes of a list of them.

- :class:`ReferringItem`: one (expression, clip) or (image, sentence) of the torch datasets
  (:class:`~mpgsam2.data.video_dataset.ReferringClipDataset`, :class:`~mpgsam2.data.refcoco.ReferringImageDataset`
  and their evaluation counterparts).
- :class:`ReferringBatch`: the items stacked along a new batch dimension B with their captions tokenised
  (:class:`~mpgsam2.data.collate.ReferringCollate`); read by the Lightning module, the losses, validation and the
  evaluation and submission code.

Both are plain (mutable) dataclasses of tensors, strings and meta dicts, so Lightning's ``transfer_batch_to_device``
(``apply_to_collection``, which rebuilds dataclasses field by field) moves a batch's tensors to the device.

Shapes: B batch size, T frames, S the SAM 2 view's side (``sam_size``), Hb the BEiT-3 view's side (``beit_size``),
L the longest tokenised caption of the batch, (H, W) a video's or image's original size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["FrameView", "ReferringBatch", "ReferringItem"]

# A model view of T frames: a float32 (T, 3, S, S) tensor, or a lazy sequence of T float32 (3, S, S) frames
# (``mpgsam2.data.transforms.NormalizedFrames``, normalised when a frame is read).
FrameView = Tensor | Sequence[Tensor]


@dataclass
class ReferringItem:
    """One dataset item: an expression over T frames (T = 1 for an image).

    Attributes:
        sam_frames: ``[T, 3, S, S] float32``, the SAM 2 view (normalised); in a prediction run's
            ``video_items`` the first item holds a lazy :class:`~mpgsam2.data.transforms.NormalizedFrames` and
            the others an empty tensor.
        beit_frames: ``[T, 3, Hb, Hb] float32``, the BEiT-3 view (normalised); as ``sam_frames``.
        masks: ``[T, S, S] float32`` 0/1, the target at the SAM resolution (zeros without ground truth; empty in
            ``video_items``).
        valid: ``[T] bool``, the object is present in the frame (all False without ground truth).
        caption: the expression (training: lower-cased, whitespace-normalised, left/right swapped if flipped;
            evaluation: raw).
        meta: where the item comes from: ``video``, ``exp_id``, ``frame_names``, ``frame_indices``,
            ``orig_size`` = (H, W); RefCOCO items also ``dataset``, ``split``, ``sample_id``, ``image_id``,
            ``ann_id``, ``file_name``.
        orig_masks: ``[T, H, W] bool``, the ground truth at the original resolution (evaluation items with ground
            truth, for J&F), else None.
    """

    sam_frames: FrameView
    beit_frames: FrameView
    masks: Tensor
    valid: Tensor
    caption: str
    meta: dict[str, object]
    orig_masks: Tensor | None = None


@dataclass
class ReferringBatch:
    """Collated items (:class:`~mpgsam2.data.collate.ReferringCollate`).

    Attributes:
        sam_frames: ``[B, T, 3, S, S] float32``; a batch of one item with a lazy frame sequence keeps it as
            ``[sequence]``.
        beit_frames: ``[B, T, 3, Hb, Hb] float32``; as ``sam_frames``.
        masks: ``[B, T, S, S] float32`` 0/1.
        valid: ``[B, T] bool``.
        text_ids: ``[B, L] long``, token ids right-padded with the tokenizer's ``pad_id``.
        text_padding_mask: ``[B, L] bool``, True = padding (``text_ids == pad_id``).
        caption: B captions.
        meta: B meta dicts (see :class:`ReferringItem`).
        orig_masks: B ``[T, H, W] bool`` ground truths (None for an item without), or None when no item has one.
        is_image: the items are single images (RefCOCO, T = 1): the Lightning module and evaluation run the
            model's batched image path (``MPGSAM2.forward_images`` on ``sam_frames[:, 0]``, spec §1.7).
    """

    sam_frames: Tensor | list[FrameView]
    beit_frames: Tensor | list[FrameView]
    masks: Tensor
    valid: Tensor
    text_ids: Tensor
    text_padding_mask: Tensor
    caption: list[str]
    meta: list[dict[str, object]]
    orig_masks: list[Tensor | None] | None = None
    is_image: bool = False
