"""Several machines: two `torchrun` launchers on localhost (`trainer.num_nodes=2`, one process each) train
exactly as one machine with two processes; the SLURM launcher config (`hydra/launcher=slurm`) asks SLURM for
one task per GPU on `trainer.num_nodes` nodes, which is what Lightning's SLURM environment checks, and a job
submitted through it to a stand-in `sbatch` trains as the same two processes.

The runs of train.py (about 20-40 s each on the 2-core CPU machine: process start-up and a rendezvous
dominate) are what is tested: the launchers as a user starts them. The one-machine reference is the session's
shared two-process run (`ddp_run`, tests/cli/conftest.py), which runs beside the first of them; these runs use
its config and its dataset."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from helpers.configs import hydra_config_dir
from helpers.runs import (
    REPO,
    TINY_DDP_TRAINING,
    Processes,
    SharedDDPRun,
    final_weights,
    free_ports,
    losses,
    subprocess_env,
)
from hydra import compose
from omegaconf import DictConfig


def _train_args(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["train.py", *TINY_DDP_TRAINING, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *extra]


def _assert_same_training(ddp_run: SharedDDPRun, run_dir: Path) -> None:
    ddp_run.wait()
    reference = ddp_run.run_dir
    assert losses(run_dir) == losses(reference)  # exactly: the same processes, data shards and all-reduce
    a, b = final_weights(reference), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the same J&F of the final weights, gathered from the two processes' shards of the valid split
    jf = json.loads((run_dir / "metrics.json").read_text())["jf"]
    assert jf == pytest.approx(json.loads((reference / "metrics.json").read_text())["jf"], abs=1e-6)


# two machines of one process each
TWO_NODES = ["trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_torchrun_nodes_on_localhost_train_as_one_node_of_two_processes(
    tmp_path: Path, ddp_run: SharedDDPRun
) -> None:
    # one torchrun per node, as the command of docs/configs.md (node rank 0 and 1)
    [port] = free_ports(1)
    with Processes() as run:
        nodes = [
            run.start(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes=2",
                    "--nproc-per-node=1",
                    f"--node-rank={rank}",
                    "--master-addr=127.0.0.1",
                    f"--master-port={port}",
                    *_train_args(tmp_path / "two_nodes", ddp_run.data_dir, *TWO_NODES),
                ]
            )
            for rank in (0, 1)
        ]
        results = run.finish_all(nodes)
    assert [r.code for r in results] == [0, 0], "\n".join(r.err[-3000:] for r in results)
    # one world of two processes across the two launchers (not two single-process runs)
    for rank, result in enumerate(results):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in result.out + result.err
    _assert_same_training(ddp_run, tmp_path / "two_nodes")


# ------------------------------------------------------------------------- SLURM (Hydra's submitit launcher)


def _launcher_config(*overrides: str) -> DictConfig:
    with hydra_config_dir():
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize(
    ("overrides", "nodes", "gpus"),
    [
        (["experiment=ytvos_large", "trainer.num_nodes=2"], 2, 8),  # the README's command: 2 nodes x 8 GPUs
        (["experiment=mevis_base", "trainer.num_nodes=4", "trainer.devices=4"], 4, 4),
        (["experiment=ytvos_tiny", "trainer=gpu"], 1, 1),
    ],
)
def test_the_slurm_launcher_asks_for_one_task_per_gpu_on_the_trainers_nodes(
    overrides: list[str], nodes: int, gpus: int
) -> None:
    launcher = _launcher_config(*overrides)
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (nodes, gpus, gpus)
    assert launcher.partition is None and launcher.setup == []
    assert launcher.max_num_timeout == 0  # no resubmission: resume is by ckpt_path (docs/configs.md)
    # the overrides of the launcher's own keys in docs/configs.md
    setup = 'hydra.launcher.setup=["source /venv/bin/activate"]'
    changed = _launcher_config(*overrides, "hydra.launcher.partition=gpu", setup)
    assert changed.partition == "gpu" and list(changed.setup) == ["source /venv/bin/activate"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_fake_slurm_job_of_two_nodes_trains_as_one_node_of_two_processes(
    tmp_path: Path, ddp_run: SharedDDPRun
) -> None:
    """`python train.py -m hydra/launcher=slurm ...` end to end: submitit writes the batch script and calls
    `sbatch`, here tests/helpers/fake_sbatch.py, which starts the srun command's tasks on this machine with the
    SLURM_* variables; Lightning's SLURMEnvironment makes them one world of two processes."""
    bin_dir, pids = tmp_path / "bin", tmp_path / "pids"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f'#!/bin/sh\nexec {sys.executable} {REPO / "tests" / "helpers" / "fake_sbatch.py"} "$@"\n'
    )
    # submitit checks that srun exists; fake_sbatch runs the script's srun line itself
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\necho 'srun is not run in this test' >&2\nexit 1\n")
    for tool in (sbatch, srun):
        tool.chmod(0o755)
    env = subprocess_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_SBATCH_PIDS=str(pids),
        MASTER_PORT=str(free_ports(1)[0]),  # else Lightning's port from the job id
    )
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        *TINY_DDP_TRAINING,
        *TWO_NODES,
        f"paths.data_dir={ddp_run.data_dir}",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.setup=['export MPGSAM2_TEST_SETUP=ran']",
    ]
    try:
        with Processes() as run:
            launcher = run.finish(run.start(cmd, env))
    finally:  # the tasks fake_sbatch started are not the launcher's children
        for pid in map(int, pids.read_text().split()) if pids.exists() else []:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    logs = sorted((sweep / ".submitit").glob("*/*_log.*"))
    task_output = "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in logs)
    assert launcher.code == 0, launcher.err[-3000:] + task_output

    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--job-name=train"):
        assert f"#SBATCH {flag}\n" in script
    assert "export MPGSAM2_TEST_SETUP=ran" in script
    for rank in (0, 1):
        [err_log] = [p for p in logs if p.name.endswith(f"_{rank}_log.err")]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in err_log.read_text()
    _assert_same_training(ddp_run, sweep / "0")
