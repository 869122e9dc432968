"""A stand-in for SLURM's `sbatch` on one machine, for tests (tests/cli/test_multinode.py puts it on PATH as
`sbatch`).

It reads the batch script that submitit wrote and does what SLURM would do with its `srun` line: starts
`--nodes` x `--ntasks-per-node` processes of the srun command for each array element, each with the SLURM_*
variables srun sets (job and array ids, rank, local rank, node id, task counts, node list: this machine),
writes their output where `srun --output/--error` says, and prints `Submitted batch job <id>` as sbatch does.
The process ids go to the file named by FAKE_SBATCH_PIDS so that the test can end them. Only localhost:
MASTER_PORT comes from the caller's environment."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

JOB_ID = 4242


def main(script_path: str) -> None:
    script = Path(script_path).read_text()
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, re.MULTILINE))
    nodes, tasks_per_node = int(flags.get("nodes", 1)), int(flags.get("ntasks-per-node", 1))
    # one job is submitted as a plain job, several (a multirun sweep) as an array
    array = re.fullmatch(r"0-(\d+)(%\d+)?", flags["array"]) if "array" in flags else None
    if "array" in flags and array is None:
        raise SystemExit(f"{script_path}: unsupported --array={flags['array']}")
    [srun_line] = [line for line in script.splitlines() if line.startswith("srun ")]
    words = shlex.split(srun_line)[1:]
    outputs = {}
    while words[0].startswith("--"):
        flag = words.pop(0)
        if flag in ("--output", "--error"):
            outputs[flag] = words.pop(0)
    command = words
    setup = script.split("# setup\n", 1)[1].split("\n\n", 1)[0] if "# setup\n" in script else ""
    pids = []
    for index in range(int(array.group(1)) + 1 if array else 1):
        job_id = JOB_ID + 1 + index if array else JOB_ID  # an array element has its own job id
        array_ids = {"SLURM_ARRAY_JOB_ID": str(JOB_ID), "SLURM_ARRAY_TASK_ID": str(index)} if array else {}
        for rank in range(nodes * tasks_per_node):
            env = {
                **os.environ,
                **array_ids,
                "SUBMITIT_EXECUTOR": "slurm",
                "SLURM_JOB_ID": str(job_id),
                "SLURM_JOB_NAME": flags.get("job-name", "fake"),
                "SLURM_NNODES": str(nodes),
                "SLURM_JOB_NUM_NODES": str(nodes),
                "SLURM_NTASKS": str(nodes * tasks_per_node),
                "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
                "SLURM_NODEID": str(rank // tasks_per_node),
                "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(rank % tasks_per_node),
                "SLURM_NODELIST": "127.0.0.1",
                "SLURM_JOB_NODELIST": "127.0.0.1",
            }
            names = {"%A": str(JOB_ID), "%a": str(index), "%t": str(rank), "%j": str(job_id)}
            streams = []
            for flag in ("--output", "--error"):
                path = outputs[flag]
                for pattern, value in names.items():
                    path = path.replace(pattern, value)
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                streams.append(open(path, "a"))  # noqa: SIM115 - handed to the child process
            # the script's setup lines run before the task, in the same shell (as in the sbatch script)
            shell = f"{setup}\nexec {shlex.join(command)}"
            proc = subprocess.Popen(
                ["bash", "-c", shell], env=env, stdout=streams[0], stderr=streams[1], start_new_session=True
            )
            pids.append(proc.pid)
    with open(os.environ["FAKE_SBATCH_PIDS"], "a") as f:
        f.write("".join(f"{pid}\n" for pid in pids))
    print(f"Submitted batch job {JOB_ID}")


if __name__ == "__main__":
    main(sys.argv[-1])
