"""Evaluate MPG-SAM 2, write leaderboard submissions, or score predictions: the command around
``mpgsam2.evaluation.evaluate`` (what each benchmark is: ``mpgsam2.evaluation.benchmarks``; the path of a video
to a PNG in the zip: docs/architecture.md).

    # validate a train.py checkpoint with its run's data config (data=checkpoint, the default: a data.key=value
    # given replaces the stored value)
    python eval.py ckpt=logs/train/runs/<run>/checkpoints/final.ckpt
    python eval.py ckpt=logs/train/runs/<run>/checkpoints/final.ckpt data.swap_expressions=true data.val_max_frames=4
    # a released MPG-SAM 2 folder (config.json, weights, sentencepiece.bpe.model) or our export: pick the data
    python eval.py ckpt=weights/MPG-SAM2-ytvos data=ytvos data.root=/data/ref-youtube-vos    # -> submission.zip
    python eval.py ckpt=weights/MPG-SAM2-mevis data=mevis data.root=/data/mevis                    # valid_u: J&F
    python eval.py ckpt=weights/MPG-SAM2-mevis data=mevis data.root=/data/mevis data.val_split=valid  # -> zip
    python eval.py ckpt=weights/MPG-SAM2-ytvos data=davis data.root=/data/ref-davis            # 4 annotators
    # score PNGs written by any method (a folder or a zip) against a split with ground truth
    python eval.py predictions=/path/to/pngs data=mevis data.root=/data/mevis data.val_split=valid_u
    # N GPUs: each process predicts its share of the videos, rank 0 zips / scores
    torchrun --nproc_per_node=8 eval.py ckpt=... data=ytvos hydra.run.dir=logs/eval/ytvos_valid
    # resume an interrupted run: the same command with the same run folder (finished videos are skipped)

Each setting has its train.py key: the split is ``data.val_split`` (null: the benchmark's leaderboard split), the
tokenizer ``data.tokenizer_path`` (a released folder is evaluated with the ``sentencepiece.bpe.model`` it ships:
:func:`tokenizer_path`), the chunk size ``system.eval_chunk_size``, the existence decision
``system.existence_threshold`` (:func:`existence_threshold`), the released-weights switch
``model.hf_gamma_compat``.

Predictions are staged per video under ``<run dir>/staging`` (a video appears there only when complete), then
zipped to ``<run dir>/submission.zip`` (temp name, rename) or scored. A scoring run writes
``<run dir>/metrics.json`` and prints ``j=<v> f=<v> jf=<v>`` as its last line (a split with no-target expressions,
MeViS v2 and the synthetic demo: also ``jf_target``, ``n_acc``, ``t_acc``, ``final``, and for MeViS v2
``version=v2``); a submission run prints the zip's path last.
"""

from __future__ import annotations

import atexit
import datetime
import gc
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
from mpgsam2.distributed import barrier, rank_and_world
from mpgsam2.evaluation.benchmarks import Benchmark, benchmark
from mpgsam2.evaluation.evaluate import evaluate_model, score_folder
from mpgsam2.weights import CheckpointError, load_model
from mpgsam2.weights.checkpoints import LoadedModel, read_train_checkpoint

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
    system = run_config.get("system") or {}
    chunk = system.get("eval_chunk_size")
    if chunk not in (None, "auto") and (isinstance(chunk, bool) or not isinstance(chunk, int)):
        raise UnsafeConfigError(f"{path}: system.eval_chunk_size={chunk!r} is not an integer, null or auto")
    # checkpoints from before the setting have none: their recipes ran without the decision's "auto" rows
    existence = system.get("existence_threshold", "auto")
    if existence not in (None, "auto") and (
        isinstance(existence, bool) or not isinstance(existence, (int, float))
    ):
        raise UnsafeConfigError(
            f"{path}: system.existence_threshold={existence!r} is not a number, null or auto"
        )
    return OmegaConf.create(
        {"data": data, "system": {"eval_chunk_size": chunk, "existence_threshold": existence}}
    )


# ------------------------------------------------------------------------------------------------ the data


def data_config(cfg: DictConfig, run_config: DictConfig | None) -> DictConfig:
    """The data module config: a dataset's data group (``data=mevis``: it has a ``_target_``) as composed; the
    ``checkpoint`` group (``conf/data/checkpoint.yaml``, the default) is the checkpoint run's data config with each
    key given there (not ``???``) replacing the stored value.

    Raises:
        ValueError: the ``checkpoint`` group without a ``train.py`` checkpoint (a weights folder stores no data).
    """
    given = cfg.data
    if "_target_" in given:
        return given
    if run_config is None:
        raise ValueError(
            "no dataset given: select one with data=<ytvos|mevis|davis|refcoco> (and data.root=...); only a "
            "train.py checkpoint carries its own data config (data=checkpoint, the default)"
        )
    replaced = {key: given[key] for key in given if not OmegaConf.is_missing(given, key)}
    return OmegaConf.merge(run_config.data, replaced)


def tokenizer_path(loaded: LoadedModel, given: Any) -> Any:
    """The tokenizer to evaluate with. ``data.tokenizer_path`` is the one key; a model that ships its own
    tokenizer (a released folder's ``sentencepiece.bpe.model``) is evaluated with it, and ``data.tokenizer_path``
    may then name the same tokenizer or a file that does not exist here (e.g. a data group's default
    ``${paths.weights_dir}/beit3.spm`` without a weights folder), never another one.

    Raises:
        ValueError: ``data.tokenizer_path`` names another tokenizer than the model's own.
    """
    own = loaded.tokenizer_path if loaded.path.is_dir() else None
    if own is None:
        return given
    if given is not None and Path(given).is_file() and Path(given).read_bytes() != own.read_bytes():
        raise ValueError(
            f"data.tokenizer_path={given} is not the tokenizer {loaded.path} ships ({own}); the model is evaluated "
            f"with its own: drop the override or pass data.tokenizer_path={own}"
        )
    return str(own)


def benchmark_name(cfg: DictConfig) -> str | None:
    """``benchmark=``, or its deprecated name ``dataset=`` (kept for one release, with a warning); None: neither.

    Raises:
        ValueError: both are given, naming different benchmarks.
    """
    name, old = cfg.get("benchmark"), cfg.get("dataset")
    if old is None:
        return name
    log.warning("dataset=%s is deprecated (kept for one release): use benchmark=%s", old, old)
    if name is not None and name != old:
        raise ValueError(
            f"benchmark={name} and its deprecated name dataset={old} disagree: give benchmark= only"
        )
    return old


def benchmark_of(datamodule: Any, name: str | None) -> Benchmark:
    """The benchmark ``name`` if given (``benchmark=``), else the one the data module names."""
    if name is None:
        name = getattr(datamodule, "benchmark", None)
        if name is None:
            raise ValueError(
                f"{type(datamodule).__name__} names no benchmark; pass benchmark=<ytvos|mevis|davis|refcoco>"
            )
    return benchmark(str(name))


def chunk_size(
    cfg: DictConfig, bench: Benchmark, run_config: DictConfig | None, from_checkpoint: bool
) -> int | None:
    """``system.eval_chunk_size``: an int, null (whole video) or ``auto``: the checkpoint's own validation
    setting when evaluating with its data config, else the benchmark's protocol."""
    value = cfg.system.eval_chunk_size
    if value != "auto":
        return None if value is None else int(value)
    if from_checkpoint and run_config is not None:
        stored = run_config.get("system", {}).get("eval_chunk_size")
        if stored != "auto":
            return stored
    return bench.chunk_size


def existence_threshold(
    cfg: DictConfig, bench: Benchmark, run_config: DictConfig | None, from_checkpoint: bool
) -> float | None:
    """``system.existence_threshold``: a probability, null (no existence decision) or ``auto``: the checkpoint's
    own setting when evaluating with its data config, else the benchmark's (MeViS v2: on; v1 and the others: off,
    the original's protocol). See :func:`mpgsam2.inference.apply_existence`."""
    value = cfg.system.get("existence_threshold", "auto")
    if value == "auto" and from_checkpoint and run_config is not None:
        value = run_config.get("system", {}).get("existence_threshold", "auto")
    if value == "auto":
        return bench.existence_threshold
    return None if value is None else float(value)


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


def _datamodule(cfg: DictConfig, run_config: DictConfig | None, loaded: LoadedModel | None):  # noqa: ANN202
    data_cfg = data_config(cfg, run_config)
    sizes = {}
    if loaded is not None:
        tokenizer = tokenizer_path(loaded, data_cfg.get("tokenizer_path"))
        with open_dict(data_cfg):
            data_cfg.tokenizer_path = tokenizer
        sizes = loaded.model.input_sizes
    datamodule = instantiate(data_cfg, **sizes)
    if rank_and_world()[0] == 0:
        datamodule.prepare_data()  # the synthetic dataset is generated on first use
    barrier()
    return datamodule


def _score_folder(cfg: DictConfig, out_dir: Path, rank: int) -> dict[str, Any]:
    run_config = None
    if cfg.get("ckpt") and Path(cfg.ckpt).is_file():
        run_config = stored_run_config(cfg.ckpt, read_train_checkpoint(cfg.ckpt).stored.get("config"))
    datamodule = _datamodule(cfg, run_config, None)
    bench = benchmark_of(datamodule, benchmark_name(cfg))
    if rank != 0:
        return {}
    return score_folder(cfg.predictions, datamodule, bench, out_dir, None)  # the split: data.val_split


def _evaluate_model(
    cfg: DictConfig, out_dir: Path, rank: int, world: int, device: torch.device
) -> dict[str, Any]:
    loaded = load_model(cfg.ckpt, bool(cfg.model.hf_gamma_compat))
    run_config = None if loaded.path.is_dir() else stored_run_config(loaded.path, loaded.run_config)
    datamodule = _datamodule(cfg, run_config, loaded)
    bench = benchmark_of(datamodule, benchmark_name(cfg))
    from_checkpoint = "_target_" not in cfg.data
    return evaluate_model(
        loaded.model.to(device),
        datamodule,
        bench,
        out_dir,
        checkpoint=str(cfg.ckpt),
        split=None,  # the data module's val_split
        submission=cfg.get("submission"),
        chunk_size=chunk_size(cfg, bench, run_config, from_checkpoint),
        existence_threshold=existence_threshold(cfg, bench, run_config, from_checkpoint),
        restart=bool(cfg.get("restart", False)),
        precision=str(cfg.precision),
        compile=bool(cfg.compile),
        device=device,
        rank=rank,
        world=world,
    )


def final_line(result: dict[str, Any]) -> str | None:
    """What a run prints last: the zip's path, or ``j=<v> f=<v> jf=<v>`` (None on non-main processes)."""
    if "submission" in result:
        return str(result["submission"])
    if "final" in result:  # MeViS v2: its no-target scores and the version (not comparable with v1's J&F)
        scores = " ".join(
            f"{key}={'n/a' if result[key] is None else format(result[key], '.4f')}"
            for key in ("j", "f", "jf", "jf_target", "n_acc", "t_acc", "final")
        )
        version = result.get("dataset_version")  # absent: a dataset of one release (the synthetic demo)
        return scores if version is None else f"{scores} version={version}"
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
    # at exit the interpreter would collect the cycles among all objects of torch, Lightning and SciPy (about
    # 1.3 s of every process on a 2-core machine): frozen, they go with the process's memory; buffered files and
    # logs are flushed all the same (by the atexit handlers, which run before, and by their own close)
    atexit.register(gc.freeze)
    main()
