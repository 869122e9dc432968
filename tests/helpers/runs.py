"""Real `train.py` runs for the command-line tests: their environment, the shared tiny training config of the
multi-process runs, waiting for process groups, and what a run leaves (per-step losses, final weights)."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

# train.py at tiny size for the multi-process runs of the test model (tests/cli/conftest.py's `ddp_run` and the
# launchers of test_multinode.py, which must train exactly as it): the tiny synthetic dataset, every step's loss
# in the CSV log, the final weights validated (J&F gathered from the processes' shards of the valid split)
TINY_DDP_TRAINING = [
    "experiment=demo",
    "data.generator.num_train_videos=4",
    "data.generator.num_valid_videos=2",
    "data.generator.num_frames=4",
    "data.batch_size=1",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=3",
    "~callbacks.rich_progress_bar",
    "~callbacks.mask_overlay",
]
TIMEOUT_S = 240  # a bound on a hung rendezvous; a run takes 20-40 s on the 2-core CPU machine


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with the repository importable and one thread per process (the processes of a run share
    the 2 cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``args`` in the repository in a session of its own (so that :func:`wait_all` can end the processes
    it starts), its output captured."""
    return subprocess.Popen(
        args,
        cwd=REPO,
        env=env or subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_all(procs: list[subprocess.Popen], deadline: float) -> list[tuple[int | None, str, str]]:
    """Wait for every process: (exit code, stdout, stderr) each. On a timeout or a failed process, kill each
    one's process group (the launcher and the workers it started) so that no straggler holds the port or the
    CPU."""
    results: list[tuple[int | None, str, str]] = []
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                results.append((None, "", f"{shlex.join(proc.args)}: no exit within {TIMEOUT_S} s"))
                break
            results.append((proc.returncode, out, err))
            if proc.returncode != 0:
                break
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return results


def losses(run_dir: Path) -> dict[int, float]:
    """The per-step training losses of a run's CSV log."""
    rows = csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]
