"""Compose the Hydra configs in-process (the test model, outputs under a temporary folder), and the resolved
config trees that a config refactor must not change."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

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


# a paper recipe on the CPU with the test model (model/{beit3,sam2}=test), no weight files
TINY_RECIPE = [
    "model/beit3=test",
    "model/sam2=test",
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
