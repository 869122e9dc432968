"""Evaluate a trained model: ``python eval.py ckpt=PATH [+data.key=value ...]``.

The checkpoint (a Lightning checkpoint written by ``train.py``) carries its resolved config: the model is rebuilt
from it and loaded strictly with ``weights_only=True``; the data config is the training run's unless overridden
here. Validation J&F goes to ``<run dir>/metrics.json`` and the last line printed is ``j=<v> f=<v> jf=<v>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mpgsam2.lit_module import CHECKPOINT_KEY
from mpgsam2.utils import write_json_atomic
from mpgsam2.weights import CheckpointError, load_into

log = logging.getLogger("eval")


def read_checkpoint(path: str | Path) -> tuple[DictConfig, dict[str, torch.Tensor]]:
    """The run config and the model's state dict (our key names) of a ``train.py`` checkpoint.

    Raises:
        CheckpointError: the file is missing, is not loadable with ``weights_only=True``, or was not written by
            ``train.py`` (no stored config).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a loadable checkpoint (weights_only=True): {err}") from err
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: not a train.py checkpoint (no '{CHECKPOINT_KEY}' config or 'state_dict'); for exported or "
            "released weights use model.weights.mpgsam2 in a training config"
        )
    run_config = OmegaConf.create(ckpt[CHECKPOINT_KEY]["config"])
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return run_config, state


def build_from_checkpoint(
    path: str | Path, data_overrides: Any = None, eval_chunk_size: int | None = None
) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The system (model loaded from the checkpoint) and the data module of the run that wrote it."""
    run_config, state = read_checkpoint(path)
    model_cfg = run_config.model
    # every weight is in the checkpoint: do not read the training run's initial weights again
    model_cfg.weights = {"mpgsam2": None, "beit3": None, "sam2": None}
    model = instantiate(model_cfg)
    log.info("%s", load_into(model, state, source=str(path)))
    data_cfg = OmegaConf.merge(run_config.data, data_overrides or {})
    datamodule = instantiate(
        data_cfg, sam_size=model.sam.image_size, beit_size=int(model.config.beit3["img_size"])
    )
    system = instantiate(run_config.system, model=model, eval_chunk_size=eval_chunk_size)
    system.run_config = OmegaConf.to_container(run_config)
    return system, datamodule


def run(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    system, datamodule = build_from_checkpoint(cfg.ckpt, cfg.get("data"), cfg.get("eval_chunk_size"))
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[L.pytorch.callbacks.RichProgressBar()])
    results = trainer.validate(system, datamodule=datamodule, verbose=False)
    metrics = {k.split("/", 1)[1]: float(v) for k, v in results[0].items() if k.startswith("val/")}
    if trainer.is_global_zero:
        write_json_atomic(
            Path(cfg.paths.output_dir) / "metrics.json", {**metrics, "checkpoint": str(cfg.ckpt)}
        )
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    metrics = run(cfg)
    print(f"j={metrics['j']:.4f} f={metrics['f']:.4f} jf={metrics['jf']:.4f}", flush=True)


if __name__ == "__main__":
    main()
