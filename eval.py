"""Evaluate MPG-SAM 2, write leaderboard submissions, or score predictions: the command around
``mpgsam2.inference.evaluate`` (what each benchmark is: ``mpgsam2.benchmarks``).

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
from mpgsam2.benchmarks import Benchmark, benchmark
from mpgsam2.inference.evaluate import evaluate_model, score_folder
from mpgsam2.inference.submission import barrier, rank_and_world
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.weights import CheckpointError, load_model
from mpgsam2.weights.checkpoints import read_train_checkpoint

log = logging.getLogger("eval")


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
    if chunk not in (None, "auto") and (isinstance(chunk, bool) or not isinstance(chunk, int)):
        raise UnsafeConfigError(f"{path}: system.eval_chunk_size={chunk!r} is not an integer, null or auto")
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


def benchmark_of(datamodule: Any, name: str | None) -> Benchmark:
    """The benchmark ``name`` if given (``dataset=``), else the one the data module names."""
    if name is None:
        name = getattr(datamodule, "benchmark", None)
        if name is None:
            raise ValueError(
                f"{type(datamodule).__name__} names no benchmark; pass dataset=<ytvos|mevis|davis|refcoco>"
            )
    return benchmark(str(name))


def chunk_size(
    cfg: DictConfig, bench: Benchmark, run_config: DictConfig | None, from_checkpoint: bool
) -> int | None:
    """``eval_chunk_size``: an int, null (whole video) or ``auto``: the checkpoint's own validation setting when
    evaluating with its data config, else the benchmark's protocol."""
    value = cfg.get("eval_chunk_size", "auto")
    if value != "auto":
        return None if value is None else int(value)
    if from_checkpoint and run_config is not None:
        stored = run_config.get("system", {}).get("eval_chunk_size")
        if stored != "auto":
            return stored
    return bench.chunk_size


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
    bench = benchmark_of(datamodule, cfg.get("dataset"))
    if rank != 0:
        return {}
    return score_folder(cfg.predictions, datamodule, bench, out_dir, cfg.get("split"))


def _evaluate_model(
    cfg: DictConfig, out_dir: Path, rank: int, world: int, device: torch.device
) -> dict[str, Any]:
    loaded = load_model(cfg.ckpt, bool(cfg.get("hf_gamma_compat", False)))
    run_config = None if loaded.path.is_dir() else stored_run_config(loaded.path, loaded.run_config)
    tokenizer = Path(cfg.tokenizer) if cfg.get("tokenizer") else loaded.tokenizer_path
    model = loaded.model.to(device)
    datamodule = _datamodule(cfg, run_config, model, tokenizer)
    bench = benchmark_of(datamodule, cfg.get("dataset"))
    from_checkpoint = "_target_" not in (cfg.get("data") or {})
    return evaluate_model(
        model,
        datamodule,
        bench,
        out_dir,
        checkpoint=str(cfg.ckpt),
        split=cfg.get("split"),
        submission=cfg.get("submission"),
        chunk_size=chunk_size(cfg, bench, run_config, from_checkpoint),
        restart=bool(cfg.get("restart", False)),
        device=device,
        rank=rank,
        world=world,
    )


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
