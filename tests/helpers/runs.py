"""Real `train.py` runs for the command-line tests: their environment, the shared tiny training config of the
multi-process runs, waiting for process groups, and what a run leaves (per-step losses, final weights)."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
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
    """This environment with the repository and tests/ importable (``helpers.kill``) and one thread per process
    (the processes of a run share the 2 cores)."""
    path = os.pathsep.join([str(REPO), str(REPO / "tests")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def free_ports(count: int) -> list[int]:
    """``count`` different free TCP ports of localhost (held together while chosen): one per multi-process run
    that runs beside others (``MASTER_PORT``)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class Finished:
    code: int | None  # None: no exit before the deadline (the process group was killed)
    out: str
    err: str


class Processes:
    """The processes a test starts (``with Processes() as run: proc = run.start([...])``), each in a session of
    its own, their output captured. When the block ends (at the end, by a failed assertion or a timeout), what
    is left of each one's process group (the launcher and the workers it started) is killed, so that no
    straggler holds a port or the CPU.

    Args:
        timeout_s: the deadline of every :meth:`finish`, from the start of the block.
    """

    def __init__(self, timeout_s: float = TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            self._kill(proc)

    def start(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``args`` in the repository (environment: :func:`subprocess_env` unless given)."""
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env or subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen) -> Finished:
        """Wait for ``proc`` until the deadline (then kill its process group)."""
        try:
            out, err = proc.communicate(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._kill(proc)
            return Finished(None, "", f"{shlex.join(proc.args)}: no exit within {self.timeout_s:.0f} s")
        return Finished(proc.returncode, out, err)

    def finish_all(self, procs: list[subprocess.Popen]) -> list[Finished]:
        """Wait for each process in order, up to the first that fails (the others are killed when the block
        ends)."""
        results: list[Finished] = []
        for proc in procs:
            results.append(self.finish(proc))
            if results[-1].code != 0:
                break
        return results

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        # the group also when its first process has exited: a worker it started may live on
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def losses(run_dir: Path) -> dict[int, float]:
    """The per-step training losses of a run's CSV log."""
    rows = csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]
