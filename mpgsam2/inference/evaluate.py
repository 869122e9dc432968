"""Evaluating a model, or a folder of predictions, on one benchmark (``eval.py`` is the command around this).

A video benchmark's videos are predicted one unit at a time into a resumable staging folder (sharded over
processes by cost), then zipped for its submission server or scored locally; RefCOCO/+/g's referring expressions
are staged the same way, one PNG each (sharded round robin), then scored (mIoU, cIoU). What
each benchmark is comes from its row in :mod:`mpgsam2.benchmarks`; the data module (an :class:`EvalDataModule`,
e.g. ``data_modules.RefYTVOSDataModule``) says which row and where its files are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from mpgsam2.benchmarks import Benchmark, benchmark
from mpgsam2.data import (
    ClipTransform,
    RefDAVISSource,
    ReferringBatch,
    ReferringItem,
    ReferringVideoSource,
    SwappedCaptionSource,
)
from mpgsam2.data.image_dataset import ReferringImageEvalDataset
from mpgsam2.inference.images import predict_images_to_staging
from mpgsam2.inference.predictor import PRECISIONS
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

__all__ = [
    "EvalDataModule",
    "annotators_of",
    "eval_targets",
    "evaluate_model",
    "image_eval_dataset",
    "score_folder",
]

log = logging.getLogger(__name__)


class EvalDataModule(Protocol):
    """What evaluation reads from a data module (``data_modules``' data modules all are one; Ref-DAVIS17's also
    has ``annotator``: one annotator set to evaluate, or None for all of them).

    Attributes:
        root: the dataset folder.
        val_split: the split to evaluate; None where the config validates on nothing (the benchmark's default
            split is evaluated then).
        tokenizer_path: the sentencepiece model ``collate`` tokenizes with.
        collate: items -> a batch, captions tokenized.
        num_workers / val_batch_size: loader settings (``val_batch_size``: images per batch on RefCOCO).
        val_max_frames: evaluate only the first N frames of each video (debugging), None for all.
        swap_expressions / seed: replace each caption by another object's (a sanity check), seeded.
    """

    root: Path
    val_split: str | None
    tokenizer_path: str
    num_workers: int
    val_batch_size: int | None
    val_max_frames: int | None
    swap_expressions: bool
    seed: int

    @property
    def collate(self) -> Callable[[list[ReferringItem]], ReferringBatch]: ...

    def eval_transform(self) -> ClipTransform: ...

    def split_source(self, split: str) -> ReferringVideoSource: ...

    def val_source(self) -> ReferringVideoSource: ...


def annotators_of(bench: Benchmark, datamodule: EvalDataModule) -> list[int]:
    """The annotator sets to evaluate: all of the benchmark's (the protocol), or the data config's ``annotator``."""
    annotator = getattr(datamodule, "annotator", None)
    return bench.annotators if annotator is None else [int(annotator)]


def eval_targets(bench: Benchmark, datamodule: EvalDataModule, split: str | None) -> list[EvalTarget]:
    """The sources to predict or score.

    ``split=None``: the data module's validation source, or, where it validates on nothing (the Ref-YouTube-VOS
    recipes), the benchmark's default split. Otherwise the data module's reader of ``split``.
    Ref-DAVIS17 gives one source per annotator set, staged under ``anno_<k>``.
    """
    if bench.annotator_sets:
        split = split or datamodule.val_split or bench.default_split
        targets = [
            EvalTarget(RefDAVISSource(datamodule.root, split, annotator=k), f"anno_{k}")
            for k in annotators_of(bench, datamodule)
        ]
    elif split is None and datamodule.val_split is None:
        targets = [EvalTarget(datamodule.split_source(bench.default_split))]
    elif split is None:
        targets = [EvalTarget(datamodule.val_source())]
    else:
        targets = [EvalTarget(datamodule.split_source(split))]  # the data module knows its dataset's reader
    if datamodule.swap_expressions:
        targets = [
            EvalTarget(SwappedCaptionSource(t.source, int(datamodule.seed)), t.folder) for t in targets
        ]
    return targets


def score_folder(
    predictions: str | Path, datamodule: EvalDataModule, bench: Benchmark, out_dir: Path, split: str | None
) -> dict[str, Any]:
    """Scores a folder (or zip) of PNGs written by any method; writes ``<out_dir>/metrics.json``."""
    if bench.scoring == "images":
        dataset = image_eval_dataset(datamodule, bench, split)
        metrics = score_predictions(predictions, dataset.source, bench, samples=dataset.sample_indices)
        return _record(
            out_dir,
            metrics,
            predictions=str(predictions),
            dataset=bench.name,
            source=_image_source_name(datamodule, dataset),
        )
    targets = eval_targets(bench, datamodule, split)
    metrics = score_predictions(
        predictions,
        targets[0].source,
        bench,
        max_frames=datamodule.val_max_frames,
        annotators=annotators_of(bench, datamodule),
    )
    return _record(
        out_dir, metrics, predictions=str(predictions), dataset=bench.name, source=targets[0].source.name
    )


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
    if bench.scoring == "images":
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
        annotators=annotators_of(bench, datamodule),
    )
    return _record(
        out_dir,
        metrics,
        checkpoint=checkpoint,
        dataset=bench.name,
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
            "dataset": bench.name,
            "mask_format": bench.mask_format,
            "tokenizer": str(datamodule.tokenizer_path),
            **settings,
        }
        check_manifest(out_dir / "staging.json", manifest, restart=restart, staging=staging)
    barrier()
    return staging


def _record(out_dir: Path, metrics: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Writes ``<out_dir>/metrics.json``: the metrics and what they are of (with the dataset's release where it
    has several, e.g. MeViS v1 / v2: their scores are not comparable); returns the metrics."""
    version = benchmark(context["dataset"]).dataset_version if "dataset" in context else None
    if version is not None:
        context["dataset_version"] = version
    write_json_atomic(out_dir / "metrics.json", {**metrics, **context})
    return metrics if version is None else {**metrics, "dataset_version": version}


def image_eval_dataset(
    datamodule: EvalDataModule, bench: Benchmark, split: str | None
) -> ReferringImageEvalDataset:
    """The RefCOCO/+/g items to predict or score: ``split`` (default: the data module's validation split, else the
    benchmark's default split) of the data module's validation dataset (``val_name``), read through its own
    reader (``split_source``); captions swapped when the data config asks (``swap_expressions``)."""
    split = split or datamodule.val_split or bench.default_split
    return ReferringImageEvalDataset(
        datamodule.split_source(split),
        datamodule.eval_transform(),
        swap_captions=bool(datamodule.swap_expressions),
        seed=int(datamodule.seed),
    )


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
    dataset = image_eval_dataset(datamodule, bench, split)
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
    _record(out_dir, metrics, checkpoint=checkpoint, dataset=bench.name, sources=[source_name])
    log.info("mIoU=%.4f cIoU=%.4f over %d samples", metrics["miou"], metrics["ciou"], metrics["num_samples"])
    return metrics
