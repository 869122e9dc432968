"""Frames as a player shows them: the orientation a video's display matrix or a photo's EXIF tag asks for, and
8-bit RGB from images of any bit depth.

An :class:`Orientation` is a left-right mirror (or none) followed by a clockwise quarter turn; the eight of them
are exactly the eight EXIF orientations and the axis-aligned display matrices (phones write a rotation only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["EXIF_ORIENTATION_TAG", "IDENTITY", "Orientation", "image_rgb"]

EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class Orientation:
    """Turn a stored frame into the displayed one: mirror left-right when ``mirrored``, then rotate
    ``rotation`` degrees clockwise (0, 90, 180 or 270)."""

    rotation: int = 0
    mirrored: bool = False

    def __post_init__(self) -> None:
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation must be 0, 90, 180 or 270 degrees, got {self.rotation}")

    @property
    def swaps_sides(self) -> bool:
        """Whether the displayed frame is the stored one's height x width."""
        return self.rotation in (90, 270)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The displayed frame of a stored (H, W, ...) array (a view when nothing moves, else a copy)."""
        if self.mirrored:
            rgb = rgb[:, ::-1]
        if self.rotation:
            rgb = np.rot90(rgb, k=-self.rotation // 90)  # numpy turns counter-clockwise for k > 0
        return np.ascontiguousarray(rgb)

    @classmethod
    def from_exif(cls, code: int) -> Orientation:
        """The EXIF / TIFF ``Orientation`` tag (1 to 8; anything else is read as 1, as viewers do)."""
        return _EXIF.get(code, IDENTITY)

    @classmethod
    def from_display_matrix(cls, matrix: Sequence[int]) -> Orientation:
        """FFmpeg's 3 x 3 display matrix (``AV_FRAME_DATA_DISPLAYMATRIX``, 16.16 fixed point, row-major): a stored
        pixel (p, q) is shown at (a p + c q, b p + d q) with a, b, c, d = matrix[0], [1], [3], [4] (x to the right,
        y down), the convention of FFmpeg's display.h. A rotation that is not a quarter turn is rounded to the
        nearest one."""
        a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
        mirrored = a * d - b * c < 0
        if mirrored:  # shown = R . M with M the left-right mirror (p -> -p): R = shown . M
            a, b = -a, -b
        if a == b == 0:
            return IDENTITY
        degrees = math.degrees(math.atan2(b, a))  # where the stored x axis points, clockwise (y is down)
        return cls(round(degrees / 90) % 4 * 90, mirrored)

    def as_json(self) -> dict[str, int | bool]:
        return {"rotation": self.rotation, "mirrored": self.mirrored}


IDENTITY = Orientation()
_EXIF = {
    1: IDENTITY,
    2: Orientation(0, True),
    3: Orientation(180),
    4: Orientation(180, True),  # flipped top-bottom
    5: Orientation(270, True),  # transposed
    6: Orientation(90),
    7: Orientation(90, True),  # transversed
    8: Orientation(270),
}


def image_rgb(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image of any mode; deeper samples are scaled to 8 bits, never clipped.

    16-bit images (``I;16*``) are scaled from 0..65535; 32-bit integer (``I``) and float (``F``) images from
    0..65535 and 0..1 when their values lie there (PNG and TIFF 16-bit data, normalised floats), else from their
    own minimum to maximum. 16-bit RGB is already 8-bit RGB when Pillow opens it; alpha is dropped.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode.startswith("I;16"):
            low, high = 0.0, 65535.0
        else:
            low, high = (0.0, 65535.0 if mode == "I" else 1.0)
            if values.size and (values.min() < low or values.max() > high):
                low, high = float(values.min()), float(values.max())
        gray = np.rint((values - low) * (255.0 / max(high - low, 1e-12)))
        gray = np.clip(gray, 0, 255).astype(np.uint8)  # only rounding can reach past the ends
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))
