"""What ``mpgsam2.predict`` writes: mask PNGs, ``masks.json`` and ``overlay.mp4``, all in one folder that appears
complete or not at all.

Everything is written while the frames come (nothing is held per frame): PNGs one by one, ``masks.json`` as a
stream of per-frame entries, the overlay video frame by frame. The folder is built beside ``<out>`` under a name of
its own (``.<out>.<random>.partial``) and renamed into place at the end; an error removes it, so a failed run
leaves no output behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mpgsam2.media.display import Orientation
from mpgsam2.media.reader import Frame
from mpgsam2.media.video import VideoWriter

__all__ = [
    "FORMATS",
    "PALETTE",
    "PredictionWriter",
    "draw_overlay",
    "sentence_folder",
    "staged_folder",
]

FORMATS = ("png", "json", "overlay")
# Distinct, saturated colours (RGB), one per sentence (cycled beyond eight).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 160, 255),
    (255, 210, 0),
    (60, 220, 100),
    (220, 80, 255),
    (255, 140, 0),
    (0, 220, 220),
    (255, 105, 180),
)
_MIN_OVERLAY_SIDE = 360  # smaller frames are enlarged (nearest) so that the legend stays readable


@contextlib.contextmanager
def staged_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh staging folder that becomes ``out_dir`` when the block ends without an error (and is removed when
    it does not). The staging and set-aside folders get names of their own (``.<out>.<random>.partial``), so a
    folder this call did not create is never touched."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # swap: the old folder moves aside first, so a crash in between leaves one complete folder
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        out_dir.replace(old / out_dir.name)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sentence_folder(k: int, sentence: str) -> str:
    """``"00_the_red_square"``: the index keeps equal sentences apart, the words say which is which."""
    slug = re.sub(r"[^a-z0-9]+", "_", sentence.lower()).strip("_")[:48].rstrip("_")
    return f"{k:02d}_{slug or 'sentence'}"


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, kernel) > 0) & ~(cv2.erode(m, kernel) > 0)


def draw_overlay(rgb: np.ndarray, masks: Sequence[np.ndarray], sentences: Sequence[str]) -> np.ndarray:
    """The frame with each sentence's mask tinted in its colour, outlined, and a legend of the sentences.

    Frames whose long side is under 360 pixels are enlarged by an integer factor first (nearest neighbour).

    Args:
        rgb: uint8 (H, W, 3). masks: one bool (H, W) per sentence. sentences: the legend's lines.

    Returns:
        uint8 (H * f, W * f, 3).
    """
    factor = max(1, math.ceil(_MIN_OVERLAY_SIDE / max(rgb.shape[:2])))
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, 0), factor, 1)
        masks = [np.repeat(np.repeat(m, factor, 0), factor, 1) for m in masks]
    out = rgb.astype(np.float32)
    h, w = rgb.shape[:2]
    thickness = max(1, round(max(h, w) / 300))
    for k, mask in enumerate(masks):
        colour = np.array(PALETTE[k % len(PALETTE)], np.float32)
        out[mask] = 0.55 * out[mask] + 0.45 * colour
        out[_contour(mask, thickness)] = colour
    out = np.clip(out, 0, 255).astype(np.uint8)
    # the legend: a dark box at the top left, one swatch and sentence per line
    scale = max(0.4, min(w, h) / 800)
    line = round(28 * scale) + 4
    texts = [s.encode("ascii", "replace").decode() for s in sentences]  # cv2 draws ASCII only
    widths = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for t in texts]
    box_w = min(w, max(widths, default=0) + line + 12)
    box_h = min(h, line * len(texts) + 6)
    out[:box_h, :box_w] = (out[:box_h, :box_w] * 0.35).astype(np.uint8)
    for k, text in enumerate(texts):
        y = 3 + k * line
        colour = PALETTE[k % len(PALETTE)]
        cv2.rectangle(out, (4, y + 3), (line - 2, y + line - 3), colour, thickness=-1)
        cv2.putText(
            out,
            text,
            (line + 4, y + line - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out


class PredictionWriter:
    """Writes the chosen outputs of one run into ``folder`` as the frames come; use as a context manager.

    Layout: ``<folder>/<NN_sentence>/<frame name>.png`` (0 / 255, mode L, the frame's size), ``masks.json``
    (``{"input", "fps", "width", "height", "rotation", "mirrored", "sample_aspect_ratio", "sentences": [{"id",
    "text", "folder"}], "frames": [{"index", "time", "name", "masks": [{"sentence", "score", "rle": {"size",
    "counts"}}]}]}``, COCO RLE of pycocotools, one mask per sentence in sentence order) and ``overlay.mp4``.

    Frames come as displayed (:class:`~mpgsam2.media.reader.Frame`): width, height and masks are those of the
    displayed frame; ``rotation`` / ``mirrored`` say how the stored frames were turned to get it (the first
    frame's; a frame turned otherwise, as photos of a folder may be, carries its own two keys) and
    ``sample_aspect_ratio`` ([num, den]) how wide a player shows a pixel. ``overlay.mp4`` shows each frame at its
    time (a variable frame rate stays variable; ``fps`` is the nominal rate) with that pixel aspect ratio.
    """

    def __init__(
        self,
        folder: Path,
        sentences: Sequence[str],
        formats: Sequence[str],
        fps: Fraction,
        source: str,
    ) -> None:
        unknown = set(formats) - set(FORMATS)
        if unknown or not formats:
            raise ValueError(f"formats must be among {FORMATS}, got {list(formats)}")
        self.folder = folder
        self.sentences = list(sentences)
        self.formats = set(formats)
        self.fps = fps
        self.source = source
        self.folders = [sentence_folder(k, s) for k, s in enumerate(self.sentences)]
        self._json: IO[str] | None = None
        self._video: VideoWriter | None = None  # opened at the first frame, whose pixel aspect ratio it takes
        self._size: tuple[int, int] | None = None
        self._orientation: Orientation | None = None
        self.frames = 0

    def __enter__(self) -> PredictionWriter:
        if "png" in self.formats:
            for name in self.folders:
                (self.folder / name).mkdir()
        if "json" in self.formats:
            self._json = open(self.folder / "masks.json", "w", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
        return self

    def add(self, frame: Frame, masks: Sequence[np.ndarray], scores: Sequence[float]) -> None:
        """One frame's masks (bool (H, W), one per sentence) and scores."""
        h, w = frame.rgb.shape[:2]
        if self._size is None:
            self._size = (h, w)
            self._orientation = frame.orientation
            sar = frame.sample_aspect_ratio
            if "overlay" in self.formats:
                self._video = VideoWriter(self.folder / "overlay.mp4", self.fps, sample_aspect_ratio=sar)
                self._video.__enter__()
            if self._json is not None:
                header = {"input": self.source, "fps": float(self.fps), "width": w, "height": h}
                header |= frame.orientation.as_json()
                header["sample_aspect_ratio"] = [sar.numerator, sar.denominator]
                header["sentences"] = [
                    {"id": k, "text": s, "folder": f}
                    for k, (s, f) in enumerate(zip(self.sentences, self.folders))
                ]
                self._json.write(json.dumps(header)[:-1] + ', "frames": [\n')
        if "png" in self.formats:
            for name, mask in zip(self.folders, masks):
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
                    self.folder / name / f"{frame.name}.png"
                )
        if self._json is not None:
            entries = []
            for k, (mask, score) in enumerate(zip(masks, scores)):
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle = {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}
                entries.append({"sentence": k, "score": round(float(score), 6), "rle": rle})
            entry = {"index": frame.index, "time": round(frame.time, 6), "name": frame.name}
            if frame.orientation != self._orientation:
                entry |= frame.orientation.as_json()
            entry["masks"] = entries
            self._json.write(("" if self.frames == 0 else ",\n") + json.dumps(entry))
        if self._video is not None:
            self._video.write(draw_overlay(frame.rgb, masks, self.sentences), frame.time)
        self.frames += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._json is not None:
                if exc_type is None:
                    self._json.write("\n]}\n")
                self._json.close()
        finally:
            if self._video is not None:
                self._video.__exit__(exc_type, exc, tb)
