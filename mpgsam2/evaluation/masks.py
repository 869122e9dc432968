"""Mask encoding: a video's per-expression probabilities -> the PNG values of its benchmark (spec §1.8, §3), and
the PNG files themselves. From the probabilities at the original frame size:

- :attr:`~MaskFormat.BINARY` (Ref-YouTube-VOS, MeViS v2, RefCOCO): ``sigmoid > 0.5`` -> 255, else 0 (mode ``L``;
  MeViS v2: an expression judged absent is all 0 on every frame, a full set of PNGs all the same);
- :attr:`~MaskFormat.PROBABILITY` (MeViS v1): ``p = sigmoid``, ``p < 0.5`` -> 0, else ``p * 255`` truncated to uint8
  (mode ``L``; any non-zero pixel is foreground for the scorer);
- :attr:`~MaskFormat.PALETTE` (Ref-DAVIS17): the objects' probabilities (zeroed below 0.5) stacked over a constant
  background plane of 0.1, argmax -> palette index (the object id; 0 = background), mode ``P``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mpgsam2.evaluation.benchmarks import MaskFormat

__all__ = [
    "DAVIS_BACKGROUND",
    "PaletteMerger",
    "binary_masks",
    "expression_values",
    "probability_masks",
    "save_png",
    "write_frame_pngs",
]

DAVIS_BACKGROUND = 0.1  # parity: inference_davis.py's constant background plane


def binary_masks(probs: Tensor) -> np.ndarray:
    """Ref-YouTube-VOS PNG values: (T, H, W) probabilities -> uint8 (T, H, W), 255 where ``p > 0.5``, else 0.

    parity: ``inference_ytvos.py`` thresholds the sigmoid (not the logit) with ``> 0.5``.
    """
    return ((probs > 0.5).to(torch.uint8) * 255).cpu().numpy()


def probability_masks(probs: Tensor) -> np.ndarray:
    """MeViS PNG values: (T, H, W) probabilities -> uint8 (T, H, W), 0 where ``p < 0.5``, else ``p * 255``.

    parity: ``inference_mevis.py`` zeroes ``p < 0.5`` and saves ``Image.fromarray(p * 255).convert("L")``, which
    truncates towards zero (0.5 -> 127) and clips to [0, 255].
    """
    p = probs.float().cpu().numpy()
    p = np.where(p < 0.5, np.float32(0.0), p) * np.float32(255.0)
    return np.clip(p, 0, 255).astype(np.uint8)


_PER_EXPRESSION = {MaskFormat.BINARY: binary_masks, MaskFormat.PROBABILITY: probability_masks}


def expression_values(mask_format: MaskFormat, probs: Tensor) -> np.ndarray:
    """One expression's PNG values: (T, H, W) probabilities -> uint8 (T, H, W) in ``mask_format``.

    Raises:
        ValueError: a format without one PNG per expression (palette: :class:`PaletteMerger`).
    """
    if not mask_format.per_expression:
        raise ValueError(f"{mask_format.value!r} PNGs merge a video's objects: use PaletteMerger")
    return _PER_EXPRESSION[mask_format](probs)


class PaletteMerger:
    """Merges the objects of one video into palette indices, as ``inference_davis.py``: the probabilities (zeroed
    below 0.5) are stacked after a constant background plane of 0.1 and the argmax taken.

    Objects are added one at a time (memory: two (T, H, W) arrays, not one per object). A pixel goes to the first
    plane holding its maximum (background first, then objects in the order added), as ``torch.argmax`` does.

    Args:
        shape: (T, H, W).
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.best = torch.full(shape, DAVIS_BACKGROUND, dtype=torch.float32)
        self.labels = torch.zeros(shape, dtype=torch.uint8)
        self.added: list[int] = []

    def add(self, label: int, probs: Tensor) -> None:
        """Adds object ``label`` (1..255) with probabilities (T, H, W)."""
        if not 1 <= label <= 255:
            raise ValueError(f"palette label {label} is outside 1..255")
        if label in self.added:
            raise ValueError(f"palette label {label} was added twice")
        if tuple(probs.shape) != tuple(self.best.shape):
            raise ValueError(
                f"object probabilities {tuple(probs.shape)} != video shape {tuple(self.best.shape)}"
            )
        p = probs.float().cpu()
        p = torch.where(p < 0.5, torch.zeros_like(p), p)
        wins = p > self.best  # strict: ties stay with the earlier plane (argmax returns the first maximum)
        self.best = torch.where(wins, p, self.best)
        self.labels[wins] = label
        self.added.append(label)

    def result(self) -> np.ndarray:
        """uint8 (T, H, W) palette indices (0 = background)."""
        return self.labels.numpy()


def save_png(path: Path, values: np.ndarray, palette: list[int] | None = None) -> None:
    """Writes uint8 (H, W) ``values`` as a PNG: mode ``L``, or ``P`` with the flat RGB ``palette``."""
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), mode="L")
    if palette is not None:
        img.putpalette(palette)  # -> mode "P"
    img.save(path, format="PNG")


def write_frame_pngs(
    folder: Path, frame_names: Sequence[str], values: np.ndarray, palette: list[int] | None = None
) -> None:
    """``<folder>/<frame name>.png`` for each frame of uint8 (T, H, W) ``values`` (see :func:`save_png`)."""
    for name, frame in zip(frame_names, values):
        save_png(folder / f"{name}.png", frame, palette)
