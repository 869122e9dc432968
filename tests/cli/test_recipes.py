"""Every paper recipe trains end to end, at tiny size, on a generated dataset in its official RELEASED layout
(Ref-YouTube-VOS valid and MeViS valid without masks, MeViS valid without mask_dict.json), for more than one
epoch, and writes final.ckpt; what each recipe validates on; a split without masks is refused at start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.configs import TINY_RECIPE, compose_config
from helpers.datasets import (
    synthetic_tokenizer,
    write_mevis_dataset,
    write_refcoco_dataset,
    write_ytvos_dataset,
)
from omegaconf import open_dict

import train as train_entry
from data_modules.base import DataConfigError

TINY = [
    *TINY_RECIPE,
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",  # two epochs of two steps keep the nine recipes within a minute or two
    "data.batch_size=1",
    "data.val_max_frames=3",  # validation runs (J&F, best.ckpt) on short videos
    "logger=none",
    "data.num_workers=0",
]
RECIPES = [f"{data}_{size}" for data in ("ytvos", "mevis", "refcoco") for size in ("large", "base", "tiny")]


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three datasets as released: masks only where the public release has them."""
    root = tmp_path_factory.mktemp("released")
    ytvos = root / "ref-youtube-vos"
    write_ytvos_dataset(ytvos, "train")
    write_ytvos_dataset(ytvos, "valid", annotations=False, obj_ids_in_json=False)
    mevis = root / "mevis"
    write_mevis_dataset(mevis, "train")
    write_mevis_dataset(mevis, "valid_u")
    write_mevis_dataset(mevis, "valid", masks=False)  # as released: no mask_dict.json
    assert not (mevis / "valid" / "mask_dict.json").exists()
    assert not (ytvos / "valid" / "Annotations").exists()
    coco = root / "coco"
    for name in ("refcoco", "refcoco+", "refcocog"):
        write_refcoco_dataset(coco, name, "train")
    write_refcoco_dataset(coco, "refcoco", "val")
    return {"ytvos": ytvos, "mevis": mevis, "refcoco": coco, "tokenizer": synthetic_tokenizer(root / "tok")}


def _recipe_cfg(recipe: str, released: dict[str, Path], tmp_path: Path, *extra: str):
    data = recipe.split("_")[0]
    overrides = [
        f"experiment={recipe}",
        *TINY,
        f"data.root={released[data]}",
        f"data.tokenizer_path={released['tokenizer']}",
        *extra,
    ]
    cfg = compose_config("train", overrides, tmp_path)
    with open_dict(cfg):
        cfg.callbacks.pop("rich_progress_bar")
        cfg.callbacks.pop("mask_overlay")
    return cfg


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_trains_on_the_released_layout(
    recipe: str, released: dict[str, Path], tmp_path: Path
) -> None:
    metrics = train_entry.run(_recipe_cfg(recipe, released, tmp_path))
    checkpoints = tmp_path / "run" / "checkpoints"
    final = torch.load(checkpoints / "final.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 2 and final["global_step"] == 4  # two epochs of two steps
    assert last["global_step"] == final["global_step"]  # last.ckpt is the latest state
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["global_step"] == final["global_step"]
    if recipe.startswith("ytvos"):
        # the paper's recipe: no validation during training (valid is scored by the server), no best.ckpt
        assert metrics == {} and "jf" not in record and not (checkpoints / "best.ckpt").exists()
    else:
        # MeViS validates on valid_u, RefCOCO on val (both have ground truth)
        assert 0.0 <= metrics["jf"] <= 1.0 and (checkpoints / "best.ckpt").is_file()


def test_ytvos_can_validate_on_held_out_training_videos(released: dict[str, Path], tmp_path: Path) -> None:
    cfg = _recipe_cfg("ytvos_tiny", released, tmp_path, "data.val_split=holdout", "data.holdout_videos=1")
    metrics = train_entry.run(cfg)
    assert 0.0 <= metrics["jf"] <= 1.0 and (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_a_validation_split_without_masks_is_refused_before_training(
    released: dict[str, Path], tmp_path: Path
) -> None:
    for recipe, split in (("ytvos_tiny", "valid"), ("mevis_tiny", "valid")):
        cfg = _recipe_cfg(recipe, released, tmp_path / recipe, f"data.val_split={split}")
        with pytest.raises(
            DataConfigError, match=rf"data.val_split='{split}':.*has no ground-truth masks.*holdout"
        ):
            train_entry.run(cfg)
        assert not (tmp_path / recipe / "run" / "checkpoints").exists()  # not one step was trained
