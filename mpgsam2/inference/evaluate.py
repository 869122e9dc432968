"""Evaluating a model, or a folder of predictions, on one benchmark (``eval.py`` is the command around this).

A video benchmark's videos are predicted one unit at a time into a resumable staging folder (sharded over
processes by cost), then zipped for its submission server or scored locally; RefCOCO is scored in memory. What
each benchmark is comes from its row in :mod:`mpgsam2.benchmarks`; the data module (any object with the
attributes used below, e.g. ``data_modules.RefYTVOSDataModule``) says which row and where its files are.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mpgsam2.benchmarks import Benchmark
from mpgsam2.data import RefDAVISSource, SwappedCaptionSource
from mpgsam2.inference.images import evaluate_images
from mpgsam2.inference.submission import (
    EvalTarget,
    StagingArea,
    barrier,
    check_manifest,
    model_predictor,
    predict_to_staging,
    write_submission_zip,
)
from mpgsam2.metrics.scoring import score_predictions
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.utils import check_tokenizer_fits, write_json_atomic
from mpgsam2.weights import weights_digest

__all__ = ["annotators_of", "eval_targets", "evaluate_model", "score_folder"]

log = logging.getLogger(__name__)


def annotators_of(bench: Benchmark, datamodule: Any) -> list[int]:
    """The annotator sets to evaluate: all of the benchmark's (the protocol), or the data config's ``annotator``."""
    annotator = getattr(datamodule, "annotator", None)
    return bench.annotators if annotator is None else [int(annotator)]


def eval_targets(bench: Benchmark, datamodule: Any, split: str | None) -> list[EvalTarget]:
    """The sources to predict or score.

    ``split=None``: the data module's validation source, or, where it validates on nothing (the Ref-YouTube-VOS
    recipes), the benchmark's default split. Otherwise the data module's reader of ``split``.
    Ref-DAVIS17 gives one source per annotator set, staged under ``anno_<k>``.
    """
    root = getattr(datamodule, "root", None)
    if bench.annotator_sets:
        split = split or getattr(datamodule, "val_split", None) or bench.default_split
        targets = [
            EvalTarget(RefDAVISSource(root, split, annotator=k), f"anno_{k}")
            for k in annotators_of(bench, datamodule)
        ]
    elif split is None and getattr(datamodule, "val_split", None) is None:
        targets = [EvalTarget(datamodule.split_source(bench.default_split))]
    elif split is None:
        targets = [EvalTarget(datamodule.val_source())]
    elif hasattr(datamodule, "split_source"):
        targets = [EvalTarget(datamodule.split_source(split))]  # the data module knows its dataset's reader
    else:
        raise ValueError(
            f"split={split!r}: {type(datamodule).__name__} reads no named split; leave split unset"
        )
    if getattr(datamodule, "swap_expressions", False):
        seed = int(getattr(datamodule, "seed", 0))
        targets = [EvalTarget(SwappedCaptionSource(t.source, seed), t.folder) for t in targets]
    return targets


def score_folder(
    predictions: str | Path, datamodule: Any, bench: Benchmark, out_dir: Path, split: str | None
) -> dict[str, Any]:
    """Scores a folder (or zip) of PNGs written by any method; writes ``<out_dir>/metrics.json``."""
    if bench.mask_format is None:
        raise ValueError(f"predictions= scores PNG folders; {bench.title} is scored with ckpt=")
    targets = eval_targets(bench, datamodule, split)
    metrics = score_predictions(
        predictions,
        targets[0].source,
        bench,
        max_frames=getattr(datamodule, "val_max_frames", None),
        annotators=annotators_of(bench, datamodule),
    )
    return _record(
        out_dir, metrics, predictions=str(predictions), dataset=bench.name, source=targets[0].source.name
    )


def evaluate_model(
    model: MPGSAM2,
    datamodule: Any,
    bench: Benchmark,
    out_dir: Path,
    *,
    checkpoint: str,
    split: str | None = None,
    submission: bool | None = None,
    chunk_size: int | None = None,
    restart: bool = False,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Predicts (this process's share of) the benchmark's videos with ``model``, then, on the main process,
    writes the submission zip or scores the predictions.

    Args:
        datamodule: set up for evaluation (its collate carries the tokenizer).
        out_dir: the run folder: ``staging/``, ``staging.json``, then ``submission.zip`` or ``metrics.json``.
        checkpoint: where the weights came from (recorded).
        submission: write the zip; None: exactly when the split has no ground truth.
        chunk_size: frames per independent chunk, None for the whole video.
        restart: discard staged predictions of another evaluation instead of refusing (:func:`check_manifest`).

    Returns:
        On the main process the metrics, or ``{"submission": path}``; ``{}`` on the others.
    """
    if bench.scoring == "images":
        return _evaluate_images(model, datamodule, out_dir, checkpoint, split, rank, device)
    targets = eval_targets(bench, datamodule, split)
    has_masks = all(t.source.has_masks for t in targets)
    submission = (not has_masks) if submission is None else bool(submission)
    if submission and not bench.has_submission:
        raise ValueError(
            f"{bench.title} has no submission server: it is scored locally (leave submission unset)"
        )
    if not submission and not has_masks:
        raise ValueError(
            f"{targets[0].source.name} has no public ground truth: it cannot be scored here; use submission=true"
        )
    check_tokenizer_fits(int(datamodule.collate.tokenizer.vocab_size), model, datamodule.tokenizer_path)
    max_frames = getattr(datamodule, "val_max_frames", None)
    staging = StagingArea(out_dir / "staging")
    if rank == 0:
        check_manifest(
            out_dir / "staging.json",
            {
                "checkpoint": str(Path(checkpoint).resolve()),
                "weights": weights_digest(model),
                "dataset": bench.name,
                "sources": [t.source.name for t in targets],
                "chunk_size": chunk_size,
                "max_frames": max_frames,
                "mask_format": bench.mask_format,
                "tokenizer": str(datamodule.tokenizer_path),
            },
            restart=restart,
            staging=staging,
        )
    barrier()
    log.info(
        "predicting %s on %s (chunk %s, %d process(es)) into %s",
        [t.source.name for t in targets],
        device,
        chunk_size,
        world,
        staging.root,
    )
    predict_to_staging(
        model_predictor(model, device, chunk_size),
        targets,
        staging,
        bench.mask_format,
        transform=datamodule.eval_transform(),
        collate=datamodule.collate,
        max_frames=max_frames,
        num_workers=int(getattr(datamodule, "num_workers", 0)),
        rank=rank,
        world=world,
    )
    barrier()
    if rank != 0:
        return {}
    staging.remove_partials()
    if submission:
        return {"submission": str(write_submission_zip(out_dir / "submission.zip", staging, targets, bench))}
    metrics = score_predictions(
        staging.root,
        targets[0].source,
        bench,
        max_frames=max_frames,
        annotators=annotators_of(bench, datamodule),
    )
    return _record(
        out_dir,
        metrics,
        checkpoint=checkpoint,
        dataset=bench.name,
        sources=[t.source.name for t in targets],
        chunk_size=chunk_size,
    )


def _record(out_dir: Path, metrics: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Writes ``<out_dir>/metrics.json``: the metrics and what they are of; returns the metrics."""
    write_json_atomic(out_dir / "metrics.json", {**metrics, **context})
    return metrics


def _evaluate_images(
    model: MPGSAM2,
    datamodule: Any,
    out_dir: Path,
    checkpoint: str,
    split: str | None,
    rank: int,
    device: torch.device | str,
) -> dict[str, Any]:
    """RefCOCO/+/g validation (no submission server): mIoU, cIoU and J&F on the main process."""
    if rank != 0:
        return {}
    if split:
        datamodule.val_split = str(split)
    datamodule.setup("validate")
    metrics = evaluate_images(model.eval(), datamodule.val_dataloader(), device)
    _record(out_dir, metrics, checkpoint=checkpoint, dataset="refcoco")
    log.info("mIoU=%.4f cIoU=%.4f over %d samples", metrics["miou"], metrics["ciou"], metrics["num_samples"])
    return metrics
