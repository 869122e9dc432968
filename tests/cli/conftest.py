"""The command-line tests' shared run: one real two-process DDP `train.py` (Lightning starts the second process,
gloo on the CPU), the reference of tests/cli/test_multinode.py's launchers and the J&F-sync check of
tests/cli/test_train.py. Starting a process that imports Lightning takes seconds on the 2-core machine: the run
is made once per session."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.runs import TINY_DDP_TRAINING, Processes, losses


@dataclass(frozen=True)
class DDPRun:
    data_dir: Path  # the synthetic dataset it generated (the other runs read it)
    run_dir: Path
    stdout: str  # both processes' (the Lightning launcher's child writes to its parent's stdout)


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> DDPRun:
    """`python train.py` + :data:`helpers.runs.TINY_DDP_TRAINING` + `trainer=ddp_cpu`: one machine, two
    processes, 3 steps, then the final weights validated."""
    tmp = tmp_path_factory.mktemp("ddp_run")
    data_dir, run_dir = tmp / "data", tmp / "run"
    args = [
        sys.executable,
        "train.py",
        *TINY_DDP_TRAINING,
        "trainer=ddp_cpu",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    with Processes() as run:
        finished = run.finish(run.start(args))
    assert finished.code == 0, finished.err[-3000:]
    assert sorted(losses(run_dir)) == [0, 1, 2]
    return DDPRun(data_dir, run_dir, finished.out)
