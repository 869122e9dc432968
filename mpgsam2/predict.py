"""Segment the objects that sentences refer to in your own video, folder of frames or image.

    python -m mpgsam2.predict CKPT INPUT "the man in red" "the dog on the left" --out OUT_DIR
        [--sentences FILE] [--stride N] [--start 2.5s] [--end 300] [--max-frames N] [--long-side PX]
        [--chunk-size 24] [--format png json overlay] [--device cuda] [--precision bf16] [--compile]
        [--tokenizer beit3.spm] [--overwrite]
    python -m mpgsam2.predict --demo-video clip.mp4 --out demo_output     # after python train.py experiment=demo

CKPT is a ``train.py`` checkpoint (``final.ckpt``), our export folder or a released MPG-SAM 2 folder. INPUT is a
video file (.mp4 .mov .webm .mkv .avi .gif, decoded as a stream with PyAV), a folder of frames (.jpg .jpeg .png
.bmp .webp .tif .tiff, name order), one image or a multi-page TIFF; frames are read as a player shows them
(display-matrix and EXIF rotation applied, presentation times). OUT_DIR gets, per sentence, a folder of 0/255
mask PNGs named after the frames, ``masks.json`` (COCO RLE, frame index / time and score per sentence and frame)
and ``overlay.mp4``; it appears complete or not at all. The whole video is one run from its first frame (spec §3.1) unless ``--chunk-size`` cuts
it into independent chunks (spec §3.2), which keeps memory flat however long the video is.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mpgsam2.inference.predictor import PRECISIONS
from mpgsam2.media.outputs import FORMATS
from mpgsam2.media.reader import FrameReader, FrameSelection, MediaError, open_frames, parse_position
from mpgsam2.media.segment import Progress as ProgressCallback
from mpgsam2.media.segment import segment_to_folder
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.text.tokenizer import Beit3Tokenizer
from mpgsam2.weights import load_model

__all__ = ["latest_demo_checkpoint", "load_model_for_inference", "main", "read_sentences"]

logger = logging.getLogger(__name__)


def load_model_for_inference(
    path: str | Path, hf_gamma_compat: bool = False, compile: bool = False
) -> tuple[MPGSAM2, Path | None]:
    """Deprecated alias (kept for one release) of ``mpgsam2.load_model``: its model and tokenizer path."""
    loaded = load_model(path, hf_gamma_compat=hf_gamma_compat, compile=compile)
    return loaded.model, loaded.tokenizer_path


def read_sentences(path: Path) -> list[str]:
    """One sentence per non-empty line of a UTF-8 text file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the sentences file: {err}") from err
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise ValueError(f"{path}: no sentences (one per line)")
    return sentences


def latest_demo_checkpoint(root: Path = Path("logs/train/runs")) -> Path:
    """The newest ``final.ckpt`` under ``root`` (where ``python train.py experiment=demo`` writes it)."""
    found = sorted(root.glob("*/checkpoints/final.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"{root}: no */checkpoints/final.ckpt; run `python train.py experiment=demo` first or pass CKPT"
        )
    return found[-1]


@contextmanager
def _progress_bar(reader: FrameReader, enabled: bool) -> Iterator[ProgressCallback | None]:
    """Two bars (frames decoded, frames segmented) on stderr; their total is the input's declared frame count
    divided by the stride when the container has one."""
    if not enabled:
        yield None
        return
    total = None if reader.count is None else -(-reader.count // reader.selection.stride)
    if total is not None and reader.selection.max_frames is not None:
        total = min(total, reader.selection.max_frames)
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        tasks = {stage: bar.add_task(stage, total=total) for stage in ("decoded", "segmented")}
        yield lambda stage, n: bar.advance(tasks[stage], n)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mpgsam2.predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ckpt", nargs="?", help="train.py checkpoint, our export folder or a released folder")
    parser.add_argument("input", nargs="?", type=Path, help="video file, folder of frames or image")
    parser.add_argument("sentences", nargs="*", help="referring expressions, one per object")
    parser.add_argument("--out", type=Path, help="output folder (default with --demo-video: demo_output)")
    parser.add_argument(
        "--sentences", dest="sentences_file", type=Path, help="a file of sentences, one a line"
    )
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    parser.add_argument("--start", type=parse_position, help="first frame: index (120) or seconds (5s)")
    parser.add_argument("--end", type=parse_position, help="end, excluded: index (480) or seconds (20s)")
    parser.add_argument("--max-frames", type=int, help="at most this many frames")
    parser.add_argument("--long-side", type=int, help="shrink frames whose long side is larger (pixels)")
    parser.add_argument("--fps", type=Fraction, help="frame rate of a folder or image (default 24)")
    parser.add_argument("--chunk-size", type=int, default=None, help="frames per independent chunk")
    parser.add_argument(
        "--format", nargs="+", choices=FORMATS, default=list(FORMATS), help="outputs to write (default: all)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="fp32",
        help="fp32 (default), or bf16 / fp16 autocast on a GPU (masks may differ where a probability is near 0.5)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image encoder and memory attention (GPU runs)",
    )
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece model (default: the checkpoint's own)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--demo-video",
        type=Path,
        help="render the synthetic demo clip to this .mp4 and segment its objects (CKPT defaults to the newest "
        "logs/train/runs/*/checkpoints/final.ckpt)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    sentences = list(args.sentences)
    if args.demo_video is not None:
        from mpgsam2.media.demo import render_demo_video

        if args.input is not None:
            parser.error("--demo-video renders the input: give no INPUT")
        ckpt = Path(args.ckpt) if args.ckpt else latest_demo_checkpoint()
        args.demo_video.parent.mkdir(parents=True, exist_ok=True)
        demo_sentences = render_demo_video(args.demo_video)
        print(f"rendered {args.demo_video}; sentences: {'; '.join(demo_sentences)}", file=sys.stderr)
        source, sentences = args.demo_video, sentences or demo_sentences
        out = args.out or Path("demo_output")
    else:
        if args.ckpt is None or args.input is None:
            parser.error("give CKPT and INPUT (or --demo-video)")
        ckpt, source, out = Path(args.ckpt), args.input, args.out
        if out is None:
            parser.error("give the output folder with --out")
    if args.sentences_file is not None:
        sentences += read_sentences(args.sentences_file)
    if not sentences:
        parser.error("give one or more sentences (arguments or --sentences FILE)")

    selection = FrameSelection(args.stride, args.start, args.end, args.max_frames, args.long_side)
    reader = open_frames(source, selection, fps=args.fps)  # before loading the model: bad input fails fast
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    loaded = load_model(ckpt, compile=args.compile)
    model, tokenizer_path = loaded.model, args.tokenizer or loaded.tokenizer_path
    if tokenizer_path is None:
        parser.error(f"{ckpt} names no tokenizer: pass --tokenizer <beit3.spm>")
    with _progress_bar(reader, not args.no_progress) as progress:
        segment_to_folder(
            model,
            Beit3Tokenizer(tokenizer_path),
            reader,
            sentences,
            out,
            formats=args.format,
            chunk_size=args.chunk_size,
            device=args.device,
            overwrite=args.overwrite,
            progress=progress,
            precision=args.precision,
        )
    print(out)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (MediaError, FileExistsError, FileNotFoundError) as err:
        # the message names the file; a traceback would bury it
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
