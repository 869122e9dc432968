"""Several machines: two `torchrun` launchers on localhost (`trainer.num_nodes=2`, one process each) train
exactly as one machine with two processes; the SLURM launcher config (`hydra/launcher=slurm`) asks SLURM for
one task per GPU on `trainer.num_nodes` nodes, which is what Lightning's SLURM environment checks, and a job
submitted through it to a stand-in `sbatch` trains as the same two processes.

The three runs of train.py (about 20-40 s each on the 2-core CPU machine: process start-up and a rendezvous
dominate) are what is tested: the launchers as a user starts them."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.configs import hydra_config_dir
from hydra import compose
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[2]

# train.py at tiny size: the tiny synthetic dataset, training only, every step's loss in the CSV log
TINY_TRAINING = [
    "experiment=demo",
    "data.generator.num_train_videos=4",
    "data.generator.num_valid_videos=2",
    "data.generator.num_frames=4",
    "data.batch_size=1",
    "data.val_split=null",  # training only: the losses and weights are compared
    "validate=false",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=3",
    "~callbacks.rich_progress_bar",
    "~callbacks.mask_overlay",
]
TIMEOUT_S = 240  # a bound on a hung rendezvous; both runs take ~30 s on the 2-core CPU machine


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["train.py", *TINY_TRAINING, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}", *extra]


def _wait_all(procs: list[subprocess.Popen], deadline: float) -> list[tuple[int, str, str]]:
    """Wait for every process; on a timeout or a failed process, kill each one's process group (the launcher
    and the workers it started) so that no straggler holds the port or the CPU."""
    results = []
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


def _losses(run_dir: Path) -> dict[int, float]:
    rows = csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One machine, two processes (`trainer=ddp_cpu`, Lightning starts the second): the reference run. It also
    generates the shared dataset. Returns (data dir, run dir)."""
    tmp = tmp_path_factory.mktemp("one_node")
    data_dir, run_dir = tmp / "data", tmp / "run"
    proc = subprocess.Popen(
        [sys.executable, *_train_args(run_dir, data_dir, "trainer=ddp_cpu")],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    [(code, _, err)] = _wait_all([proc], time.monotonic() + TIMEOUT_S)
    assert code == 0, err[-3000:]
    assert sorted(_losses(run_dir)) == [0, 1, 2]
    return data_dir, run_dir


def _assert_same_training(reference: Path, run_dir: Path) -> None:
    assert _losses(run_dir) == _losses(reference)  # exactly: the same processes, data shards and all-reduce
    a, b = _weights(reference), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# two machines of one process each
TWO_NODES = ["trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_torchrun_nodes_on_localhost_train_as_one_node_of_two_processes(
    tmp_path: Path, one_node: tuple[Path, Path]
) -> None:
    data_dir, reference = one_node
    # one torchrun per node, as the command of docs/configs.md (node rank 0 and 1)
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                *_train_args(tmp_path / "two_nodes", data_dir, *TWO_NODES),
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for rank in (0, 1)
    ]
    results = _wait_all(nodes, time.monotonic() + TIMEOUT_S)
    assert [code for code, _, _ in results] == [0, 0], "\n".join(err[-3000:] for _, _, err in results)
    # one world of two processes across the two launchers (not two single-process runs)
    for rank, (_, out, err) in enumerate(results):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out + err
    _assert_same_training(reference, tmp_path / "two_nodes")


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
    tmp_path: Path, one_node: tuple[Path, Path]
) -> None:
    """`python train.py -m hydra/launcher=slurm ...` end to end: submitit writes the batch script and calls
    `sbatch`, here tests/helpers/fake_sbatch.py, which starts the srun command's tasks on this machine with the
    SLURM_* variables; Lightning's SLURMEnvironment makes them one world of two processes."""
    data_dir, reference = one_node
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
    env = {
        **_env(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SBATCH_PIDS": str(pids),
        "MASTER_PORT": str(_free_port()),  # else Lightning's port from the job id
    }
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        *TINY_TRAINING,
        *TWO_NODES,
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.setup=['export MPGSAM2_TEST_SETUP=ran']",
    ]
    launcher = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        [(code, _, err)] = _wait_all([launcher], time.monotonic() + TIMEOUT_S)
    finally:  # the tasks fake_sbatch started are not the launcher's children
        for pid in map(int, pids.read_text().split()) if pids.exists() else []:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    logs = sorted((sweep / ".submitit").glob("*/*_log.*"))
    task_output = "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in logs)
    assert code == 0, err[-3000:] + task_output

    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--job-name=train"):
        assert f"#SBATCH {flag}\n" in script
    assert "export MPGSAM2_TEST_SETUP=ran" in script
    for rank in (0, 1):
        [err_log] = [p for p in logs if p.name.endswith(f"_{rank}_log.err")]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in err_log.read_text()
    _assert_same_training(reference, sweep / "0")
