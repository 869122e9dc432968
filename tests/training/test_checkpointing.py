"""Checkpoints a user can trust: atomic writes (killed or failing writes keep the previous file and leave nothing
behind), last.ckpt always the latest state, random states restored, exact resume after a SIGKILL."""

from __future__ import annotations

import csv
import errno
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.runs import Processes
from torch import nn

from callbacks.checkpointing import (
    AtomicCheckpointIO,
    LatestCheckpoint,
    capture_random_state,
    first_nonfinite_parameter,
    restore_random_state,
)
from mpgsam2 import utils
from mpgsam2.utils import atomic_write
from mpgsam2.weights import CheckpointError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.subprocess
def test_a_save_killed_midway_keeps_the_previous_checkpoint_and_leaves_no_file(tmp_path: Path) -> None:
    # TMPDIR on another file system (/dev/shm, as on clusters): nothing may be written there, and the kill
    # (SIGKILL, no clean-up possible) must leave the previous checkpoint whole and no temporary file anywhere
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    tmpdir = Path(os.path.realpath(shm)) / f"mpgsam2-test-{os.getpid()}"
    tmpdir.mkdir()
    ckpt_dir = tmp_path / "checkpoints"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from callbacks.checkpointing import AtomicCheckpointIO

        class KillWhilePickled:
            def __reduce__(self):  # runs in the middle of torch.save, after bytes were written
                os.kill(os.getpid(), signal.SIGKILL)

        io = AtomicCheckpointIO()
        path = {str(ckpt_dir / "last.ckpt")!r}
        io.save_checkpoint({{"step": 1, "w": torch.arange(300_000.0)}}, path)
        io.save_checkpoint({{"step": 2, "w": torch.zeros(300_000), "bomb": KillWhilePickled()}}, path)
        """
    )
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, timeout=120)
        assert proc.returncode == -9  # it was killed inside the second save
        assert [p.name for p in ckpt_dir.iterdir()] == ["last.ckpt"]
        assert list(tmpdir.iterdir()) == []
        previous = AtomicCheckpointIO().load_checkpoint(ckpt_dir / "last.ckpt")
        assert previous["step"] == 1 and torch.equal(previous["w"], torch.arange(300_000.0))
    finally:
        for leftover in tmpdir.iterdir():
            leftover.unlink()
        tmpdir.rmdir()


def test_a_failed_write_names_the_file_and_keeps_the_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    utils.write_json_atomic(target, {"jf": 0.5})

    def disk_full(f: object) -> None:
        f.write(b"{")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"metrics\.json: could not write \(No space left on device\)"):
        atomic_write(target, disk_full)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"jf":0.5}'


def test_without_o_tmpfile_a_named_temporary_is_used_and_stale_ones_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(utils, "_open_unnamed", lambda folder: -1)  # e.g. a file system without O_TMPFILE
    target = tmp_path / "last.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".last.ckpt.{dead.pid}.tmp"  # left by a killed save of a process that no longer runs
    stale.write_bytes(b"partial")
    seen: list[list[str]] = []

    def write(f: object) -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        f.write(b"complete")  # type: ignore[attr-defined]

    atomic_write(target, write)
    assert seen == [[f".last.ckpt.{os.getpid()}.tmp"]]  # the stale file was gone before the write began
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"] and target.read_bytes() == b"complete"


def test_loading_a_refused_checkpoint_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hook": print}, bad)
    with pytest.raises(CheckpointError, match=r"last\.ckpt: refusing to load an arbitrary pickle") as err:
        AtomicCheckpointIO().load_checkpoint(bad)
    assert "weights_only=False" not in str(err.value) and err.value.__cause__ is None
    with pytest.raises(CheckpointError, match=r"missing\.ckpt: checkpoint not found"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_random_states_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.rand(5), np.random.rand(5), random.random()
    state = capture_random_state()
    path = tmp_path / "state.pt"
    torch.save(state, path)
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_random_state(torch.load(path, weights_only=True))
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_last_checkpoint_refuses_to_overwrite_with_non_finite_weights(tmp_path: Path) -> None:
    module = nn.Linear(2, 2)
    assert first_nonfinite_parameter(module) is None
    with torch.no_grad():
        module.bias[1] = float("nan")
    assert first_nonfinite_parameter(module) == "bias"

    class Trainer:  # what LatestCheckpoint.save reads of the trainer
        fast_dev_run = False
        sanity_checking = False
        global_step = 7

        def save_checkpoint(self, path: Path) -> None:  # pragma: no cover - must not be reached
            raise AssertionError("saved a non-finite state")

    callback = LatestCheckpoint(str(tmp_path), every_n_train_steps=1)
    with pytest.raises(
        FloatingPointError, match=r"step 7: parameter bias is not finite; not overwriting .*last\.ckpt"
    ):
        callback.save(Trainer(), module)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- a real process, killed


def _train_command(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "experiment=demo",
        # one video of 4 frames: 6 clips, 3 steps of 2 clips per epoch
        "data.generator.num_train_videos=1",
        "data.generator.num_valid_videos=1",
        "data.generator.num_frames=4",
        "data.batch_size=2",
        "data.val_split=null",  # training only: the losses are compared
        "model.dropout=0.1",  # random draws in every step: the resumed run must draw the same ones
        "logger=csv",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=7",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "~callbacks.rich_progress_bar",
        "~callbacks.mask_overlay",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _logged(run_dir: Path) -> list[dict[str, str]]:
    """The CSV log's rows of the training loss (with their step and epoch)."""
    rows = csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open())
    return [r for r in rows if r.get("train/loss")]


def _losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in _logged(run_dir)}


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_killed_mid_epoch_resumes_with_the_same_losses(tmp_path: Path) -> None:
    # the killed run starts first, the uninterrupted one beside it at a lower priority (it is needed last; each
    # generates its copy of the synthetic dataset), the resumed one as soon as the killed one is dead
    with Processes(timeout_s=900) as runs:
        killed_run = runs.start(
            _train_command(
                tmp_path / "killed",
                tmp_path / "data",
                "+callbacks.kill._target_=helpers.kill.KillAtStep",
                "+callbacks.kill.step=3",
            )
        )
        full_run = runs.start(_train_command(tmp_path / "full", tmp_path / "full_data"), background=True)
        killed = runs.finish(killed_run)
        assert killed.code == -9, killed.err[-3000:]  # SIGKILL at step 3: last.ckpt is from step 2, mid-epoch
        last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
        stored = torch.load(last, weights_only=True)
        assert stored["global_step"] == 2 and stored["SyntheticDataModule"] == {"epoch": 0, "batches_done": 2}
        assert not (tmp_path / "killed" / "checkpoints" / "final.ckpt").exists()

        resumed_run = runs.start(_train_command(tmp_path / "resumed", tmp_path / "data", f"ckpt_path={last}"))
        full = runs.finish(full_run)
        assert full.code == 0, full.err[-3000:]
        resumed = runs.finish(resumed_run)
        assert resumed.code == 0, resumed.err[-3000:]
    reference = _losses(tmp_path / "full")
    assert sorted(reference) == list(range(7))
    after = _losses(tmp_path / "resumed")
    # steps 2.. (0-based): the rest of epoch 0, all of epoch 1 (steps 3-5) and the start of epoch 2
    assert sorted(after) == list(range(2, 7))
    epochs = [(int(r["step"]), int(r["epoch"])) for r in _logged(tmp_path / "resumed")]
    assert epochs == [(2, 0), (3, 1), (4, 1), (5, 1), (6, 2)]
    for step, loss in after.items():
        assert loss == pytest.approx(reference[step], abs=1e-6), (step, loss, reference[step])
