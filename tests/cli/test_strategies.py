"""The multi-device switches of conf/trainer/ (fsdp, fsdp_cpu, deepspeed) and the recipes' global batch, run as the
user runs them: `python train.py experiment=ytvos_large trainer=fsdp_cpu ...` in real processes (gloo on the CPU),
killed with SIGKILL and resumed, the final checkpoint evaluated by eval.py's run."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.configs import TINY_RECIPE, compose_config
from helpers.datasets import synthetic_tokenizer, write_ytvos_dataset
from helpers.runs import Processes, free_ports, subprocess_env
from omegaconf import DictConfig

import eval as eval_entry
import train as train_entry
from callbacks.strategies import SHARDED_BLOCKS, gradient_accumulation, publish_checkpoint_folder
from mpgsam2.weights import load_model

REPO = Path(__file__).resolve().parents[2]
ON_CPU = [
    o for o in TINY_RECIPE if not o.startswith("trainer=")
]  # the tiny model; the trainer is chosen here


def _run(script: str, run_dir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, script, *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _train_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"]


def _logged(run_dir: Path) -> list[dict[str, str]]:
    """The CSV log's rows of the training loss (with their step and epoch)."""
    rows = csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open())
    return [r for r in rows if r.get("train/loss")]


def _losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in _logged(run_dir)}


# ------------------------------------------------------------------------------------------------ global batch


def test_the_accumulation_keeps_the_global_batch_and_an_explicit_one_wins() -> None:
    assert gradient_accumulation(8, 8, 1) == (1, "global batch 8 = 8 devices x 1 clip x 1 accumulation")
    assert gradient_accumulation(8, 2, 1) == (4, "global batch 8 = 2 devices x 1 clip x 4 accumulation")
    assert gradient_accumulation(64, 4, 8)[0] == 2  # RefCOCO: 8 images per device
    assert gradient_accumulation(None, 3, 2) == (1, "global batch 6 = 3 devices x 2 clips x 1 accumulation")
    steps, message = gradient_accumulation(8, 2, 1, explicit=2)
    assert steps == 2 and message.startswith("global batch 4 = 2 devices x 1 clip x 2 accumulation")
    assert "the recipe's global batch is 8" in message
    with pytest.raises(ValueError, match=r"global_batch_size=8 is not a multiple of 3 device\(s\) x 1 clip"):
        gradient_accumulation(8, 3, 1)
    with pytest.raises(ValueError, match=r"global_batch_size=8 is not a multiple of 16 device"):
        gradient_accumulation(8, 16, 1)  # more clips per step than the global batch


def _four_clips(root: Path) -> dict[str, Path]:
    """Two videos of two frames, two expressions each, the object in every frame: four training clips of two
    frames with the same valid-frame count (the loss normaliser), so that the clips' grouping into processes and
    micro-steps changes nothing but float rounding."""
    videos = {
        name: {
            "num_frames": 2,
            "objects": {1: None, 2: None},
            "expressions": {"0": (f"the red square {name}", 1), "1": (f"the blue square {name}", 2)},
        }
        for name in ("vid_a", "vid_b")
    }
    return {
        "data": write_ytvos_dataset(root / "ytvos", "train", videos),
        "tok": synthetic_tokenizer(root / "tok"),
    }


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_accumulating_two_clips_update_as_one_process_accumulating_four(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A global batch of 4 clips on 2 real gloo processes (2 accumulated clips each, gradients averaged over the
    processes) takes the optimizer step of one process accumulating all 4: the loss of each clip is divided by
    the accumulation and the valid-frame count averaged over the processes (the same 2 for every clip here),
    so both are 1/4 of the sum of the four clips' gradients. One process sees the same clips: an item is a
    function of (seed, epoch, index) and the 4 clips are one step's on any process count. (About 15 s on the
    shared 2-core machine: a real two-process train.py; the one-process run is train.py's run in this
    process, beside it.)"""
    data = _four_clips(tmp_path)
    common = [
        "experiment=ytvos_large",
        *ON_CPU,
        "global_batch_size=4",
        f"data.root={data['data']}",
        f"data.tokenizer_path={data['tok']}",
        "data.num_frames=2",
        "data.num_workers=0",
        # no dropout anywhere (MPG modules, SAM 2 memory attention): the comparison is of the arithmetic only
        "model.dropout=0.0",
        *(
            f"++model.sam2.settings.memory_attention.layer.{k}dropout=0.0"
            for k in ("", "self_attention.", "cross_attention.")
        ),
        # plain SGD: the update is the gradient (AdamW's first step is about lr * sign(gradient))
        "system.optimizer._target_=torch.optim.SGD",
        "system.optimizer.lr=0.5",
        "system.optimizer.weight_decay=0.0",
        "system.param_groups=[]",
        "trainer.max_steps=1",
        "logger=none",
        "~callbacks.rich_progress_bar",
        "~callbacks.mask_overlay",
        "~callbacks.lr_monitor",
    ]
    one_process = compose_config("train", [*common, "trainer=cpu"], tmp_path / "d1")
    with Processes(timeout_s=600) as runs:
        # the run under test starts first; this process builds the reference while it runs
        two_run = runs.start(
            _train_command(tmp_path / "d2", [*common, "trainer=ddp_cpu", "trainer.devices=2"])
        )
        initial = _initial_system(one_process)  # the same seed builds the same initial weights in every run
        # the same clips on one process, accumulating all 4 (train.py's run, in this process)
        with caplog.at_level(logging.INFO, logger="train"):
            train_entry.run(one_process)
        two = runs.finish(two_run)
    assert two.code == 0, two.err[-3000:]
    assert (
        "global batch 4 = 2 devices x 1 clip x 2 accumulation" in (tmp_path / "d2" / "train.log").read_text()
    )
    assert "global batch 4 = 1 device x 1 clip x 4 accumulation" in caplog.messages
    final_two = torch.load(tmp_path / "d2" / "checkpoints" / "final.ckpt", weights_only=True)
    final_one = torch.load(tmp_path / "d1" / "run" / "checkpoints" / "final.ckpt", weights_only=True)
    assert final_two["global_step"] == 1 and final_one["global_step"] == 1

    trainable = [n for n, p in initial.named_parameters() if p.requires_grad]
    for name in trainable:
        torch.testing.assert_close(
            final_two["state_dict"][name], final_one["state_dict"][name], rtol=1e-5, atol=1e-6, msg=name
        )
    # the step moved the weights far more than the tolerance
    start = initial.state_dict()
    largest_update = max(
        float((final_two["state_dict"][name] - start[name]).abs().max()) for name in trainable
    )
    assert largest_update > 1e-2


def _initial_system(cfg: DictConfig) -> L.LightningModule:
    """The Lightning system a run of ``cfg`` starts with: its seed and config, built in this process."""
    L.seed_everything(cfg.seed, workers=True)
    system, _ = train_entry.build_components(cfg)
    return system


# --------------------------------------------------------------------------------------------------------- fsdp


@pytest.mark.slow
@pytest.mark.subprocess
def test_fsdp_recipe_trains_resumes_after_a_kill_with_the_same_losses_and_evaluates(tmp_path: Path) -> None:
    """`train.py experiment=ytvos_large trainer=fsdp_cpu` at tiny size, 2 gloo processes (about 45 s on the shared
    2-core machine: three real multi-process runs, two of them at a time, a SIGKILL): the killed run resumes from last.ckpt with the
    per-step losses of the uninterrupted one, across an epoch boundary and the validation at its end, the frozen
    image encoder stays as it was and holds no optimizer state, and eval.py's run of final.ckpt reproduces
    train.py's final J&F.

    Sized for few checkpoint saves (each gathers the full model and optimizer state, about 1.5 s here): 3 steps
    per epoch, 4 steps, last.ckpt every 2 steps, the kill at step 3."""
    # four videos of one two-frame clip per expression, two expressions each: one video held out for validation
    # (an expression per process), the other three give 6 clips, 3 steps per epoch on 2 processes
    videos = {
        f"vid_{i}": {
            "num_frames": 2,
            "objects": {1: None, 2: None},
            "expressions": {"0": ("the red square", 1), "1": ("the blue square", 2)},
        }
        for i in range(4)
    }
    root = write_ytvos_dataset(tmp_path / "ytvos", "train", videos)
    tokenizer = synthetic_tokenizer(tmp_path / "tok")
    common = [
        "experiment=ytvos_large",
        *ON_CPU,
        "trainer=fsdp_cpu",
        f"data.root={root}",
        f"data.tokenizer_path={tokenizer}",
        "data.num_frames=2",
        "data.num_workers=0",
        "data.val_split=holdout",
        "data.holdout_videos=1",
        "global_batch_size=2",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=4",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        # best.ckpt is not looked at here: one full-state save less after each validation (and no
        # checkpoint of Lightning's own in its place)
        "~callbacks.best_checkpoint",
        "+trainer.enable_checkpointing=false",
        "~callbacks.rich_progress_bar",
        "~callbacks.mask_overlay",
    ]
    kill = ["+callbacks.kill._target_=helpers.kill.KillAtStep", "+callbacks.kill.step=3"]
    # the three runs overlap where they can (each on its own rendezvous port): the killed run starts first, the
    # uninterrupted one beside it at a lower priority (it is needed last), the resumed one as soon as the killed
    # one is dead
    ports = free_ports(3)
    with Processes(timeout_s=600) as runs:
        killed_run = runs.start(
            _train_command(tmp_path / "killed", [*common, *kill]), subprocess_env(MASTER_PORT=str(ports[1]))
        )
        full_run = runs.start(
            _train_command(tmp_path / "full", common),
            subprocess_env(MASTER_PORT=str(ports[0])),
            background=True,
        )
        killed = runs.finish(killed_run)
        # SIGKILL at step 3 (both processes), before the validation at the end of epoch 0: last.ckpt is from
        # step 2, mid-epoch
        assert killed.code == -9, killed.err[-3000:]
        checkpoints = tmp_path / "killed" / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == [
            "last.ckpt"
        ]  # a single file, nothing half-written
        last = torch.load(checkpoints / "last.ckpt", weights_only=True)
        assert last["global_step"] == 2 and last["RefYTVOSDataModule"] == {"epoch": 0, "batches_done": 2}
        assert len(last["callbacks"]["RandomStateCheckpoint"]["ranks"]) == 2  # both processes' states

        resumed_run = runs.start(
            _train_command(tmp_path / "resumed", [*common, f"ckpt_path={checkpoints / 'last.ckpt'}"]),
            subprocess_env(MASTER_PORT=str(ports[2])),
        )
        full = runs.finish(full_run)
        assert full.code == 0, full.err[-3000:]
        resumed = runs.finish(resumed_run)
        assert resumed.code == 0, resumed.err[-3000:]
    reference = _losses(tmp_path / "full")
    assert sorted(reference) == list(range(4))
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    after = _losses(tmp_path / "resumed")
    # step 2 ends epoch 0, step 3 comes after its validation, in epoch 1
    assert [(int(r["step"]), int(r["epoch"])) for r in _logged(tmp_path / "resumed")] == [(2, 0), (3, 1)]
    for step, loss in after.items():
        assert loss == pytest.approx(reference[step], abs=1e-6), (step, loss, reference[step])

    # the full model in one file, keyed as a DDP run's: frozen image encoder unchanged, no optimizer state for it
    final_path = tmp_path / "resumed" / "checkpoints" / "final.ckpt"
    final = torch.load(final_path, weights_only=True)
    model = load_model(final_path).model
    assert set(final["state_dict"]) == {f"model.{k}" for k in model.state_dict()}
    frozen = [k for k in final["state_dict"] if k.startswith("model.sam.image_encoder.")]
    assert frozen and all(torch.equal(final["state_dict"][k], last["state_dict"][k]) for k in frozen)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = final["optimizer_states"][0]
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(trainable)
    assert len(optimizer["state"]) <= len(trainable)

    resumed_metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert resumed_metrics["jf"] == pytest.approx(metrics["jf"], abs=1e-6)  # the same training, resumed
    # eval.py's run on the file (in this process: eval.py's command line itself is tested in test_eval_cli.py)
    evaluation = eval_entry.run(compose_config("eval", [f"ckpt={final_path}"], tmp_path / "eval"))
    for key in ("j", "f", "jf"):
        assert evaluation[key] == pytest.approx(resumed_metrics[key], abs=1e-6), key
    assert eval_entry.final_line(evaluation) == (
        f"j={resumed_metrics['j']:.4f} f={resumed_metrics['f']:.4f} jf={resumed_metrics['jf']:.4f}"
    )


def test_the_sharded_units_are_the_models_repeated_blocks() -> None:
    from helpers.tiny import make_tiny_model

    model = make_tiny_model()
    units = [m for m in model.modules() if isinstance(m, SHARDED_BLOCKS)]
    unit_params = {id(p) for u in units for p in u.parameters()}
    beit3 = [p for n, p in model.named_parameters() if ".layers." in n and n.startswith("beit3.")]
    encoder = list(model.sam.image_encoder.parameters())
    assert beit3 and all(id(p) in unit_params for p in beit3 + encoder)


# ---------------------------------------------------------------------------------------------------- deepspeed


@pytest.mark.subprocess
def test_deepspeed_is_refused_without_cuda_before_anything_is_read(tmp_path: Path) -> None:
    assert not torch.cuda.is_available()
    data_dir = tmp_path / "data"
    run = _run(
        "train.py",
        tmp_path / "run",
        "experiment=demo",
        "trainer=deepspeed",
        "logger=csv",
        f"paths.data_dir={data_dir}",
        timeout=120,
    )
    assert run.returncode != 0
    assert "trainer=deepspeed needs CUDA GPUs (torch.cuda.is_available() is False" in run.stderr
    assert "nothing was built or read" in run.stderr
    assert not data_dir.exists()  # the synthetic dataset was not generated
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_folder_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"

    def staged(step: int) -> Path:
        folder = tmp_path / f".last.ckpt.step{step}.d"
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "checkpoint" / "state.pt").write_text(str(step))
        return folder

    publish_checkpoint_folder(staged(1), target)
    assert (target / "checkpoint" / "state.pt").read_text() == "1"
    staged(2)  # a save killed before publishing: the target still names the complete previous checkpoint
    assert (target / "checkpoint" / "state.pt").read_text() == "1"
    publish_checkpoint_folder(staged(3), target)
    assert (target / "checkpoint" / "state.pt").read_text() == "3"
    # the previous folder and the killed save's are gone; the link is relative (the run folder may move)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.ckpt.step3.d", "last.ckpt"]
    assert os.readlink(target) == ".last.ckpt.step3.d"
    real = tmp_path / "other.ckpt"
    real.mkdir()
    with pytest.raises(IsADirectoryError, match=r"other\.ckpt: a folder not written by this run"):
        publish_checkpoint_folder(staged(4), real)
