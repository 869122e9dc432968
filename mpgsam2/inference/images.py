"""Referring image segmentation (RefCOCO/+/g): predicting masks of image batches, staging them as PNGs, and
scoring them in memory.

Predictions go through the model's batched image path (spec §1.7) and are resized bilinearly to each image's
original size, foreground where the logit is > 0 (sigmoid > 0.5). :func:`predict_images_to_staging` writes one
0/255 ``L`` PNG per referring expression, ``<staging>/<sample_id>.png`` (the ``refcoco`` row of
:mod:`mpgsam2.evaluation.benchmarks`), each atomically (:meth:`~mpgsam2.evaluation.staging.StagingArea.write_png`); a rerun
skips the files already there. The scores (mIoU, cIoU and the J&F of 1-frame videos) are
:class:`~mpgsam2.metrics.ImageIoU`'s, whether in memory (:func:`evaluate_images`) or from the PNGs
(:func:`mpgsam2.metrics.scoring.score_images`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from mpgsam2.data.batch import ReferringBatch, ReferringItem
from mpgsam2.data.errors import DatasetError
from mpgsam2.data.image_dataset import ReferringImageEvalDataset
from mpgsam2.distributed import shard
from mpgsam2.evaluation.benchmarks import benchmark
from mpgsam2.evaluation.staging import StagingArea
from mpgsam2.inference.predictor import PRECISIONS, resize_logits
from mpgsam2.metrics import ImageIoU
from mpgsam2.modeling.mpgsam2 import MPGSAM2

__all__ = ["evaluate_images", "image_prediction_names", "predict_image_masks", "predict_images_to_staging"]

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_image_masks(
    model: MPGSAM2, batch: ReferringBatch, device: torch.device | str = "cpu", precision: str = "fp32"
) -> list[Tensor]:
    """The masks of one image batch (``ReferringImageCollate`` output, T = 1): per sample a bool CPU (H, W) tensor
    at its original size (``meta.orig_size``); ``precision`` as :func:`mpgsam2.inference.predict_video`'s."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        out = model.forward_images(
            batch.sam_frames[:, 0].to(device),
            batch.beit_frames[:, 0].to(device),
            batch.text_ids.to(device),
            batch.text_padding_mask.to(device),
        )
    return [
        (resize_logits(out.pred_masks[i : i + 1], meta.orig_size)[0, 0] > 0).cpu()
        for i, meta in enumerate(batch.meta)
    ]


@torch.inference_mode()
def evaluate_images(
    model: MPGSAM2, batches: Iterable[ReferringBatch], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Scores image batches (``ReferringImageCollate`` output: T = 1, ``orig_masks`` per sample) in memory.

    Returns:
        ``{"miou", "ciou", "j", "f", "jf", "num_samples"}`` (see :class:`~mpgsam2.metrics.ImageIoU`).
    """
    scores = ImageIoU()
    for batch in batches:
        for pred, target in zip(predict_image_masks(model, batch, device), batch.orig_masks):
            scores.update(pred, target.bool().cpu())
    return scores.compute()


def image_prediction_names(dataset: ReferringImageEvalDataset) -> list[str]:
    """The prediction file of each item of ``dataset`` (``<sample_id>.png``).

    Raises:
        DatasetError: two items share a sample id (naming the annotation file and the id).
    """
    bench = benchmark("refcoco")
    names = [
        bench.prediction_path(sample_id=dataset.source.sample(i).sample_id) for i in dataset.sample_indices
    ]
    if len(set(names)) != len(names):
        dup = next(n for n, count in Counter(names).items() if count > 1)
        raise DatasetError(f"{dataset.source.annotation_file}: two samples would both be predicted as {dup}")
    return names


def predict_images_to_staging(
    model: MPGSAM2,
    dataset: ReferringImageEvalDataset,
    staging: StagingArea,
    *,
    collate: Callable[[list[ReferringItem]], ReferringBatch],
    batch_size: int = 1,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    rank: int = 0,
    world: int = 1,
) -> list[str]:
    """Predicts this process's share of ``dataset``'s referring expressions that have no PNG yet and stages them.

    Items are sharded round robin over ``world`` processes (:func:`~mpgsam2.inference.submission.shard`; every
    image costs about the same), then the ones already staged are skipped, so a restarted run only predicts what
    is missing, with any number of processes. Items are batched ``batch_size`` at a time in dataset order.

    Args:
        dataset: the split's evaluation items (``ReferringImageEvalDataset``).
        collate: ``ReferringImageCollate`` with the model's tokenizer.

    Returns:
        The files written by this call (relative to ``staging.root``).
    """
    names = image_prediction_names(dataset)
    mine = shard(list(range(len(names))), rank, world)
    pending = [k for k in mine if not staging.has_file(names[k])]
    log.info(
        "rank %d/%d: %d of %d images to predict (%d of its share done)",
        rank,
        world,
        len(pending),
        len(names),
        len(mine) - len(pending),
    )
    if not pending:
        return []
    model.eval()
    loader = DataLoader(
        Subset(dataset, pending),
        batch_size=max(1, int(batch_size)),
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
    )
    todo = iter(pending)
    written = []
    for batch in loader:
        for mask, meta in zip(predict_image_masks(model, batch, device, precision), batch.meta):
            k = next(todo)
            name = names[k]
            assert (
                meta.image is not None
                and meta.image.sample_id == dataset.source.sample(dataset.sample_indices[k]).sample_id
            ), (
                meta,
                name,
            )
            staging.write_png(name, mask.numpy().astype(np.uint8) * 255)
            written.append(name)
    return written
