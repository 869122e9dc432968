"""A synthetic clip in the embedded dataset's style, rendered straight to a video file (nothing downloaded).

Flat-coloured shapes of the synthetic dataset (:mod:`mpgsam2.data.synthetic`) drift over a dark gradient, each in
its own vertical band of the frame (so they never cover each other), bouncing off the band's borders so that they
stay in view however long the clip is; each is named by the dataset's short
caption ("the red square"), which the demo model has learnt. Frames are drawn one at a time, so a 10-minute clip
costs no more memory than a 1-second one (the long-video benchmark uses this).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from mpgsam2.data.synthetic import COLOURS, SHAPES, SIZES, _shape_mask
from mpgsam2.media.video import VideoWriter

__all__ = ["render_demo_video"]

_NOISE_STD = 6.0  # the dataset's background noise


def render_demo_video(
    path: str | Path,
    num_frames: int = 48,
    fps: int = 24,
    size: int = 192,
    num_objects: int = 2,
    seed: int = 0,
) -> list[str]:
    """Render the clip to ``path`` (an ``.mp4``) and return one sentence per object, front object last.

    Args:
        num_frames: frames of the clip. fps: its frame rate. size: frame side in pixels.
        num_objects: shapes in the clip (distinct colours and shapes, at most 3). seed: the content.
    """
    if not 1 <= num_objects <= len(SHAPES):
        raise ValueError(f"num_objects must be in [1, {len(SHAPES)}], got {num_objects}")
    rng = np.random.default_rng(seed)
    colours = [str(c) for c in rng.choice(list(COLOURS), size=num_objects, replace=False)]
    shapes = [str(s) for s in rng.choice(list(SHAPES), size=num_objects, replace=False)]
    # big shapes, shrunk when the bands are narrow (three objects)
    radius = min(SIZES["big"] * size, 0.8 * size / num_objects / (2 * 1.2))
    margin = radius * 1.2  # the triangle's apex reaches 1.2 r from its centre
    band = size / num_objects
    low = np.array([[margin, k * band + margin] for k in range(num_objects)])
    high = np.array([[size - margin, (k + 1) * band - margin] for k in range(num_objects)])
    pos = (low + high) / 2 + rng.uniform(-0.5, 0.5, (num_objects, 2)) * (high - low)
    angles = rng.uniform(0.0, 2 * math.pi, size=num_objects)
    velocity = (
        np.stack([np.sin(angles), np.cos(angles)], axis=1) * rng.uniform(0.01, 0.02, (num_objects, 1)) * size
    )
    coords = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = coords[:, None], coords[None, :]
    ramp = (coords[None, :] + coords[:, None]) / (2 * size) - 0.5
    background = (rng.uniform(15.0, 60.0, 3) + rng.uniform(10.0, 25.0, 3) * ramp[..., None]).astype(
        np.float32
    )
    with VideoWriter(path, Fraction(fps), crf=12) as writer:
        for _ in range(num_frames):
            frame = background.copy()
            for k in range(num_objects):
                frame[_shape_mask(shapes[k], pos[k, 0], pos[k, 1], radius, yy, xx)] = COLOURS[colours[k]]
            frame += rng.normal(0.0, _NOISE_STD, size=frame.shape).astype(np.float32)
            writer.write(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
            pos += velocity
            # bounce off the band's borders: turn the velocity around and stay inside
            outside = (pos < low) | (pos > high)
            velocity[outside] *= -1
            pos = np.clip(pos, low, high)
    return [f"the {colour} {shape}" for colour, shape in zip(colours, shapes)]
