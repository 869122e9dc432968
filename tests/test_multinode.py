"""Several machines: two `torchrun` launchers on localhost (`trainer.num_nodes=2`, one process each) train exactly
as one machine with two processes; the SLURM launcher config (`hydra/launcher=slurm`) asks SLURM for one task
per GPU on `trainer.num_nodes` nodes, which is what Lightning's SLURM environment checks."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

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
    """Wait for every process; on a timeout or a failed process, kill each one's process group (the launcher and
    the workers it started) so that no straggler holds the port or the CPU."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
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


def test_two_torchrun_nodes_on_localhost_train_as_one_node_of_two_processes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    deadline = time.monotonic() + TIMEOUT_S
    # one machine, two processes (Lightning starts the second); it also generates the shared dataset
    one_node = subprocess.Popen(
        [sys.executable, *_train_args(tmp_path / "one_node", data_dir, "trainer=ddp_cpu")],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    [(code, _, err)] = _wait_all([one_node], deadline)
    assert code == 0, err[-3000:]

    # two machines of one process each: one torchrun per node, as the README's command (node rank 0 and 1)
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
                *_train_args(
                    tmp_path / "two_nodes",
                    data_dir,
                    "trainer=ddp_cpu",
                    "trainer.devices=1",
                    "trainer.num_nodes=2",
                ),
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
    results = _wait_all(nodes, deadline)
    assert [code for code, _, _ in results] == [0, 0], "\n".join(err[-3000:] for _, _, err in results)
    # one world of two processes across the two launchers (not two single-process runs)
    for rank, (_, out, err) in enumerate(results):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out + err

    reference, two_nodes = _losses(tmp_path / "one_node"), _losses(tmp_path / "two_nodes")
    assert sorted(reference) == [0, 1, 2]
    assert two_nodes == reference  # exactly: the same processes, data shards and all-reduce
    a, b = _weights(tmp_path / "one_node"), _weights(tmp_path / "two_nodes")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
