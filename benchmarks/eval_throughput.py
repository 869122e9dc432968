"""Evaluation throughput: ``predict_video`` (K expressions as one batch) against ``predict_expression`` x K.

A mid-size random model (BEiT-3 width 384 x 6 layers, a Hiera-T trunk, full-size SAM 2 heads, SAM input 256 by
default) on random videos of T frames with K expressions of different lengths (8 to 20 tokens). For every (T, K)
the masks of the two paths are compared first (probabilities within 1e-4; masks equal except where the reference
probability is within 1e-4 of 0.5), then both are timed in one process, interleaved, and the median ratio of the
repeats is reported, of wall time and of the process's CPU time (steadier on a machine shared with other jobs). Peak memory of ``predict_video`` is measured in a fresh subprocess per (T, K): the peak RSS
growth over the call (frames supplied lazily, logits kept at 256 x 256), sampled every 2 ms.

    python benchmarks/eval_throughput.py [--frames 8 32] [--ks 1 4 16] [--repeats 3] [--repeats-long 1]
        [--skip 32:16] [--memory 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpgsam2.build import model_config  # noqa: E402
from mpgsam2.inference import predict_expression, predict_video  # noqa: E402
from mpgsam2.modeling.mpgsam2 import MPGSAM2  # noqa: E402

BEIT_SIZE = 224
ORIG_SIZE = (256, 256)


def mid_model(sam_size: int, seed: int = 0) -> MPGSAM2:
    """BEiT-3 width 384 x 6 layers, Hiera-T trunk, full-size SAM 2 heads, random weights."""
    torch.manual_seed(seed)
    cfg = model_config(
        {
            "preset": "base",
            "embed_dim": 384,
            "num_heads": 6,
            "ffn_dim": 1536,
            "num_layers": 6,
            "img_size": BEIT_SIZE,
        },
        {"size": "t", "version": "2.0", "settings": {"image_size": sam_size}},
    )
    model = MPGSAM2(cfg).eval()
    # with random weights the object-score head may call every frame empty (all logits -1024), and equal empty
    # masks would compare nothing: bias it to "present" so the masks come from the decoder
    head = model.sam.sam_mask_decoder.pred_obj_score_head
    with torch.no_grad():
        (head.layers[-1] if hasattr(head, "layers") else head).bias.fill_(20.0)
    return model


class RandomFrames(Sequence):
    """T random frames made on demand (a reader that decodes lazily); frame t is the same every time."""

    def __init__(self, num_frames: int, size: int, seed: int) -> None:
        self.num_frames, self.size, self.seed = num_frames, size, seed

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, t: int) -> torch.Tensor:
        if not 0 <= t < self.num_frames:
            raise IndexError(t)
        g = torch.Generator().manual_seed(self.seed * 100_003 + t)
        return torch.randn(3, self.size, self.size, generator=g)

    def tensor(self) -> torch.Tensor:
        return torch.stack([self[t] for t in range(self.num_frames)])


def expressions(k: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        n = int(torch.randint(8, 21, (1,), generator=g))
        ids = torch.randint(4, 60000, (n,), generator=g)
        ids[0], ids[-1] = 0, 2
        out.append((ids, torch.zeros(n, dtype=torch.bool)))
    return out


def video(model: MPGSAM2, frames: int, seed: int = 0) -> tuple[RandomFrames, RandomFrames]:
    return RandomFrames(frames, model.sam.image_size, seed), RandomFrames(frames, BEIT_SIZE, seed + 1)


def reference(model, sam, beit, exprs):
    sam_t, beit_t = sam.tensor(), beit.tensor()  # the reference path takes whole-video tensors
    return [predict_expression(model, sam_t, beit_t, ids, pad, ORIG_SIZE) for ids, pad in exprs]


def compare(engine, ref) -> tuple[float, int, float]:
    """Largest probability difference, the number of mask pixels that differ away from p = 0.5 +- 1e-4, and
    the reference's foreground fraction (so an all-empty comparison shows)."""
    worst, flips = 0.0, 0
    for a, b in zip(engine, ref):
        worst = max(worst, (a.probs - b.probs).abs().max().item())
        decided = (b.probs - 0.5).abs() > 1e-4
        flips += int(((a.masks != b.masks) & decided).sum())
    foreground = torch.cat([b.masks.flatten() for b in ref]).float().mean().item()
    return worst, flips, foreground


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_rss_growth(fn) -> int:
    """Peak RSS above the level before ``fn()``, sampled every 2 ms by a thread."""
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], rss_bytes()) - base


def memory_child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = mid_model(args.sam_size)
    sam, beit = video(model, args.memory_frames)
    exprs = expressions(args.memory_k)
    with torch.no_grad():  # warm up kernels and allocator at a small size (a fresh 2-frame video)
        small_sam, small_beit = video(model, 2, seed=9)
        predict_video(model, small_sam, small_beit, exprs, ORIG_SIZE)
    growth = peak_rss_growth(lambda: predict_video(model, sam, beit, exprs, ORIG_SIZE))
    print(json.dumps({"frames": args.memory_frames, "k": args.memory_k, "peak_rss_growth": growth}))


def measure_memory(args: argparse.Namespace, frames: int, k: int) -> int:
    cmd = [sys.executable, __file__, "--memory-frames", str(frames), "--memory-k", str(k)]
    cmd += ["--threads", str(args.threads), "--sam-size", str(args.sam_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_growth"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeats-long", type=int, default=1, help="repeats for T > 8 (slow on 2 CPU cores)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sam-size", type=int, default=256)
    parser.add_argument(
        "--memory", type=int, nargs="*", default=[4], help="K values to measure peak memory at"
    )
    parser.add_argument("--skip", nargs="*", default=[], help="T:K pairs not to time (e.g. 32:16)")
    parser.add_argument("--memory-frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_frames is not None:
        memory_child(args)
        return 0

    torch.set_num_threads(args.threads)
    model = mid_model(args.sam_size)
    print(
        f"torch {torch.__version__}, {args.threads} threads, SAM {args.sam_size}, "
        f"repeats {args.repeats} (T <= 8) / {args.repeats_long} (T > 8)"
    )
    print(
        "| T | K | ref s/video | engine s/video | ref frames/s | engine frames/s | speed-up wall (median) | speed-up CPU time (median) | max dp | flips | fg |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = False
    for frames in args.frames:
        for k in args.ks:
            if f"{frames}:{k}" in args.skip:
                continue
            sam, beit = video(model, frames, seed=frames)
            exprs = expressions(k, seed=k)
            engine_out = predict_video(model, sam, beit, exprs, ORIG_SIZE)
            worst, flips, foreground = compare(engine_out, reference(model, sam, beit, exprs))
            failed |= worst > 1e-4 or flips > 0
            ref_times, eng_times, ref_cpu, eng_cpu = [], [], [], []
            for _ in range(args.repeats if frames <= 8 else args.repeats_long):  # interleaved
                for fn, wall, cpu in (
                    (functools.partial(reference, model, sam, beit, exprs), ref_times, ref_cpu),
                    (
                        functools.partial(predict_video, model, sam, beit, exprs, ORIG_SIZE),
                        eng_times,
                        eng_cpu,
                    ),
                ):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    fn()
                    wall.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
            ratio = statistics.median(r / e for r, e in zip(ref_times, eng_times))
            cpu_ratio = statistics.median(r / e for r, e in zip(ref_cpu, eng_cpu))
            ref_s, eng_s = statistics.median(ref_times), statistics.median(eng_times)
            print(
                f"| {frames} | {k} | {ref_s:.2f} | {eng_s:.2f} | {frames * k / ref_s:.2f} | "
                f"{frames * k / eng_s:.2f} | {ratio:.2f}x | {cpu_ratio:.2f}x | {worst:.1e} | {flips} | "
                f"{foreground:.2f} |",
                flush=True,
            )
    if args.memory:
        print("\n| K | peak RSS growth T=8 (MB) | T=32 (MB) | ratio |")
        print("|---:|---:|---:|---:|")
        for k in args.memory:
            small, large = measure_memory(args, 8, k), measure_memory(args, 32, k)
            print(
                f"| {k} | {small / 2**20:.1f} | {large / 2**20:.1f} | {large / max(small, 1):.2f} |",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
