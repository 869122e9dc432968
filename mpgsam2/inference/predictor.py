"""Inference on whole videos: streaming tracking, optional fixed-length chunks, resizing to the original frame.

Spec §3: Ref-YouTube-VOS runs each expression over the whole video (frame 0 conditions, the rest are tracked);
MeViS cuts the video into independent 24-frame chunks. Logits at the SAM input size are resized bilinearly to the
original frame size; the binary mask is sigmoid > 0.5, i.e. logit > 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mpgsam2.modeling.mpgsam2 import MPGSAM2

__all__ = ["ExpressionPrediction", "chunk_bounds", "predict_expression", "resize_logits"]


@dataclass
class ExpressionPrediction:
    """One expression's prediction over T frames at the original size (H, W).

    logits: (T, H, W) float32 mask logits; ``masks`` are ``logits > 0`` (sigmoid > 0.5).
    """

    logits: Tensor

    @property
    def masks(self) -> Tensor:
        """(T, H, W) bool."""
        return self.logits > 0

    @property
    def probs(self) -> Tensor:
        """(T, H, W) float32 probabilities."""
        return torch.sigmoid(self.logits)


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Mask logits (N, C, S, S) resized bilinearly to the original frame size (H, W), as float32 on the CPU
    (spec §1.8: resize the logits, then threshold)."""
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False).cpu()


def chunk_bounds(num_frames: int, chunk_size: int | None) -> Iterator[tuple[int, int]]:
    """[start, end) ranges covering ``num_frames`` frames in consecutive chunks (one chunk when None)."""
    if num_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    step = chunk_size or num_frames
    for start in range(0, num_frames, step):
        yield start, min(start + step, num_frames)


@torch.no_grad()
def predict_expression(
    model: MPGSAM2,
    sam_frames: Tensor,
    beit_frames: Tensor,
    text_ids: Tensor,
    text_padding_mask: Tensor | None,
    orig_size: tuple[int, int],
    chunk_size: int | None = None,
) -> ExpressionPrediction:
    """Segment the referred object in every frame of one video.

    Each chunk (the whole video when ``chunk_size`` is None) is an independent run: its own multimodal context
    over the chunk's frames, its own SAM 2 state with the chunk's first frame as the conditioning frame. Frames
    are tracked one at a time, so memory does not grow with the video length beyond the context.

    Args:
        model: the model (its current train/eval mode is used as is).
        sam_frames: (T, 3, S, S) SAM view. beit_frames: (T, 3, Hb, Wb) BEiT-3 view.
        text_ids: (L,) token ids. text_padding_mask: (L,) bool, True = padding, or None.
        orig_size: (H, W) of the original frames.
        chunk_size: frames per independent chunk (24 for MeViS, spec §3.2), or None for the whole video.

    Returns:
        The logits at the original size, on the CPU.
    """
    num_frames = sam_frames.shape[0]
    if beit_frames.shape[0] != num_frames:
        raise ValueError(f"{num_frames} SAM frames but {beit_frames.shape[0]} BEiT-3 frames")
    out = torch.empty((num_frames, *orig_size), dtype=torch.float32)
    for start, end in chunk_bounds(num_frames, chunk_size):
        session = model.start_video(beit_frames[start:end], text_ids, text_padding_mask)
        for t in range(end - start):
            logits = session.track(t, sam_frames[start + t]).high_res_logits  # [1, 1, S, S]
            out[start + t] = resize_logits(logits, orig_size)[0, 0]
    return ExpressionPrediction(logits=out)
