"""Streaming inference memory: does what the tracker holds grow with the number of frames?

Runs a small random MPG-SAM 2 over videos of increasing length with ``MPGSAM2.start_video`` / ``track`` and
reports, per length, the bytes of tensors held in the tracking state after the last frame, the process's peak
RSS growth, and (on CUDA) the peak allocated memory. For contrast it also runs the same videos with pruning
disabled (``TrackingState.keep_all``), which is what the original video predictor does (it keeps every frame's
memory and output).

    python benchmarks/streaming_memory.py [--frames 8 16 32 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.tiny import make_tiny_model, random_clip  # noqa: E402

from mpgsam2.modeling.mpgsam2 import MPGSAM2  # noqa: E402
from mpgsam2.modeling.sam2.memory_bank import TrackingState  # noqa: E402


def state_bytes(state: TrackingState) -> int:
    tensors = [*state.memories.values(), *state.obj_ptrs.values(), state.cond_memory, state.cond_obj_ptr]
    tensors.append(state.maskmem_pos_enc)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def run(model: MPGSAM2, frames: int, device: str, prune: bool) -> dict[str, float]:
    sam, beit, ids, pad = random_clip(model, frames)
    sam, beit, ids, pad = (x.to(device) for x in (sam, beit, ids, pad))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.no_grad():
        session = model.start_video(beit[0], ids[0], pad[0])
        session.state.keep_all = not prune
        for t in range(frames):
            session.track(t, sam[0, t])
    elapsed = time.perf_counter() - start
    out = {
        "state_kib": state_bytes(session.state) / 1024,
        "stored_frames": session.state.num_stored_frames(),
        "ms_per_frame": 1000 * elapsed / frames,
        "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
    }
    if device == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    model = make_tiny_model().eval().to(args.device)
    print(
        f"device={args.device} torch={torch.__version__} num_maskmem={model.sam.memory_settings.num_maskmem} "
        f"max_obj_ptrs={model.sam.pointer_settings.max_obj_ptrs_in_encoder}"
    )
    print(f"{'frames':>6} {'mode':>9} {'state KiB':>10} {'frames held':>11} {'ms/frame':>9}")
    for frames in args.frames:
        for prune in (True, False):
            r = run(model, frames, args.device, prune)
            mode = "streaming" if prune else "keep-all"
            extra = f" cuda_peak={r['cuda_peak_mib']:.1f}MiB" if "cuda_peak_mib" in r else ""
            print(
                f"{frames:>6} {mode:>9} {r['state_kib']:>10.1f} {r['stored_frames']:>11} {r['ms_per_frame']:>9.1f}{extra}"
            )


if __name__ == "__main__":
    main()
