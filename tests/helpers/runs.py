"""Real `train.py` runs for the command-line tests: their environment, the shared tiny training config of the
multi-process runs, waiting for process groups, and what a run leaves (per-step losses, final weights)."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from omegaconf import OmegaConf

from helpers.configs import compose_config
from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos

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


_PORTS_GIVEN: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` free TCP ports of localhost for the rendezvous of runs that run beside each other
    (``MASTER_PORT``): different from each other and from every port this process gave before (a run binds its
    port seconds after it starts; one chosen meanwhile must not be the same)."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)  # held until all are chosen: the system gives each a different one
            if s.getsockname()[1] in _PORTS_GIVEN:
                sockets.pop().close()
        ports = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    _PORTS_GIVEN.update(ports)
    return ports


@dataclass(frozen=True)
class Finished:
    code: int | None  # None: no exit before the deadline (the process group was killed)
    out: str
    err: str


class Processes:
    """The processes a test starts (``with Processes() as run: proc = run.start([...])``), each in a session of
    its own, its output captured in temporary files (not pipes: a process that runs while the test waits for
    another must never block on a full pipe). When the block ends (at the end, by a failed assertion or a
    timeout), what is left of each one's process group (the launcher and the workers it started) is killed, so
    that no straggler holds a port or the CPU.

    Args:
        timeout_s: the deadline of every :meth:`finish`, from the start of the block.
    """

    def __init__(self, timeout_s: float = TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._procs: dict[subprocess.Popen, tuple[IO[bytes], IO[bytes]]] = {}

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc, files in self._procs.items():
            self._kill(proc)
            for f in files:
                f.close()

    def start(
        self, args: list[str], env: dict[str, str] | None = None, background: bool = False
    ) -> subprocess.Popen:
        """Start ``args`` in the repository (environment: :func:`subprocess_env` unless given). ``background``:
        at a lower CPU priority (``nice``), for a run off the test's critical path that shares the cores with
        one on it."""
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        command = ["nice", "-n", "10", *args] if background else args
        proc = subprocess.Popen(
            command, cwd=REPO, env=env or subprocess_env(), stdout=out, stderr=err, start_new_session=True
        )
        self._procs[proc] = (out, err)
        return proc

    def finish(self, proc: subprocess.Popen) -> Finished:
        """Wait for ``proc`` until the deadline (then kill its process group)."""
        try:
            code = proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._kill(proc)
            code = None
        out, err = (self._read(f) for f in self._procs[proc])
        if code is None:
            err += f"\n{shlex.join(proc.args)}: no exit within {self.timeout_s:.0f} s"
        return Finished(code, out, err)

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
    def _read(f: IO[bytes]) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        # the group also when its first process has exited: a worker it started may live on
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class SharedDDPRun:
    """`python train.py` + :data:`helpers.runs.TINY_DDP_TRAINING` + `trainer=ddp_cpu`: one machine, two
    processes, 3 steps, then the final weights validated. Its dataset is in :attr:`data_dir` before it starts
    (generated in this process: the runs started beside it read it and need not generate it at once)."""

    def __init__(self, runs: Processes, root: Path) -> None:
        self.data_dir, self.run_dir = root / "data", root / "run"
        cfg = compose_config("train", TINY_DDP_TRAINING, root / "compose", self.data_dir)
        generate_synthetic_ytvos(cfg.data.root, SyntheticConfig(**OmegaConf.to_container(cfg.data.generator)))
        args = [
            sys.executable,
            "train.py",
            *TINY_DDP_TRAINING,
            "trainer=ddp_cpu",
            f"paths.data_dir={self.data_dir}",
            f"hydra.run.dir={self.run_dir}",
        ]
        self._runs = runs
        self._proc: subprocess.Popen = runs.start(args, subprocess_env(MASTER_PORT=str(free_ports(1)[0])))
        self._finished: Finished | None = None

    def wait(self) -> Finished:
        """Wait for the run (once): it trained its 3 steps and exited without an error. Returns its output (both
        processes': the Lightning launcher's child writes to its parent's stdout)."""
        if self._finished is None:
            self._finished = self._runs.finish(self._proc)
        assert self._finished.code == 0, self._finished.err[-3000:]
        assert sorted(losses(self.run_dir)) == [0, 1, 2]
        return self._finished


def losses(run_dir: Path) -> dict[int, float]:
    """The per-step training losses of a run's CSV log."""
    rows = csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]
