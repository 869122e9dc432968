"""Every experiment composes and instantiates at tiny size; typos fail at compose time; sweeps compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.configs import CONF_DIR, EXPERIMENTS, TINY_RECIPE, compose_config, hydra_config_dir
from hydra import compose
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

import train as train_entry
from mpgsam2.build import beit3_config
from mpgsam2.lit_module import RVOSLitModule
from mpgsam2.modeling.mpgsam2 import MPGSAM2

SWEEPS = sorted((CONF_DIR.parent / "experiments" / "sweeps").glob("*.yaml"))
TINY = TINY_RECIPE


def test_the_paper_recipes_are_all_there():
    for name in ("demo", "ytvos_large", "mevis_large", "refcoco_large", "ytvos_tiny", "mevis_base"):
        assert name in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates_at_tiny_size(experiment, tmp_path):
    full = compose_config("train", [f"experiment={experiment}"], tmp_path)
    text = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()
    assert "python train.py experiment=" + experiment in text  # each file carries its command
    assert full.data._target_.startswith("data_modules.")
    cfg = compose_config("train", [f"experiment={experiment}", *TINY], tmp_path)
    model = instantiate(cfg.model)
    assert isinstance(model, MPGSAM2)
    system = instantiate(cfg.system, model=model)
    assert isinstance(system, RVOSLitModule)
    system.configure_optimizers()  # the parameter-group patterns match the model
    datamodule = instantiate(cfg.data, sam_size=model.sam.image_size, beit_size=64)
    assert datamodule.num_frames >= 1
    trainer_cfg = OmegaConf.to_container(cfg.trainer)
    assert trainer_cfg["_target_"] == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("experiment", ["ytvos_large", "mevis_large", "refcoco_large"])
def test_real_recipes_keep_the_paper_sizes_and_learning_rates(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    beit3 = beit3_config(cfg.model.beit3)
    assert beit3["embed_dim"] == 1024 and beit3["num_layers"] == 24
    assert cfg.model.sam2.size == "l"
    assert cfg.system.optimizer.weight_decay == 5e-4
    assert cfg.system.param_groups[0].lr == 5e-5
    assert cfg.system.optimizer.lr == (1e-5 if experiment == "refcoco_large" else 2e-6)
    assert cfg.model.freeze_image_encoder is True
    assert cfg.data.num_frames == {"ytvos_large": 5, "mevis_large": 8}.get(experiment, cfg.data.num_frames)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem != "default")


GROUP_OPTIONS = [
    (group, option)
    for group in ("data", "trainer", "logger", "debug", "model/beit3", "model/sam2")
    for option in _options(group)
]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=lambda v: str(v))
def test_every_group_option_composes_over_the_demo(group, option, tmp_path):
    """Options no experiment selects (trainer=gpu/ddp, logger=csv, debug=overfit, data=davis, ...) compose too
    (model sizes over the default config: the demo overrides some of their keys)."""
    base = [] if group.startswith("model/") else ["experiment=demo"]
    cfg = compose_config("train", [*base, f"{group}={option}"], tmp_path)
    if (
        option == "checkpoint"
    ):  # eval.py's default: a train.py checkpoint's stored data (tests/cli/test_eval_cli.py)
        with pytest.raises(ValueError, match=r"data: nothing to build .*eval\.py"):
            train_entry.build_components(cfg)
        return
    OmegaConf.resolve(cfg)  # every interpolation resolves
    if group == "data":
        datamodule = instantiate(cfg.data, sam_size=64, beit_size=64)
        assert type(datamodule).__module__ == f"data_modules.{option}"
    elif group == "trainer":
        on_gpu = option in ("gpu", "ddp", "fsdp", "deepspeed")
        assert cfg.trainer.accelerator == ("gpu" if on_gpu else "cpu")
        assert cfg.trainer.precision == ("bf16-mixed" if on_gpu else "32-true")
        if option.startswith("ddp"):
            assert cfg.trainer.strategy == "ddp_find_unused_parameters_true"
        if option == "cpu":
            assert isinstance(instantiate(cfg.trainer, logger=False), Trainer)
    elif group == "logger":
        loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
        assert [type(lg).__name__ for lg in loggers] == {
            "csv": ["CSVLogger"],
            "wandb": ["WandbLogger"],
            "none": [],
        }[option]
    elif group == "debug":
        if option == "fdr":
            assert cfg.trainer.fast_dev_run is True and cfg.logger is None and cfg.callbacks is None
        else:
            assert cfg.trainer.overfit_batches == 4 and cfg.trainer.max_epochs == 50
    else:  # a deprecated option is the config it names now
        option = train_entry.DEPRECATED_CHOICES.get((group, option), option)
        assert cfg.model[group.split("/")[1]] == OmegaConf.load(CONF_DIR / group / f"{option}.yaml")


def test_the_test_model_keeps_its_old_name_tiny_for_a_release_with_a_warning(tmp_path, caplog):
    """model/{beit3,sam2}=tiny (the test model's old name, not the paper's size=tiny) is the same config as
    model/{beit3,sam2}=test, and train.py names the new option when the old one is chosen."""
    old = ["experiment=demo", "model/beit3=tiny", "model/sam2=tiny"]
    assert OmegaConf.to_container(compose_config("train", old, tmp_path)) == OmegaConf.to_container(
        compose_config("train", ["experiment=demo"], tmp_path)
    )
    assert (
        compose_config("train", ["experiment=demo"], tmp_path).model.beit3.embed_dim == 64
    )  # demo: test model
    with hydra_config_dir():
        choices = compose(config_name="train", overrides=old, return_hydra_config=True).hydra.runtime.choices
    with caplog.at_level("WARNING", logger="train"):
        messages = train_entry.warn_deprecated_choices(choices)
    assert messages == [
        "model/beit3=tiny is deprecated (kept for one release): use model/beit3=test, the same config",
        "model/sam2=tiny is deprecated (kept for one release): use model/sam2=test, the same config",
    ]
    assert caplog.messages == messages
    with hydra_config_dir():
        choices = compose(config_name="train", overrides=["experiment=demo"], return_hydra_config=True)
    assert train_entry.warn_deprecated_choices(choices.hydra.runtime.choices) == []


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epoch=3",
        "model.use_dense_priors=false",
        "data.batchsize=2",
        "system.optimizer.learning_rate=1",
    ],
)
def test_a_config_typo_fails_at_compose_time(override, tmp_path):
    key = override.split("=")[0].rsplit(".", 1)[-1]
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("train", ["experiment=demo", override], tmp_path)
    assert key in str(err.value) or key in str(err.value.__cause__)


def test_an_unknown_experiment_names_the_choices(tmp_path):
    with pytest.raises(Exception, match="demo"):
        compose_config("train", ["experiment=demoo"], tmp_path)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_sweep_parameters_compose_as_overrides(sweep, tmp_path):
    spec = yaml.safe_load(sweep.read_text())
    assert spec["program"] == "train.py"
    assert "${args_no_hyphens}" in spec["command"]
    experiment = next(a.split("=", 1)[1] for a in spec["command"] if str(a).startswith("experiment="))
    for name, param in spec["parameters"].items():
        values = param.get("values", [param.get("value")])
        for value in values:
            value = str(value)  # W&B formats parameters with str(): True, False, 5
            cfg = compose_config("train", [f"experiment={experiment}", f"{name}={value}"], tmp_path)
            assert str(OmegaConf.select(cfg, name)).lower() == str(value).lower()


def test_every_sweep_axis_of_the_paper_is_covered():
    names = {p.stem for p in SWEEPS}
    assert {
        "ablation_dense_prior",
        "ablation_sparse_token",
        "ablation_global_pixel_attention",
        "ablation_pixel_global_fusion",
        "ablation_object_global_fusion",
        "ablation_object_historical_fusion",
        "ablation_num_frames",
    } <= names


def test_model_code_does_not_import_lightning_or_hydra():
    import ast

    root = Path(__file__).resolve().parents[2] / "mpgsam2"
    allowed = {root / "lit_module.py"}
    for path in root.rglob("*.py"):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"lightning", "pytorch_lightning", "hydra", "omegaconf"}, (
                    path
                )
