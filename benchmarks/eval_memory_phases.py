"""Where ``predict_video``'s peak memory is reached: the peak RSS growth within each phase of one call (BEiT-3
calls, the clip context with the mask prior, the decoder's context projections, tracking to the end), at the
mid-size preset of ``eval_throughput.py``.

RSS is sampled every 2 ms from ``/proc/self/statm`` (Linux); the phases are told apart by wrapping
``MPGSAM2.context_from_tokens`` and the global context's projection (``project_global_context``). Freed memory
may stay in the process, so a phase's figure is the highest RSS seen while it ran, above the RSS before the call.

    python benchmarks/eval_memory_phases.py [--frames 8 32] [--k 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_throughput import ORIG_SIZE, expressions, mid_model, video  # noqa: E402

import mpgsam2.modeling.mpgsam2 as modeling_module  # noqa: E402
from mpgsam2.inference import predict_video  # noqa: E402
from mpgsam2.modeling.sam2.global_context import project_global_context  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def phases(model: torch.nn.Module, frames: int, k: int) -> list[tuple[str, float]]:
    """(phase, peak RSS growth in MiB) of one ``predict_video`` call on a fresh video of ``frames`` frames."""
    sam, beit = video(model, frames, seed=frames)
    exprs = expressions(k, seed=k)
    marks: list[tuple[str, float]] = []
    context_from_tokens = model.context_from_tokens

    def timed_context(tokens, **options):  # noqa: ANN001, ANN003, ANN202
        marks.append(("BEiT-3 calls", time.perf_counter()))
        out = context_from_tokens(tokens, **options)
        marks.append(("context (mask prior)", time.perf_counter()))
        return out

    def timed_projection(decoder, global_context):  # noqa: ANN001, ANN202
        out = project_global_context(decoder, global_context)
        marks.append(("decoder context projections", time.perf_counter()))
        return out

    model.context_from_tokens = timed_context
    # start_tracking calls the projection through the model module's name for it
    modeling_module.project_global_context = timed_projection
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_mib()))
            time.sleep(0.002)

    base = rss_mib()
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        predict_video(model, sam, beit, exprs, ORIG_SIZE)
        marks.append(("tracking, to the end", time.perf_counter()))
    finally:
        done.set()
        sampler.join()
        del model.context_from_tokens
        modeling_module.project_global_context = project_global_context
    out, previous = [], start
    for name, end in marks:
        seen = [r for t, r in samples if previous <= t <= end]
        out.append((name, (max(seen) if seen else base) - base))
        previous = end
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sam-size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = mid_model(args.sam_size)
    predict_video(model, *video(model, 2), expressions(1), ORIG_SIZE)  # warm-up: allocator and kernels
    rows = [(frames, phases(model, frames, args.k)) for frames in args.frames]
    names = [name for name, _ in rows[0][1]]
    print(f"torch {torch.__version__}, {args.threads} thread(s), SAM {args.sam_size}, K = {args.k}")
    print("| T | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for frames, measured in rows:
        print(f"| {frames} | " + " | ".join(f"{mib:.0f} MiB" for _, mib in measured) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
