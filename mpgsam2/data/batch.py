"""The data contract's types: what a dataset's ``__getitem__`` returns and what the collate makes of a list of them.

- :class:`ReferringItem`: one (expression, clip) or (image, sentence) of the torch datasets
  (:class:`~mpgsam2.data.video_dataset.ReferringClipDataset`, :class:`~mpgsam2.data.image_dataset.ReferringImageDataset`
  and their evaluation counterparts).
- :class:`ReferringBatch`: the items stacked along a new batch dimension B with their captions tokenised
  (:class:`~mpgsam2.data.collate.ReferringCollate`); read by the Lightning module, the losses, validation and the
  evaluation and submission code.

- :class:`ItemMeta` (with :class:`ImageRef` for RefCOCO): where an item comes from.

All are plain (mutable) dataclasses of tensors, strings and lists, so Lightning's ``transfer_batch_to_device``
(``apply_to_collection``, which rebuilds dataclasses field by field) moves a batch's tensors to the device.

Shapes: B batch size, T frames, S the SAM 2 view's side (``sam_size``), Hb the BEiT-3 view's side (``beit_size``),
L the longest tokenised caption of the batch, (H, W) a video's or image's original size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = ["FrameView", "ImageRef", "ItemMeta", "ReferringBatch", "ReferringItem"]

# A model view of T frames: a float32 (T, 3, S, S) tensor, or a lazy sequence of T float32 (3, S, S) frames
# (``mpgsam2.data.transforms.NormalizedFrames``, normalised when a frame is read).
FrameView = Tensor | Sequence[Tensor]


@dataclass
class ImageRef:
    """A RefCOCO/+/g item's place in its annotations.

    Attributes:
        dataset: ``refcoco``, ``refcoco+`` or ``refcocog``.
        split: the split of the converted annotation file (``train``, ``val``, ``testA``, ...).
        sample_id: the converted file's ``images[].id``, one per (referred object, sentence): the prediction's
            file name (``<sample_id>.png``).
        image_id: the COCO image id.
        ann_id: the COCO annotation id of the referred object (a list when it is several).
        file_name: the COCO image file.
    """

    dataset: str
    split: str
    sample_id: int
    image_id: int
    ann_id: int | list[int]
    file_name: str


@dataclass
class ItemMeta:
    """Where an item comes from.

    Attributes:
        video: the video id (RefCOCO: the image file's stem: an image is a 1-frame video per sentence).
        exp_id: the expression id within the video (RefCOCO: the sample id as a string).
        frame_names: the T frames' names (file stems), in item order.
        frame_indices: the T frames' indices in the video.
        orig_size: (H, W), the original frame size predictions are resized to.
        image: RefCOCO items' annotation reference; None for video items.
    """

    video: str
    exp_id: str
    frame_names: list[str]
    frame_indices: list[int]
    orig_size: tuple[int, int]
    image: ImageRef | None = None


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
        meta: where the item comes from.
        orig_masks: ``[T, H, W] bool``, the ground truth at the original resolution (evaluation items with ground
            truth, for J&F), else None.
    """

    sam_frames: FrameView
    beit_frames: FrameView
    masks: Tensor
    valid: Tensor
    caption: str
    meta: ItemMeta
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
        meta: B items' :class:`ItemMeta`.
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
    meta: list[ItemMeta]
    orig_masks: list[Tensor | None] | None = None
    is_image: bool = False
