"""GPU check: the large model (BEiT-3-L + Hiera-L, random weights, real sizes) on one GPU, one table.

Rows: ``predict_video`` in fp32 and bf16 autocast at K = 1 and 4 expressions on a 1024 x 1024, 32-frame video
(seconds, video frames/s, expression-frames/s, peak GPU memory, and the largest probability difference of bf16
from fp32 at the same K; ``--compile`` adds bf16 with ``compile=True``, its compile time not counted), then a few
bf16-mixed training steps (AdamW, the training criterion) on a 5-frame clip with their median step time and peak
memory: once as configured by default and once with activation checkpointing of the blocks of
``--checkpoint-blocks`` (a fresh model built with ``MPGSAM2Config.activation_checkpointing``; the row reads "n/a"
where this version's config has no such field). Sized to finish within 8 minutes on an H100 (``gpu_check.sh``
enforces it; a section that would start after ``--budget-s`` prints a "skipped" row instead, so the table always
comes out). ``--smoke`` runs the same code on the test model (``conf/model/{beit3,sam2}/test.yaml``) on the CPU,
with 4 frames, a 2-frame training clip and one timed training step (checks the script, measures nothing).

    bash benchmarks/gpu_check.sh            # on the GPU machine
    python benchmarks/gpu_check.py --smoke  # anywhere
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mpgsam2.inference import predict_video  # noqa: E402
from mpgsam2.losses import MPGSAM2Criterion  # noqa: E402
from mpgsam2.modeling.config import MPGSAM2Config  # noqa: E402
from mpgsam2.modeling.mpgsam2 import MPGSAM2  # noqa: E402

# the model's blocks that activation checkpointing can recompute (MPGSAM2Config.activation_checkpointing)
CHECKPOINT_BLOCKS = ("beit3", "mask_prior", "memory_attention", "decoder_fusion")
HEADER = ["what", "setting", "seconds", "frames/s", "expr-frames/s", "peak GiB", "max dp vs fp32"]
NOT_AVAILABLE = "n/a: activation checkpointing not available"


def activation_checkpointing_available() -> bool:
    """Whether this version's model config has the ``activation_checkpointing`` field (block names; empty: off)."""
    return "activation_checkpointing" in {f.name for f in dataclasses.fields(MPGSAM2Config)}


def build(smoke: bool, device: torch.device, activation_checkpointing: tuple[str, ...] = ()) -> MPGSAM2:
    """The model on ``device``, built there (initialising 0.9 B parameters on the CPU would take minutes)."""
    torch.manual_seed(0)
    options = {"activation_checkpointing": list(activation_checkpointing)} if activation_checkpointing else {}
    with torch.device(device):
        if smoke:
            from helpers.tiny import make_tiny_model

            model = make_tiny_model(**options)
        else:
            model = MPGSAM2(MPGSAM2Config.from_presets("large", "sam2_hiera_l.yaml", **options))
    return model.to(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


class DeviceFrames:
    """T random frames made on demand on the device (a reader that decodes lazily)."""

    def __init__(self, num_frames: int, size: int, device: torch.device, seed: int) -> None:
        self.num_frames, self.size, self.device, self.seed = num_frames, size, device, seed

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, t: int) -> torch.Tensor:
        if not 0 <= t < self.num_frames:
            raise IndexError(t)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1000 + t)
        return torch.randn(3, self.size, self.size, generator=g, device=self.device)


def expressions(k: int, device: torch.device, vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(k)
    out = []
    for i in range(k):
        n = 10 + 3 * i  # different lengths
        ids = torch.randint(4, vocab - 1, (n,), generator=g)
        ids[0], ids[-1] = 0, 2
        out.append((ids.to(device), torch.zeros(n, dtype=torch.bool, device=device)))
    return out


def inference_rows(model: MPGSAM2, args: argparse.Namespace, device: torch.device) -> list[list[str]]:
    model.eval()
    s, hb = model.input_sizes["sam_size"], model.input_sizes["beit_size"]
    vocab = int(model.config.beit3["vocab_size"])
    sam, beit = DeviceFrames(args.frames, s, device, 0), DeviceFrames(args.frames, hb, device, 1)
    rows = []
    for k in args.ks:
        exprs = expressions(k, device, vocab)
        fp32_probs = None
        variants = [("fp32", False), ("bf16", False)] + ([("bf16", True)] if args.compile else [])
        for precision, compiled in variants:
            what = f"predict_video {precision}{' compiled' if compiled else ''}"
            if time.perf_counter() > args.deadline:
                rows.append(skipped(what, f"K={k}, T={args.frames}, {s}px", args.over_budget))
                continue
            warm_sam, warm_beit = DeviceFrames(2, s, device, 5), DeviceFrames(2, hb, device, 6)
            options = {"precision": precision, "compile": compiled}
            predict_video(model, warm_sam, warm_beit, exprs, (s, s), **options)
            reset_peak(device)
            run = functools.partial(predict_video, model, sam, beit, exprs, (s, s), **options)
            seconds, out = timed(run, device)
            probs = torch.stack([p.probs for p in out])
            diff = "-" if fp32_probs is None else f"{(probs - fp32_probs).abs().max().item():.1e}"
            if fp32_probs is None:
                fp32_probs = probs
            rows.append(
                [
                    what,
                    f"K={k}, T={args.frames}, {s}px",
                    f"{seconds:.2f}",
                    f"{args.frames / seconds:.2f}",
                    f"{args.frames * k / seconds:.2f}",
                    f"{peak_gib(device):.2f}",
                    diff,
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
        del fp32_probs
    return rows


def training_row(
    model: MPGSAM2, args: argparse.Namespace, device: torch.device, what: str = "train step bf16-mixed"
) -> list[str]:
    model.train()
    s, hb = model.input_sizes["sam_size"], model.input_sizes["beit_size"]
    vocab = int(model.config.beit3["vocab_size"])
    g = torch.Generator(device=device).manual_seed(0)
    b, t, length = 1, args.train_frames, 20
    sam = torch.randn(b, t, 3, s, s, generator=g, device=device)
    beit = torch.randn(b, t, 3, hb, hb, generator=g, device=device)
    ids = torch.randint(4, vocab - 1, (b, length), device=device, generator=g)
    pad = torch.zeros(b, length, dtype=torch.bool, device=device)
    target = (torch.rand(b, t, s, s, generator=g, device=device) > 0.7).float()
    valid = torch.ones(b, t, dtype=torch.bool, device=device)
    criterion = MPGSAM2Criterion()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(sam, beit, ids, pad)
            loss = criterion(out.pred_masks, out.sentence_scores, target, valid)["loss_total"]
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()  # warm-up (allocator, kernels, optimizer state)
    reset_peak(device)
    times = [timed(step, device)[0] for _ in range(args.train_steps)]
    row = [
        what,
        f"B={b}, T={t}, {s}px, AdamW",
        f"{statistics.median(times):.2f}",
        "-",
        "-",
        f"{peak_gib(device):.2f}",
        "-",
    ]
    model.zero_grad(set_to_none=True)  # the gradients and the optimizer state go with this function
    print(" | ".join(row), flush=True)
    return row


def skipped(what: str, setting: str, reason: str) -> list[str]:
    row = [what, setting, reason, "-", "-", "-", "-"]
    print(" | ".join(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="the test model on the CPU")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--train-frames", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="add bf16 rows with compile=True (slow start)")
    parser.add_argument(
        "--checkpoint-blocks",
        nargs="+",
        choices=CHECKPOINT_BLOCKS,
        default=list(CHECKPOINT_BLOCKS),
        help="blocks recomputed in the activation-checkpointing training row",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="a section that would start later than this (seconds from the start) is skipped",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        # the same code paths at the smallest sizes that still run them (a test runs this on 2 cores)
        args.frames, args.train_frames = min(args.frames, 4), min(args.train_frames, 2)
        args.train_steps = 1
        torch.set_num_threads(2)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --smoke to check the script on the CPU)")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"
    print(f"# {name}, torch {torch.__version__}, {'test' if args.smoke else 'large'} model, random weights")

    args.deadline = start + args.budget_s
    args.over_budget = over = f"skipped: past --budget-s {args.budget_s:.0f}"

    def over_budget() -> bool:
        return time.perf_counter() > args.deadline

    blocks = tuple(args.checkpoint_blocks)
    checkpointed = f"train step bf16-mixed, activation checkpointing {'+'.join(blocks)}"
    train_setting = f"B=1, T={args.train_frames}, AdamW"
    model = build(args.smoke, device)
    rows = inference_rows(model, args, device)
    rows.append(
        skipped("train step bf16-mixed", train_setting, over)
        if over_budget()
        else training_row(model, args, device)
    )
    del model
    free(device)
    if not activation_checkpointing_available():
        rows.append(skipped(checkpointed, train_setting, NOT_AVAILABLE))
    elif over_budget():
        rows.append(skipped(checkpointed, train_setting, over))
    else:
        rows.append(training_row(build(args.smoke, device, blocks), args, device, checkpointed))
        free(device)
    print()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
