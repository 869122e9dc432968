"""Evaluating a model, or a folder of predictions, on one benchmark (``eval.py`` is the command around this).

A video benchmark's videos are predicted one unit at a time into a resumable staging folder (sharded over
processes by cost, :mod:`mpgsam2.evaluation.runner`), then zipped for its submission server
(:mod:`mpgsam2.evaluation.zips`) or scored locally (:mod:`mpgsam2.metrics.scoring`); RefCOCO/+/g's referring
expressions are staged the same way, one PNG each (sharded round robin), then scored (mIoU, cIoU). What each
benchmark is comes from its row in :mod:`mpgsam2.evaluation.benchmarks`; the data module (an
:class:`EvalDataModule`, e.g. ``data_modules.RefYTVOSDataModule``) says what to evaluate: its targets (annotator
sets and caption swaps included) or its image dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from mpgsam2.data import ClipTransform, ReferringBatch, ReferringItem
from mpgsam2.data.image_dataset import ReferringImageEvalDataset
from mpgsam2.distributed import barrier
from mpgsam2.evaluation.benchmarks import Benchmark
from mpgsam2.evaluation.runner import model_predictor, predict_to_staging
from mpgsam2.evaluation.staging import EvalTarget, StagingArea, check_manifest
from mpgsam2.evaluation.zips import write_submission_zip
from mpgsam2.inference.images import predict_images_to_staging
from mpgsam2.inference.predictor import PRECISIONS
from mpgsam2.metrics.scoring import score_predictions
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.utils import check_tokenizer_fits, write_json_atomic
from mpgsam2.weights import weights_digest

__all__ = [
    "EvalDataModule",
    "eval_targets",
    "evaluate_model",
    "image_eval_dataset",
    "score_folder",
    "target_annotators",
]

log = logging.getLogger(__name__)


class EvalDataModule(Protocol):
    """What evaluation reads from a data module (``data_modules``' data modules all are one).

    Attributes:
        tokenizer_path: the sentencepiece model ``collate`` tokenizes with.
        collate: items -> a batch, captions tokenized.
        num_workers / val_batch_size: loader settings (``val_batch_size``: images per batch on RefCOCO).
        val_max_frames: evaluate only the first N frames of each video (debugging), None for all.
        swap_expressions: each caption replaced by another object's (a sanity check).
    """

    tokenizer_path: str
    num_workers: int
    val_batch_size: int | None
    val_max_frames: int | None
    swap_expressions: bool

    @property
    def collate(self) -> Callable[[list[ReferringItem]], ReferringBatch]: ...

    def eval_transform(self) -> ClipTransform: ...

    def eval_targets(self, bench: Benchmark, split: str | None = None) -> list[EvalTarget]:
        """The sources to predict or score (``split`` None: the validation split, else the benchmark's default
        split), one per annotator set where the benchmark has them, captions swapped on request."""
        ...

    def image_eval_dataset(self, bench: Benchmark, split: str | None = None) -> ReferringImageEvalDataset:
        """RefCOCO/+/g: the referring expressions to predict or score (``split`` as in :meth:`eval_targets`)."""
        ...


def eval_targets(bench: Benchmark, datamodule: EvalDataModule, split: str | None) -> list[EvalTarget]:
    """``datamodule.eval_targets(bench, split)`` (kept for callers of the old function)."""
    return datamodule.eval_targets(bench, split)


def target_annotators(targets: Sequence[EvalTarget]) -> list[int]:
    """The Ref-DAVIS17 annotator sets ``targets`` hold (empty for the other benchmarks)."""
    return [t.annotator for t in targets if t.annotator is not None]


def image_eval_dataset(
    datamodule: EvalDataModule, bench: Benchmark, split: str | None
) -> ReferringImageEvalDataset:
    """``datamodule.image_eval_dataset(bench, split)`` (kept for callers of the old function)."""
    return datamodule.image_eval_dataset(bench, split)


def score_folder(
    predictions: str | Path, datamodule: EvalDataModule, bench: Benchmark, out_dir: Path, split: str | None
) -> dict[str, Any]:
    """Scores a folder (or zip) of PNGs written by any method; writes ``<out_dir>/metrics.json``."""
    if bench.scores_images:
        dataset = datamodule.image_eval_dataset(bench, split)
        metrics = score_predictions(predictions, dataset.source, bench, samples=dataset.sample_indices)
        return _record(
            out_dir,
            metrics,
            bench,
            predictions=str(predictions),
            source=_image_source_name(datamodule, dataset),
        )
    targets = datamodule.eval_targets(bench, split)
    metrics = score_predictions(
        predictions,
        targets[0].source,
        bench,
        max_frames=datamodule.val_max_frames,
        annotators=target_annotators(targets),
    )
    return _record(out_dir, metrics, bench, predictions=str(predictions), source=targets[0].source.name)


def evaluate_model(
    model: MPGSAM2,
    datamodule: EvalDataModule,
    bench: Benchmark,
    out_dir: Path,
    *,
    checkpoint: str,
    split: str | None = None,
    submission: bool | None = None,
    chunk_size: int | None = None,
    restart: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    existence_threshold: float | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Predicts (this process's share of) the benchmark's videos, or RefCOCO/+/g's referring expressions, with
    ``model`` into ``<out_dir>/staging``, then, on the main process, writes the submission zip or scores the
    predictions.

    Args:
        datamodule: set up for evaluation (its collate carries the tokenizer).
        out_dir: the run folder: ``staging/``, ``staging.json``, then ``submission.zip`` or ``metrics.json``.
        checkpoint: where the weights came from (recorded).
        submission: write the zip; None: exactly when the split has no ground truth.
        chunk_size: frames per independent chunk, None for the whole video.
        restart: discard staged predictions of another evaluation instead of refusing (:func:`check_manifest`).
        precision: ``"fp32"`` (the protocol), or ``"bf16"`` / ``"fp16"`` autocast (GPUs; masks may differ where
            a probability is near 0.5, see :func:`mpgsam2.inference.predict_video`); recorded in the manifest.
        compile: ``torch.compile`` the image encoder and memory attention (same masks up to float rounding);
            video benchmarks only.
        existence_threshold: empty every frame of an expression judged absent
            (:func:`~mpgsam2.inference.apply_existence`; MeViS v2); None: off. Recorded in the manifest.

    Returns:
        On the main process the metrics, or ``{"submission": path}``; ``{}`` on the others.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {sorted(PRECISIONS)}")
    if bench.scores_images:
        if compile:
            raise ValueError(f"compile applies to the video benchmarks' tracking; {bench.title} runs images")
        if existence_threshold is not None:
            raise ValueError(f"the existence decision applies to videos; {bench.title} runs images")
        if submission:
            raise ValueError(
                f"{bench.title} has no submission server: it is scored locally (leave submission unset)"
            )
        return _evaluate_images(
            model,
            datamodule,
            bench,
            out_dir,
            checkpoint=checkpoint,
            split=split,
            precision=precision,
            restart=restart,
            device=device,
            rank=rank,
            world=world,
        )
    targets = datamodule.eval_targets(bench, split)
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
    max_frames = datamodule.val_max_frames
    staging = _open_staging(
        out_dir,
        model,
        datamodule,
        bench,
        checkpoint=checkpoint,
        restart=restart,
        rank=rank,
        sources=[t.source.name for t in targets],
        chunk_size=chunk_size,
        max_frames=max_frames,
        precision=precision,
        **({} if existence_threshold is None else {"existence_threshold": existence_threshold}),
    )
    log.info(
        "predicting %s on %s (chunk %s, existence threshold %s, %d process(es)) into %s",
        [t.source.name for t in targets],
        device,
        chunk_size,
        existence_threshold,
        world,
        staging.root,
    )
    predict_to_staging(
        model_predictor(model, device, chunk_size, precision, compile, existence_threshold),
        targets,
        staging,
        bench.mask_format,
        transform=datamodule.eval_transform(),
        collate=datamodule.collate,
        max_frames=max_frames,
        num_workers=int(datamodule.num_workers),
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
        annotators=target_annotators(targets),
    )
    return _record(
        out_dir,
        metrics,
        bench,
        checkpoint=checkpoint,
        sources=[t.source.name for t in targets],
        chunk_size=chunk_size,
        existence_threshold=existence_threshold,
    )


def _open_staging(
    out_dir: Path,
    model: MPGSAM2,
    datamodule: EvalDataModule,
    bench: Benchmark,
    *,
    checkpoint: str,
    restart: bool,
    rank: int,
    **settings: Any,
) -> StagingArea:
    """``<out_dir>/staging``, once the tokenizer is checked to fit the model and the main process has recorded (or
    checked, :func:`check_manifest`) what it holds: the weights, the benchmark, its tokenizer and ``settings``."""
    check_tokenizer_fits(int(datamodule.collate.tokenizer.vocab_size), model, datamodule.tokenizer_path)
    staging = StagingArea(out_dir / "staging")
    if rank == 0:
        manifest = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "weights": weights_digest(model),
            "dataset": bench.name,  # the benchmark; staging.json keeps this key so that older runs resume
            "mask_format": bench.mask_format.value,
            "tokenizer": str(datamodule.tokenizer_path),
            **settings,
        }
        check_manifest(out_dir / "staging.json", manifest, restart=restart, staging=staging)
    barrier()
    return staging


def _record(out_dir: Path, metrics: dict[str, Any], bench: Benchmark, **context: Any) -> dict[str, Any]:
    """Writes ``<out_dir>/metrics.json``: the metrics and what they are of: the benchmark (under ``benchmark``, and
    under its deprecated name ``dataset`` for one release), with the dataset's release where it has several (e.g.
    MeViS v1 / v2: their scores are not comparable); returns the metrics."""
    context = {"benchmark": bench.name, "dataset": bench.name, **context}
    version = bench.dataset_version
    if version is not None:
        context["dataset_version"] = version
    write_json_atomic(out_dir / "metrics.json", {**metrics, **context})
    return metrics if version is None else {**metrics, "dataset_version": version}


def _image_source_name(datamodule: EvalDataModule, dataset: ReferringImageEvalDataset) -> str:
    swapped = "+swapped" if datamodule.swap_expressions else ""
    return dataset.source.name + swapped


def _evaluate_images(
    model: MPGSAM2,
    datamodule: EvalDataModule,
    bench: Benchmark,
    out_dir: Path,
    *,
    checkpoint: str,
    split: str | None,
    restart: bool,
    precision: str,
    device: torch.device | str,
    rank: int,
    world: int,
) -> dict[str, Any]:
    """RefCOCO/+/g (no submission server): each process stages its share of the referring expressions, one PNG
    each, then the main process scores the folder (mIoU, cIoU and the J&F of 1-frame videos)."""
    dataset = datamodule.image_eval_dataset(bench, split)
    source_name = _image_source_name(datamodule, dataset)
    staging = _open_staging(
        out_dir,
        model,
        datamodule,
        bench,
        checkpoint=checkpoint,
        restart=restart,
        rank=rank,
        sources=[source_name],
        precision=precision,
    )
    log.info("predicting %s on %s (%d process(es)) into %s", source_name, device, world, staging.root)
    predict_images_to_staging(
        model,
        dataset,
        staging,
        collate=datamodule.collate,
        batch_size=int(datamodule.val_batch_size or 1),
        num_workers=int(datamodule.num_workers),
        device=device,
        precision=precision,
        rank=rank,
        world=world,
    )
    barrier()
    if rank != 0:
        return {}
    staging.remove_partials()
    metrics = score_predictions(staging.root, dataset.source, bench, samples=dataset.sample_indices)
    _record(out_dir, metrics, bench, checkpoint=checkpoint, sources=[source_name])
    log.info("mIoU=%.4f cIoU=%.4f over %d samples", metrics["miou"], metrics["ciou"], metrics["num_samples"])
    return metrics
