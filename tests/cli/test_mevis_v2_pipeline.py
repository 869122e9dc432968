"""MeViS v2 end to end as a user runs it: generated v2 layouts in the released file names (train with no-target
expressions, valid_u with ground truth, valid without mask_dict.json), `train.py experiment=mevis_v2_tiny` in a
subprocess (about a minute on the shared 2-core CPU: a train.py process imports torch and Lightning, trains 2 x 2
steps and validates twice), then eval.py on valid_u (v2 scores) and on valid (the Codabench zip: exactly one 0/255
PNG per frame per expression, all black for an expression judged absent)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import TINY_RECIPE, compose_config
from helpers.datasets import synthetic_tokenizer, write_mevis_dataset
from PIL import Image

import eval as eval_entry
from mpgsam2.data import MeViSSource

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mevis_v2")
    root = base / "mevis"
    write_mevis_dataset(root, "train", version="v2")
    write_mevis_dataset(root, "valid_u", version="v2")
    write_mevis_dataset(root, "valid", masks=False, version="v2")
    assert sorted(p.name for p in root.glob("*/meta_*.json")) == [
        "meta_expressions_v2.json",
        "meta_expressions_v2.json",
        "meta_expressions_v2_release.json",
    ]
    tokenizer = synthetic_tokenizer(base / "tok")
    run_dir = base / "run"
    cmd = [
        sys.executable,
        "train.py",
        "experiment=mevis_v2_tiny",
        *TINY_RECIPE,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.log_every_n_steps=1",
        "data.val_max_frames=3",
        "data.num_workers=0",
        "logger=csv",
        f"data.root={root}",
        f"data.tokenizer_path={tokenizer}",
        f"paths.output_dir={run_dir}",
        f"hydra.run.dir={run_dir}",
        "~callbacks.rich_progress_bar",
        "~callbacks.mask_overlay",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir / "stdout.txt").write_text(proc.stdout + proc.stderr)
    return {"root": root, "run": run_dir, "base": base}


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_py_trains_the_v2_recipe_and_validates_with_the_v2_scores(trained: dict[str, Path]) -> None:
    run = trained["run"]
    out = (run / "stdout.txt").read_text()
    assert "MeViS v2/train" in out and "(detected from the files)" not in out.split("MeViS v2/train")[1][:300]
    record = json.loads((run / "metrics.json").read_text())
    assert record["global_step"] == 4 and record["dataset_version"] == "v2"
    for key in ("j", "f", "jf", "jf_target", "n_acc", "t_acc", "final"):
        assert 0.0 <= record[key] <= 1.0, key
    assert record["final"] == pytest.approx((record["jf"] + record["n_acc"] + record["t_acc"]) / 3, abs=1e-6)
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    config = ckpt["mpgsam2"]["config"]
    assert (
        config["data"]["version"] == "v2" and config["system"]["criterion"]["weights"]["object_score"] == 1.0
    )
    # the object-score loss was trained (and logged) on the training clips, no-target ones included
    metrics_csv = next(run.rglob("metrics.csv")).read_text()
    assert "train/loss_object_score" in metrics_csv.splitlines()[0]


@pytest.mark.slow
@pytest.mark.subprocess
def test_eval_scores_valid_u_and_zips_valid_for_codabench(trained: dict[str, Path], tmp_path: Path) -> None:
    ckpt = trained["run"] / "checkpoints" / "final.ckpt"
    cfg = compose_config(
        "eval", [f"ckpt={ckpt}", "data.num_workers=0", "data.val_max_frames=null"], tmp_path / "u"
    )
    result = eval_entry.run(cfg)
    record = json.loads((tmp_path / "u" / "run" / "metrics.json").read_text())
    assert record["dataset"] == "mevis_v2" and record["dataset_version"] == "v2"
    assert record["existence_threshold"] == 0.7 and record["sources"] == ["mevis_v2/valid_u"]
    assert record["num_no_target"] == 2 and record["num_target"] == 4
    assert eval_entry.final_line(result).endswith(f"final={record['final']:.4f} version=v2")
    staging = json.loads((tmp_path / "u" / "run" / "staging.json").read_text())
    assert staging["existence_threshold"] == 0.7 and staging["mask_format"] == "binary"

    source = MeViSSource(trained["root"], "valid")
    expected = {
        f"{e.video.video_id}/{e.exp_id}/{name}.png": e.video
        for e in source.expressions
        for name in e.video.frame_names
    }
    for threshold, run in (("auto", "v"), ("1.0", "absent")):
        cfg = compose_config(
            "eval",
            [
                f"ckpt={ckpt}",
                "data.val_split=valid",
                "data.num_workers=0",
                "data.val_max_frames=null",
                f"system.existence_threshold={threshold}",
            ],
            tmp_path / run,
        )
        zip_path = Path(eval_entry.run(cfg)["submission"])
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            assert sorted(names) == sorted(expected) and len(names) == len(set(names))  # one PNG per frame
            values = set()
            for name in names:
                with Image.open(io.BytesIO(zf.read(name))) as img:
                    video = expected[name]
                    assert img.mode == "L" and img.size == Image.open(video.frame_paths[0]).size
                    values |= set(np.unique(np.asarray(img)).tolist())
        assert values <= {0, 255}
        if threshold == "1.0":
            assert values == {0}  # every expression judged absent: a full set of black PNGs
