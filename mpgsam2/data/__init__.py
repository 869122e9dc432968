"""Data pipeline: dataset readers, clip sampling, transforms, torch datasets and collation (plain PyTorch).

See the data contract in the docstrings of :mod:`mpgsam2.data.records` (records), :mod:`mpgsam2.data.sources`
(reader protocol), :mod:`mpgsam2.data.batch` (the item and batch types, :class:`ReferringItem` and
:class:`ReferringBatch`), :mod:`mpgsam2.data.video_dataset` (items) and :mod:`mpgsam2.data.collate` (batches).
"""

from mpgsam2.data.batch import FrameView, ImageRef, ItemMeta, ReferringBatch, ReferringItem
from mpgsam2.data.coco_masks import decode_segmentation
from mpgsam2.data.collate import ReferringCollate
from mpgsam2.data.davis import DAVIS_ANNOTATORS, NUM_DAVIS_ANNOTATORS, RefDAVISSource, davis_annotator
from mpgsam2.data.errors import DatasetError
from mpgsam2.data.image_dataset import ReferringImageCollate, ReferringImageDataset, ReferringImageEvalDataset
from mpgsam2.data.mevis import MEVIS_SPLITS, MeViSSource
from mpgsam2.data.records import (
    ExpressionRecord,
    VideoRecord,
    swap_captions_within_video,
    validate_path_component,
    validate_video_id,
)
from mpgsam2.data.refcoco import REFCOCO_SPLITS, RefCOCOSample, RefCOCOSource, swap_captions_within_image
from mpgsam2.data.sampling import sample_clip_indices
from mpgsam2.data.sources import (
    ReferringVideoSource,
    SwappedCaptionSource,
    VideoSubsetSource,
    holdout_video_ids,
    image_size,
    load_json,
    read_palette_mask,
    read_rgb_frames,
)
from mpgsam2.data.transforms import ClipTransform, caption_flip
from mpgsam2.data.video_dataset import ReferringClipDataset, ReferringVideoEvalDataset, normalize_caption
from mpgsam2.data.ytvos import RefYTVOSSource

__all__ = [
    "DAVIS_ANNOTATORS",
    "MEVIS_SPLITS",
    "NUM_DAVIS_ANNOTATORS",
    "REFCOCO_SPLITS",
    "ClipTransform",
    "DatasetError",
    "ExpressionRecord",
    "FrameView",
    "ImageRef",
    "ItemMeta",
    "MeViSSource",
    "RefCOCOSample",
    "RefCOCOSource",
    "RefDAVISSource",
    "RefYTVOSSource",
    "ReferringBatch",
    "ReferringClipDataset",
    "ReferringCollate",
    "ReferringImageCollate",
    "ReferringImageDataset",
    "ReferringImageEvalDataset",
    "ReferringItem",
    "ReferringVideoEvalDataset",
    "ReferringVideoSource",
    "SwappedCaptionSource",
    "VideoSubsetSource",
    "holdout_video_ids",
    "VideoRecord",
    "caption_flip",
    "davis_annotator",
    "decode_segmentation",
    "image_size",
    "load_json",
    "normalize_caption",
    "read_palette_mask",
    "read_rgb_frames",
    "sample_clip_indices",
    "swap_captions_within_image",
    "swap_captions_within_video",
    "validate_path_component",
    "validate_video_id",
]
