"""Shared test helpers: compose the Hydra configs in-process (tiny size, outputs under a temporary folder) and
build the one tiny model (`conf/model/{beit3,sam2}/tiny.yaml`) with random inputs."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from mpgsam2.build import model_config
from mpgsam2.modeling.config import MPGSAM2Config
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.modeling.sam2.presets import merge_settings

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# a synthetic dataset small enough for a training step in a second
TINY_SYNTHETIC = [
    "data.generator.num_train_videos=3",
    "data.generator.num_valid_videos=2",
    "data.generator.num_frames=4",
    "data.batch_size=2",
]


@contextmanager
def hydra_config_dir():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        yield
    GlobalHydra.instance().clear()


def compose_config(
    name: str, overrides: list[str], tmp_path: Path, data_dir: Path | None = None
) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``; resolve the Hydra-runtime paths to ``tmp_path``."""
    with hydra_config_dir():
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.data_dir = str(data_dir or tmp_path / "data")
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


# a paper recipe at tiny size on the CPU: the tiny model, no weight files
TINY_RECIPE = [
    "model/beit3=tiny",
    "model/sam2=tiny",
    "model.weights.mpgsam2=null",
    "model.weights.beit3=null",
    "model.weights.sam2=null",
    "trainer=cpu",
    # one CPU process: the paper's global batch (8 clips) would make every step 8 accumulated clips
    "global_batch_size=null",
]


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
RESOLVED_PARTS = ("model", "data", "system", "trainer")


def resolved_experiment(experiment: str, *overrides: str) -> dict:
    """The resolved model / data / system / trainer trees of ``experiment=<experiment>``, with fixed paths
    (``/data``, ``/weights``) and mandatory values left as ``???``: what a config refactor must not change."""
    from omegaconf import OmegaConf

    with hydra_config_dir():
        cfg = compose(
            config_name="train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=False
        )
    with open_dict(cfg):
        cfg.paths = {
            "root_dir": "/root",
            "data_dir": "/data",
            "log_dir": "/logs",
            "weights_dir": "/weights",
            "output_dir": "/run",
        }
    return {
        part: OmegaConf.to_container(cfg[part], resolve=True, throw_on_missing=False)
        for part in RESOLVED_PARTS
    }


def composed_data_config(name: str) -> dict:
    """``conf/data/<name>.yaml`` as composed (shared keys included), interpolations left as written."""
    from omegaconf import OmegaConf

    with hydra_config_dir():
        cfg = compose(config_name="train", overrides=[f"data={name}"], return_hydra_config=False)
    return OmegaConf.to_container(cfg.data, resolve=False)


def tiny_preset() -> tuple[dict, dict]:
    """(beit3, sam2) of ``conf/model/{beit3,sam2}/tiny.yaml``: the one tiny model of the tests, the benchmarks
    and the demo."""
    from omegaconf import OmegaConf

    beit3 = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "beit3" / "tiny.yaml"))
    sam2 = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "sam2" / "tiny.yaml"))
    return beit3, sam2


def tiny_config(sam2_settings: dict | None = None, **options) -> MPGSAM2Config:
    """The tiny preset (``conf/model/{beit3,sam2}/tiny.yaml``: BEiT-3 width 64, SAM width 32, 64 px SAM input),
    with ``sam2_settings`` merged over its SAM 2 settings and ``options`` set."""
    beit3, sam2 = tiny_preset()
    sam2["settings"] = merge_settings(sam2["settings"], sam2_settings or {})
    return model_config(beit3, sam2, **options)


def random_clip(model: MPGSAM2, frames: int, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = model.sam.image_size
    hb = model.input_sizes["beit_size"]
    sam = torch.randn(batch, frames, 3, s, s, generator=g)
    beit = torch.randn(batch, frames, 3, hb, hb, generator=g)
    ids = torch.randint(4, 40, (batch, 7), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    return sam, beit, ids, torch.zeros_like(ids, dtype=torch.bool)
