"""Train MPG-SAM 2: ``python train.py experiment=<name> [key=value ...]`` (configs in ``conf/``).

Builds the model, the data module, the Lightning system, callbacks, loggers and the trainer from the composed
config; trains (``ckpt_path=<run>/checkpoints/last.ckpt`` resumes exactly where that checkpoint was taken); then,
when the data config has a validation split, validates the final weights, writes ``<run dir>/metrics.json`` and
prints ``val/jf=<value>`` as the last line (without one it prints the final checkpoint's path).

On several devices the recipe's ``global_batch_size`` is kept with gradient accumulation (logged at start);
``trainer=fsdp`` / ``trainer=deepspeed`` shard the model (``callbacks/strategies.py``).

A run that diverges (a NaN or infinite loss or gradient) stops with an error naming the step and the loss term;
it writes no ``final.ckpt`` or ``metrics.json`` and leaves the last good ``last.ckpt``.
"""

from __future__ import annotations

import atexit
import gc
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from callbacks.strategies import gradient_accumulation
from mpgsam2.evaluation.benchmarks import benchmark
from mpgsam2.utils import parameter_counts, write_json_atomic

log = logging.getLogger("train")

# config group options kept for one release under their old names: (group, old name) -> new name
DEPRECATED_CHOICES = {
    # `tiny` also named the paper's size (size=tiny: BEiT-3 base + Hiera-T); the random test model is `test`
    ("model/beit3", "tiny"): "test",
    ("model/sam2", "tiny"): "test",
}


def warn_deprecated_choices(choices: Mapping[str, Any]) -> list[str]:
    """Logs a warning for each deprecated config option chosen (``choices``: Hydra's ``runtime.choices``, group ->
    option) and returns the warnings."""
    messages = [
        f"{group}={old} is deprecated (kept for one release): use {group}={new}, the same config"
        for (group, old), new in DEPRECATED_CHOICES.items()
        if choices.get(group) == old
    ]
    for message in messages:
        log.warning("%s", message)
    return messages


# Lightning 2.6 on torch >= 2.13 warns about its own use of a deprecated torch pytree API at every fit
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def build_components(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Model, data module and Lightning system from a composed config (``cfg.model``, ``cfg.data``,
    ``cfg.system``). The resolved config is stored in the system so that every checkpoint carries it.

    Raises:
        ValueError: a group's ``checkpoint`` option (eval.py's: what ``ckpt=`` stores) instead of a buildable one.
    """
    for part in ("model", "data", "system"):
        if "_target_" not in cfg[part]:
            raise ValueError(
                f"{part}: nothing to build (conf/{part}/checkpoint.yaml is eval.py's: what its ckpt= stores); "
                f"choose a {part} config that train.py builds"
            )
    model = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, **model.input_sizes)
    system = instantiate(cfg.system, model=model)
    # set after instantiation: instantiate() would try to build the `_target_`s inside the stored config
    system.run_config = OmegaConf.to_container(cfg, resolve=True)
    return system, datamodule


def build_strategy(cfg: DictConfig) -> Any:
    """The trainer's strategy: a name (``ddp``, ...) as configured, a ``_target_`` built here, first of all, so
    that one that cannot run on this machine (``trainer=deepspeed`` without CUDA) is refused before anything is
    built or read."""
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, DictConfig) and "_target_" in strategy:
        return instantiate(strategy)
    return strategy


def build_trainer(
    cfg: DictConfig,
    callbacks_cfg: Any,
    logger_cfg: Any,
    validates: bool = True,
    strategy: Any = None,
    per_device_batch: int | None = None,
) -> L.Trainer:
    """The trainer with the configured callbacks and loggers (each group is a dict of ``_target_`` entries).
    Without validation (``validates=False``) callbacks that monitor a validation metric are left out.

    ``strategy``: an already built strategy (:func:`build_strategy`), else the configured one. The gradient
    accumulation is ``trainer.accumulate_grad_batches`` when set, else what keeps ``global_batch_size`` on this
    trainer's processes with ``per_device_batch`` clips each (logged as "global batch 8 = 2 devices x 1 clip x 4
    accumulation").

    Raises:
        ValueError: ``global_batch_size`` is not a multiple of processes x ``per_device_batch``.
    """
    callbacks = [instantiate(c) for c in (callbacks_cfg or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (logger_cfg or {}).values() if c is not None]
    if not loggers:  # `logger=none`: the learning-rate monitor has nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    if not validates:  # no best.ckpt without a validation metric
        callbacks = [c for c in callbacks if not str(getattr(c, "monitor", None) or "").startswith("val/")]
    explicit = cfg.trainer.get("accumulate_grad_batches")
    overrides: dict[str, Any] = {"callbacks": callbacks, "logger": loggers or False}
    overrides["accumulate_grad_batches"] = 1 if explicit is None else explicit  # set below when derived
    if strategy is not None:
        overrides["strategy"] = strategy
    trainer = instantiate(cfg.trainer, **overrides)
    per_device = per_device_batch or int(cfg.data.get("batch_size", 1) or 1)
    accumulation, message = gradient_accumulation(
        cfg.get("global_batch_size"), trainer.world_size, per_device, explicit
    )
    # read by the fit loop (and by DeepSpeed's config) when fitting starts
    trainer.accumulate_grad_batches = accumulation
    if trainer.is_global_zero:
        log.info("%s", message)
    return trainer


def finish_loggers(trainer: L.Trainer) -> None:
    """Close W&B runs (an open run would hang a Hydra multirun)."""
    for lg in trainer.loggers:
        experiment = getattr(lg, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from: ``ckpt_path`` as given, or for ``ckpt_path=auto`` this run
    folder's own ``checkpoints/last.ckpt`` when it exists (a requeued SLURM job, a restarted command) and
    nothing otherwise (a first start)."""
    value = cfg.get("ckpt_path")
    if value != "auto":
        return value
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if last.exists():
        log.info("ckpt_path=auto: resuming from %s", last)
        return str(last)
    log.info("ckpt_path=auto: no %s yet, starting from step 0", last)
    return None


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or validate as configured; returns the final validation metrics (empty when not validated)."""
    L.seed_everything(cfg.seed, workers=True)
    strategy = build_strategy(cfg)
    system, datamodule = build_components(cfg)
    validates = bool(getattr(datamodule, "validates", True))
    trainer = build_trainer(
        cfg,
        cfg.get("callbacks"),
        cfg.get("logger"),
        validates,
        strategy=strategy,
        per_device_batch=getattr(datamodule, "batch_size", None),
    )
    output_dir = Path(cfg.paths.output_dir)
    metrics: dict[str, float] = {}
    try:
        hparams = {**OmegaConf.to_container(cfg, resolve=True), **parameter_counts(system.model)}
        for lg in trainer.loggers:
            lg.log_hyperparams(hparams)
        if cfg.train:
            trainer.fit(system, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg), weights_only=True)
            if trainer.interrupted:  # e.g. Ctrl-C or SIGTERM: no final checkpoint of an unfinished run
                raise SystemExit(
                    f"training was interrupted at step {trainer.global_step}; resume from last.ckpt"
                )
            final = output_dir / "checkpoints" / "final.ckpt"
            trainer.save_checkpoint(final, weights_only=False)  # full state: resumable with ckpt_path=
            log.info("final checkpoint: %s", final)
        if cfg.train and not validates and trainer.is_global_zero:
            write_json_atomic(
                output_dir / "metrics.json",
                {
                    "global_step": trainer.global_step,
                    "checkpoint": str(output_dir / "checkpoints" / "final.ckpt"),
                },
            )
        if cfg.validate and validates and not trainer.fast_dev_run:
            # the reported number comes from the evaluation protocol's path, one expression at a time (as
            # eval.py), so that `python eval.py ckpt=<final.ckpt>` reproduces it exactly; batched validation
            # during training gives the same masks up to float rounding
            if hasattr(datamodule, "val_batch_size"):
                datamodule.val_batch_size = 1
            results = trainer.validate(system, datamodule=datamodule, verbose=False)
            metrics = {k.split("/", 1)[1]: float(v) for k, v in results[0].items() if k.startswith("val/")}
            if trainer.is_global_zero:
                record = {**metrics, "global_step": trainer.global_step}
                name = getattr(datamodule, "benchmark", None)
                version = None if name is None else benchmark(name).dataset_version
                if version is not None:  # MeViS v1 / v2: scores that are not comparable across versions
                    record["dataset_version"] = version
                if cfg.train:
                    record["checkpoint"] = str(output_dir / "checkpoints" / "final.ckpt")
                write_json_atomic(output_dir / "metrics.json", record)
    finally:
        finish_loggers(trainer)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    warn_deprecated_choices(HydraConfig.get().runtime.choices)
    metrics = run(cfg)
    if "jf" in metrics:
        # the last line of a run (and Hydra multirun / sweep objective)
        print(f"val/jf={metrics['jf']:.4f}", flush=True)
        return metrics["jf"]
    if cfg.train:
        print(f"final checkpoint: {Path(cfg.paths.output_dir) / 'checkpoints' / 'final.ckpt'}", flush=True)
    return None


if __name__ == "__main__":
    # at exit the interpreter would collect the cycles among all objects of torch, Lightning and SciPy (about
    # 1.3 s of every process on a 2-core machine): frozen, they go with the process's memory; buffered files and
    # logs are flushed all the same (by the atexit handlers, which run before, and by their own close)
    atexit.register(gc.freeze)
    main()
