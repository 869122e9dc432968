"""Inference on whole videos: streaming tracking, optional fixed-length chunks, resizing to the original frame.

Spec §3: Ref-YouTube-VOS runs each expression over the whole video (frame 0 conditions, the rest are tracked);
MeViS cuts the video into independent 24-frame chunks. Logits at the SAM input size are resized bilinearly to the
original frame size; the binary mask is sigmoid > 0.5, i.e. logit > 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mpgsam2.modeling.mpgsam2 import MPGSAM2

__all__ = [
    "ExpressionPrediction",
    "FrameSequence",
    "chunk_bounds",
    "predict_expression",
    "predict_video",
    "resize_logits",
]


# A video's frames: a (T, 3, H, W) tensor, or any sequence whose item t is frame t as a (3, H, W) tensor (so a reader
# can decode and transform frames lazily).
FrameSequence = Tensor | Sequence[Tensor]


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


def _frames(frames: FrameSequence, start: int, end: int) -> Tensor:
    """Frames [start, end) as one (end - start, 3, H, W) tensor."""
    if isinstance(frames, Tensor):
        return frames[start:end]
    return torch.stack([frames[t] for t in range(start, end)])


@torch.no_grad()
def predict_video(
    model: MPGSAM2,
    sam_frames: FrameSequence,
    beit_frames: FrameSequence,
    expressions: Sequence[tuple[Tensor, Tensor | None]],
    orig_size: tuple[int, int],
    chunk_size: int | None = None,
) -> list[ExpressionPrediction]:
    """Segment each of K expressions in one video; the unit of work of evaluation and ``mpgsam2.predict``.

    Args:
        model: the model (its current train/eval mode is used as is).
        sam_frames: (T, 3, S, S) SAM view, or a sequence of T (3, S, S) frames.
        beit_frames: (T, 3, Hb, Wb) BEiT-3 view, or a sequence of T (3, Hb, Wb) frames.
        expressions: K pairs ``(text_ids (L,), text_padding_mask (L,) bool | None)``, of any lengths.
        orig_size: (H, W) of the original frames.
        chunk_size: frames per independent chunk (24 for MeViS, spec §3.2), or None for the whole video.

    Returns:
        K predictions, in the order of ``expressions``: each gives the masks of :func:`predict_expression`.
    """
    num_frames = len(sam_frames)
    if len(beit_frames) != num_frames:
        raise ValueError(f"{num_frames} SAM frames but {len(beit_frames)} BEiT-3 frames")
    out = [torch.empty((num_frames, *orig_size), dtype=torch.float32) for _ in expressions]
    for start, end in chunk_bounds(num_frames, chunk_size):
        sam_chunk, beit_chunk = _frames(sam_frames, start, end), _frames(beit_frames, start, end)
        for k, (text_ids, text_padding_mask) in enumerate(expressions):
            out[k][start:end] = predict_expression(
                model, sam_chunk, beit_chunk, text_ids, text_padding_mask, orig_size
            ).logits
    return [ExpressionPrediction(logits=logits) for logits in out]
