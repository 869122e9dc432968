"""Evaluate MPG-SAM 2, write leaderboard submissions, or score predictions (logic in ``mpgsam2.inference``).

    # validate a train.py checkpoint with its run's data config (+data.key=value overrides that config)
    python eval.py ckpt=logs/train/runs/<run>/checkpoints/final.ckpt
    # a released MPG-SAM 2 folder (config.json, weights, sentencepiece.bpe.model) or our export: pick the data
    python eval.py ckpt=weights/MPG-SAM2-ytvos data=ytvos data.root=/data/ref-youtube-vos    # -> submission.zip
    python eval.py ckpt=weights/MPG-SAM2-mevis data=mevis data.root=/data/mevis split=valid_u  # local J&F
    python eval.py ckpt=weights/MPG-SAM2-mevis data=mevis data.root=/data/mevis split=valid    # -> submission.zip
    python eval.py ckpt=weights/MPG-SAM2-ytvos data=davis data.root=/data/ref-davis            # 4 annotators
    # score PNGs written by any method (a folder or a zip) against a split with ground truth
    python eval.py predictions=/path/to/pngs data=mevis data.root=/data/mevis split=valid_u
    # N GPUs: each process predicts its share of the videos, rank 0 zips / scores
    torchrun --nproc_per_node=8 eval.py ckpt=... data=ytvos hydra.run.dir=logs/eval/ytvos_valid
    # resume an interrupted run: the same command with the same run folder (finished videos are skipped)

Predictions are staged per video under ``<run dir>/staging`` (a video appears there only when complete), then
zipped to ``<run dir>/submission.zip`` (temp name, rename) or scored. A scoring run writes
``<run dir>/metrics.json`` and prints ``j=<v> f=<v> jf=<v>`` as its last line; a submission run prints the zip's
path last.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from data_modules import UnsafeConfigError, checked_data_config
from mpgsam2.data import (
    MeViSSource,
    RefDAVISSource,
    RefYTVOSSource,
    SwappedCaptionSource,
)
from mpgsam2.inference.images import evaluate_images
from mpgsam2.inference.scoring import score_predictions
from mpgsam2.inference.submission import (
    DATASET_KINDS,
    MASK_FORMATS,
    EvalTarget,
    StagingArea,
    barrier,
    check_manifest,
    model_predictor,
    predict_to_staging,
    rank_and_world,
    write_submission_zip,
)
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.utils import check_tokenizer_fits, write_json_atomic
from mpgsam2.weights import CheckpointError, load_model, weights_digest
from mpgsam2.weights.checkpoints import read_train_checkpoint

log = logging.getLogger("eval")

NUM_DAVIS_ANNOTATORS = 4
MEVIS_CHUNK = 24  # spec §3.2: MeViS is evaluated in independent 24-frame chunks


# ------------------------------------------------------------------------------------------------ the model


def stored_run_config(path: str | Path, run_config: Any) -> DictConfig:
    """The parts of a ``train.py`` checkpoint's stored run config that evaluation uses (its data config and
    validation chunk size), checked to be data: nothing read from a checkpoint is instantiated unless it names
    one of the project's data modules (``data_modules.checked_data_config``).

    Raises:
        CheckpointError: the checkpoint stores no run config.
        UnsafeConfigError: the stored config asks for anything but plain values of a known data module.
    """
    if not isinstance(run_config, Mapping):
        raise CheckpointError(f"{path}: not a train.py checkpoint (no stored 'mpgsam2.config')")
    data = checked_data_config(run_config.get("data"), str(path))
    chunk = (run_config.get("system") or {}).get("eval_chunk_size")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)):
        raise UnsafeConfigError(f"{path}: system.eval_chunk_size={chunk!r} is not an integer or null")
    return OmegaConf.create({"data": data, "system": {"eval_chunk_size": chunk}})


# ------------------------------------------------------------------------------------------------ the data


def data_config(cfg: DictConfig, run_config: DictConfig | None) -> DictConfig:
    """The data module config: a selected data group (``data=mevis``, it has a ``_target_``) as is; otherwise the
    checkpoint run's data config with ``cfg.data`` merged over it."""
    given = cfg.get("data") or OmegaConf.create({})
    if "_target_" in given:
        return given
    if run_config is None:
        raise ValueError(
            "no dataset given: select one with data=<ytvos|mevis|davis> (and data.root=...); only a train.py "
            "checkpoint carries its own data config"
        )
    return OmegaConf.merge(run_config.data, given)


def dataset_kind(datamodule: Any, kind: str | None) -> str:
    """``kind`` if given, else inferred from the data module's class name (unknown ones are read like
    Ref-YouTube-VOS: nested per-expression PNGs)."""
    if kind is not None:
        if kind not in (*DATASET_KINDS, "refcoco"):
            raise ValueError(f"dataset={kind!r}: expected one of {(*DATASET_KINDS, 'refcoco')}")
        return kind
    name = type(datamodule).__name__.lower()
    if "refcoco" in name:
        return "refcoco"
    return "mevis" if "mevis" in name else "davis" if "davis" in name else "ytvos"


def davis_annotators(datamodule: Any) -> list[int]:
    """The Ref-DAVIS17 annotator sets to evaluate: all four (the protocol), or the data config's ``annotator``."""
    annotator = getattr(datamodule, "annotator", None)
    return list(range(NUM_DAVIS_ANNOTATORS)) if annotator is None else [int(annotator)]


def eval_targets(kind: str, datamodule: Any, split: str | None) -> list[EvalTarget]:
    """The sources to predict or score: the data module's validation source (``split=None``; its dataset's
    ``eval_split`` where it validates on nothing) or the reader of ``split``; for Ref-DAVIS17 one source per annotator set, staged under ``anno_<k>``."""
    root = getattr(datamodule, "root", None)
    if kind == "davis":
        split = split or getattr(datamodule, "val_split", None) or "valid"
        targets = [
            EvalTarget(RefDAVISSource(root, split, annotator=k), f"anno_{k}")
            for k in davis_annotators(datamodule)
        ]
    elif split is None and getattr(datamodule, "val_split", None) is None and hasattr(datamodule, "split_source"):
        # a recipe that validates on nothing (Ref-YouTube-VOS) is evaluated on its dataset's leaderboard split
        targets = [EvalTarget(datamodule.split_source(datamodule.eval_split))]
    elif split is None:
        targets = [EvalTarget(datamodule.val_source())]
    elif kind == "mevis":
        targets = [EvalTarget(MeViSSource(root, split))]
    elif root is not None:
        targets = [EvalTarget(RefYTVOSSource(root, split))]
    else:
        raise ValueError(f"split={split!r}: {type(datamodule).__name__} has no `root`; leave split unset")
    if getattr(datamodule, "swap_expressions", False):
        seed = int(getattr(datamodule, "seed", 0))
        targets = [EvalTarget(SwappedCaptionSource(t.source, seed), t.folder) for t in targets]
    return targets


def chunk_size(
    cfg: DictConfig, kind: str, run_config: DictConfig | None, from_checkpoint: bool
) -> int | None:
    """``eval_chunk_size``: an int, null (whole video) or ``auto``: the checkpoint's own validation setting when
    evaluating with its data config, else the protocol's (MeViS 24 frames, whole video otherwise)."""
    value = cfg.get("eval_chunk_size", "auto")
    if value != "auto":
        return None if value is None else int(value)
    if from_checkpoint and run_config is not None:
        return run_config.get("system", {}).get("eval_chunk_size")
    return MEVIS_CHUNK if kind == "mevis" else None


# ------------------------------------------------------------------------------------------------ processes


def setup_distributed(cfg: DictConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, whether this call initialised ``torch.distributed``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is started here (NCCL on GPUs, else Gloo), unless
    something (e.g. Lightning) did already.
    """
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # the ranks wait for each other at the end, possibly for hours on uneven shards
        timeout = datetime.timedelta(minutes=float(cfg.get("dist_timeout_min", 360)))
        dist.init_process_group(backend=backend, timeout=timeout)
        created = True
    rank, world = rank_and_world()
    wanted = str(cfg.get("device", "auto"))
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(wanted)
    if device.type == "cuda" and device.index is None:
        device = torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1)
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device, created


def shared_output_dir(output_dir: str) -> Path:
    """Rank 0's run folder on every rank (each torchrun process composes its own time-stamped folder)."""
    if dist.is_available() and dist.is_initialized():
        holder = [output_dir]
        dist.broadcast_object_list(holder, src=0)
        output_dir = holder[0]
    return Path(output_dir)


# ------------------------------------------------------------------------------------------------ the run


def run(cfg: DictConfig) -> dict[str, Any]:
    """Runs the evaluation ``cfg`` describes (see the module docstring).

    Returns:
        On the main process: the metrics (``j``, ``f``, ``jf``, ...) of a scoring run, or ``{"submission":
        path}``; on other processes ``{}``.
    """
    L.seed_everything(cfg.seed, workers=True)
    rank, world, device, created = setup_distributed(cfg)
    try:
        out_dir = shared_output_dir(str(cfg.paths.output_dir))
        if cfg.get("predictions"):
            return _score_folder(cfg, out_dir, rank)
        if not cfg.get("ckpt"):
            raise ValueError(
                "nothing to evaluate: give ckpt=<checkpoint or weights folder> or predictions=<folder>"
            )
        return _evaluate_model(cfg, out_dir, rank, world, device)
    finally:
        if created:
            dist.destroy_process_group()


def _datamodule(
    cfg: DictConfig, run_config: DictConfig | None, model: MPGSAM2 | None, tokenizer: Path | None
):  # noqa: ANN202
    data_cfg = data_config(cfg, run_config)
    if tokenizer is not None:
        with open_dict(data_cfg):
            data_cfg.tokenizer_path = str(tokenizer)
    sizes = {}
    if model is not None:
        sizes = {"sam_size": model.sam.image_size, "beit_size": int(model.config.beit3["img_size"])}
    datamodule = instantiate(data_cfg, **sizes)
    if rank_and_world()[0] == 0:
        datamodule.prepare_data()  # the synthetic dataset is generated on first use
    barrier()
    return datamodule


def _score_folder(cfg: DictConfig, out_dir: Path, rank: int) -> dict[str, Any]:
    run_config = None
    if cfg.get("ckpt") and Path(cfg.ckpt).is_file():
        run_config = stored_run_config(cfg.ckpt, read_train_checkpoint(cfg.ckpt).stored.get("config"))
    datamodule = _datamodule(cfg, run_config, None, None)
    kind = dataset_kind(datamodule, cfg.get("dataset"))
    if kind == "refcoco":
        raise ValueError(
            "predictions= scores video layouts (ytvos, mevis, davis); RefCOCO is scored with ckpt="
        )
    targets = eval_targets(kind, datamodule, cfg.get("split"))
    if rank != 0:
        return {}
    metrics = score_predictions(
        cfg.predictions,
        targets[0].source,
        kind,
        max_frames=getattr(datamodule, "val_max_frames", None),
        annotators=davis_annotators(datamodule),
    )
    record = {
        **metrics,
        "predictions": str(cfg.predictions),
        "dataset": kind,
        "source": targets[0].source.name,
    }
    write_json_atomic(out_dir / "metrics.json", record)
    return metrics


def _evaluate_model(
    cfg: DictConfig, out_dir: Path, rank: int, world: int, device: torch.device
) -> dict[str, Any]:
    loaded = load_model(cfg.ckpt, bool(cfg.get("hf_gamma_compat", False)))
    model, tokenizer = loaded.model, loaded.tokenizer_path
    run_config = None if loaded.path.is_dir() else stored_run_config(loaded.path, loaded.run_config)
    if cfg.get("tokenizer"):
        tokenizer = Path(cfg.tokenizer)
    model.to(device)
    datamodule = _datamodule(cfg, run_config, model, tokenizer)
    kind = dataset_kind(datamodule, cfg.get("dataset"))
    if kind == "refcoco":
        return _evaluate_images(cfg, datamodule, model, out_dir, rank, device)
    targets = eval_targets(kind, datamodule, cfg.get("split"))
    from_checkpoint = "_target_" not in (cfg.get("data") or {})
    chunk = chunk_size(cfg, kind, run_config, from_checkpoint)
    has_masks = all(t.source.has_masks for t in targets)
    submission = cfg.get("submission")
    submission = (not has_masks) if submission is None else bool(submission)
    if submission and kind == "davis":
        raise ValueError(
            "Ref-DAVIS17 has no submission server: it is scored locally (leave submission unset)"
        )
    if not submission and not has_masks:
        raise ValueError(
            f"{targets[0].source.name} has no public ground truth: it cannot be scored here; use submission=true"
        )
    collate = datamodule.collate
    check_tokenizer_fits(int(collate.tokenizer.vocab_size), model, datamodule.tokenizer_path)
    max_frames = getattr(datamodule, "val_max_frames", None)
    staging = StagingArea(out_dir / "staging")
    if rank == 0:
        check_manifest(
            out_dir / "staging.json",
            {
                "checkpoint": str(Path(cfg.ckpt).resolve()),
                "weights": weights_digest(model),
                "dataset": kind,
                "sources": [t.source.name for t in targets],
                "chunk_size": chunk,
                "max_frames": max_frames,
                "mask_format": MASK_FORMATS[kind],
                "tokenizer": str(datamodule.tokenizer_path),
            },
            restart=bool(cfg.get("restart", False)),
            staging=staging,
        )
    barrier()
    log.info(
        "predicting %s on %s (chunk %s, %d process(es)) into %s",
        [t.source.name for t in targets],
        device,
        chunk,
        world,
        staging.root,
    )
    predict_to_staging(
        model_predictor(model, device, chunk),
        targets,
        staging,
        MASK_FORMATS[kind],
        transform=datamodule.eval_transform(),
        collate=collate,
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
        return {"submission": str(write_submission_zip(out_dir / "submission.zip", staging, targets, kind))}
    metrics = score_predictions(
        staging.root, targets[0].source, kind, max_frames=max_frames, annotators=davis_annotators(datamodule)
    )
    sources = [t.source.name for t in targets]
    record = {
        **metrics,
        "checkpoint": str(cfg.ckpt),
        "dataset": kind,
        "sources": sources,
        "chunk_size": chunk,
    }
    write_json_atomic(out_dir / "metrics.json", record)
    return metrics


def _evaluate_images(
    cfg: DictConfig, datamodule: Any, model: MPGSAM2, out_dir: Path, rank: int, device: torch.device
) -> dict[str, Any]:
    """RefCOCO/+/g validation (no submission server): mIoU, cIoU and J&F on the main process."""
    if rank != 0:
        return {}
    if cfg.get("split"):
        datamodule.val_split = str(cfg.split)
    datamodule.setup("validate")
    metrics = evaluate_images(model.eval(), datamodule.val_dataloader(), device)
    record = {**metrics, "checkpoint": str(cfg.ckpt), "dataset": "refcoco"}
    write_json_atomic(out_dir / "metrics.json", record)
    log.info("mIoU=%.4f cIoU=%.4f over %d samples", metrics["miou"], metrics["ciou"], metrics["num_samples"])
    return metrics


def final_line(result: dict[str, Any]) -> str | None:
    """What a run prints last: the zip's path, or ``j=<v> f=<v> jf=<v>`` (None on non-main processes)."""
    if "submission" in result:
        return str(result["submission"])
    if "jf" in result:
        return f"j={result['j']:.4f} f={result['f']:.4f} jf={result['jf']:.4f}"
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    line = final_line(result)
    if line is not None:
        if "annotators" in result:
            for name, scores in result["annotators"].items():
                log.info("%s: j=%.4f f=%.4f jf=%.4f", name, scores["j"], scores["f"], scores["jf"])
        print(line, flush=True)


if __name__ == "__main__":
    main()
