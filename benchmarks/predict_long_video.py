"""Peak memory and speed of `python -m mpgsam2.predict` on long synthetic videos (is memory flat in length?).

    python benchmarks/predict_long_video.py [--ckpt final.ckpt] [--minutes 1 10] [--modes chunked whole]
        [--sentences 2]

Renders the demo clip (`mpgsam2.media.render_demo_video`, 192 x 192, 24 fps, two objects) at each length, then
runs the CLI on it with the clip's two sentences (or the first, ``--sentences 1``) and every output (PNGs, masks.json, overlay.mp4) in a fresh
process per run, and reports that process's peak RSS (``wait4``) and frames per second (wall clock, model loading
included). ``chunked`` is ``--chunk-size 24`` (MeViS protocol), ``whole`` one run over the video. CKPT defaults to
the newest ``logs/train/runs/*/checkpoints/final.ckpt`` (``python train.py experiment=demo``); the weights do not
change the cost.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mpgsam2.media import render_demo_video
from mpgsam2.predict import latest_demo_checkpoint

FPS = 24


def run_once(
    ckpt: Path, clip: Path, sentences: list[str], out: Path, chunk_size: int | None
) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one CLI run in its own process."""
    cmd = [sys.executable, "-m", "mpgsam2.predict", str(ckpt), str(clip), *sentences, "--out", str(out)]
    cmd += ["--no-progress", "--overwrite"] + (
        [] if chunk_size is None else ["--chunk-size", str(chunk_size)]
    )
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    return usage.ru_maxrss / 1024, wall  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--modes", nargs="+", choices=["chunked", "whole"], default=["chunked"])
    parser.add_argument(
        "--sentences", type=int, default=2, choices=[1, 2], help="sentences segmented per run"
    )
    args = parser.parse_args()
    ckpt = args.ckpt or latest_demo_checkpoint()
    print("| video | frames | mode | peak RSS MiB | wall s | frames/s |")
    print("|---|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            frames = round(minutes * 60 * FPS)
            clip = Path(tmp) / f"clip_{minutes:g}min.mp4"
            sentences = render_demo_video(clip, num_frames=frames, fps=FPS)[: args.sentences]
            for mode in args.modes:
                rss, wall = run_once(
                    ckpt, clip, sentences, Path(tmp) / "out", 24 if mode == "chunked" else None
                )
                print(
                    f"| {minutes:g} min | {frames} | {mode} | {rss:.0f} | {wall:.0f} | {frames / wall:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
