"""Where ``predict_video``'s time goes, by module, at the mid-size preset of ``eval_throughput.py``.

Each listed module's ``forward`` is wrapped with a wall-clock timer (nested modules are counted in their parents
too: ``memory_attention`` includes its ``.cross_attention``); one warm-up call, then one timed call. This is the
profile the engine's design decisions are read from: what is shared across a video's K expressions (the Hiera
image encoder) and what each expression needs for itself (BEiT-3, the memory attention, the decoder, ...).

    python benchmarks/eval_profile.py [--k 16] [--frames 8] [--threads 1] [--sam-size 256]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_throughput import ORIG_SIZE, expressions, mid_model, video  # noqa: E402

from mpgsam2.inference import predict_video  # noqa: E402


def timed_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Label -> the modules whose time counts under it."""
    sam = model.sam
    layers = list(sam.memory_attention.layers)
    return {
        "BEiT-3": [model.beit3],
        "mask prior": [model.mask_prior],
        "Hiera image encoder (shared)": [sam.image_encoder],
        "memory attention": [sam.memory_attention],
        "memory attention: self-attention": [layer.self_attn for layer in layers],
        "memory attention: cross-attention": [layer.cross_attn_image for layer in layers],
        "memory attention: cross-attention key/value projections": [
            m for layer in layers for m in (layer.cross_attn_image.k_proj, layer.cross_attn_image.v_proj)
        ],
        "memory attention: MLP": [m for layer in layers for m in (layer.linear1, layer.linear2)],
        "mask decoder": [sam.sam_mask_decoder],
        "memory encoder": [sam.memory_encoder],
    }


def instrument(groups: dict[str, list[nn.Module]], totals: collections.Counter) -> None:
    for label, modules in groups.items():
        for module in modules:
            forward = module.forward

            def timed(*args, _forward: Callable = forward, _label: str = label, **kwargs):  # noqa: ANN202
                start = time.perf_counter()
                out = _forward(*args, **kwargs)
                totals[_label] += time.perf_counter() - start
                return out

            module.forward = timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sam-size", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = mid_model(args.sam_size)
    sam, beit = video(model, args.frames)
    exprs = expressions(args.k)
    totals: collections.Counter = collections.Counter()
    instrument(timed_modules(model), totals)
    predict_video(model, sam, beit, exprs, ORIG_SIZE)  # warm-up
    totals.clear()
    start = time.perf_counter()
    predict_video(model, sam, beit, exprs, ORIG_SIZE)
    total = time.perf_counter() - start
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), SAM {args.sam_size}, T = {args.frames}, "
        f"K = {args.k}: {total:.2f} s"
    )
    print("| module | s | share |")
    print("|---|---:|---:|")
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {seconds:.2f} | {100 * seconds / total:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
