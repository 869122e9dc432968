"""Segment the object a sentence refers to in your own video (a folder of frames).

    python -m mpgsam2.predict CKPT FRAMES_DIR "the dog jumping over the fence" OUT_DIR
        [--tokenizer beit3.spm] [--chunk-size 24] [--device cuda] [--overwrite]

CKPT is a ``train.py`` checkpoint (``final.ckpt``), our export folder or a released MPG-SAM 2 folder. Frames are
the folder's ``.jpg``/``.jpeg``/``.png`` files in name order; the masks are written as ``OUT_DIR/<frame>.png``
(0 / 255, the frame's size). The whole video is tracked from its first frame (spec §3.1) unless ``--chunk-size``
cuts it into independent chunks (spec §3.2). The folder appears complete or not at all.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mpgsam2.data.sources import read_rgb_frames
from mpgsam2.data.transforms import ClipTransform
from mpgsam2.inference.predictor import predict_expression
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.text.tokenizer import Beit3Tokenizer
from mpgsam2.weights import load_model

__all__ = ["load_model_for_inference", "main", "segment_video"]

logger = logging.getLogger(__name__)

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_model_for_inference(path: str | Path, hf_gamma_compat: bool = False) -> tuple[MPGSAM2, Path | None]:
    """The model in ``path`` and the tokenizer file it names or ships (see :func:`mpgsam2.weights.load_model`)."""
    loaded = load_model(path, hf_gamma_compat=hf_gamma_compat)
    return loaded.model, loaded.tokenizer_path


@torch.inference_mode()
def segment_video(
    model: MPGSAM2,
    tokenizer: Beit3Tokenizer,
    frames: np.ndarray,
    sentence: str,
    chunk_size: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Masks of the referred object.

    Args:
        frames: uint8 (T, H, W, 3) RGB. sentence: the expression (used as given, as the original's inference).

    Returns:
        bool (T, H, W).
    """
    transform = ClipTransform(model.sam.image_size, int(model.config.beit3["img_size"]), train=False)
    sam_frames, beit_frames, _, _ = transform(frames, None, sentence)
    ids, _ = tokenizer([sentence])
    pad = ids == tokenizer.pad_id  # parity: the collate's padding mask (unknown pieces count as padding)
    model = model.to(device).eval()
    prediction = predict_expression(
        model,
        sam_frames.to(device),
        beit_frames.to(device),
        ids[0].to(device),
        pad[0].to(device),
        tuple(frames.shape[1:3]),
        chunk_size=chunk_size,
    )
    return prediction.masks.numpy()


def _frame_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: frames folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no frames ({', '.join(FRAME_SUFFIXES)} files) found")
    return files


def _write_masks(out_dir: Path, names: list[str], masks: np.ndarray, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, mask in zip(names, masks):
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(staging / f"{name}.png")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpgsam2.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="train.py checkpoint, our export folder or a released MPG-SAM 2 folder")
    parser.add_argument("frames", type=Path, help="folder of frames (.jpg/.jpeg/.png, name order)")
    parser.add_argument("sentence", help="the referring expression")
    parser.add_argument("out", type=Path, help="output folder for the masks")
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece model (default: the checkpoint's own)")
    parser.add_argument("--chunk-size", type=int, default=None, help="frames per independent chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model, own_tokenizer = load_model_for_inference(args.ckpt)
    tokenizer_path = args.tokenizer or own_tokenizer
    if tokenizer_path is None:
        parser.error(f"{args.ckpt} names no tokenizer: pass --tokenizer <beit3.spm>")
    files = _frame_files(args.frames)
    masks = segment_video(
        model,
        Beit3Tokenizer(tokenizer_path),
        read_rgb_frames(files),
        args.sentence,
        args.chunk_size,
        args.device,
    )
    _write_masks(args.out, [p.stem for p in files], masks, args.overwrite)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
