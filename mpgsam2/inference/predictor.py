"""Inference on whole videos: streaming tracking, optional fixed-length chunks, resizing to the original frame.

Spec §3: Ref-YouTube-VOS runs each expression over the whole video (frame 0 conditions, the rest are tracked);
MeViS cuts the video into independent 24-frame chunks. Logits at the SAM input size are resized bilinearly to the
original frame size; the binary mask is sigmoid > 0.5, i.e. logit > 0.

**Existence (MeViS v2).** An expression may refer to nothing in its video. :func:`apply_existence` decides it per
expression from SAM 2's object-score head: the expression is judged *absent* when ``max_t sigmoid(s_t) <
threshold``, ``s_t`` being frame t's object-score logit (every chunk's frames), and then every frame's mask is
emptied. SAM 2 already empties each frame with ``s_t <= 0`` (its hard gate), so only a threshold above 0.5 changes
anything: it also drops expressions whose object is found weakly on a few frames. A deviation from the original
(which has no such decision), used where the benchmark asks for it (``system.existence_threshold``).

``predict_video``, evaluation's unit of work, runs a video's K expressions as one batch; ``predict_expression``
is its K = 1 case. Both are tested to give the masks of the model's plain streaming API (``MPGSAM2.start_video``
/ ``VideoSession.track``, one expression, no sharing, the raw global context; tests/inference/test_predict_video.py;
throughput in benchmarks/README.md). The per-frame loop itself is the model's (``VideoSession.propagate``); here
are the chunks, the batching of BEiT-3 calls, the frames read lazily and the resize to the original size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mpgsam2.data.batch import FrameView, ReferringBatch
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.modeling.sam2.tracker import NO_OBJ_SCORE
from mpgsam2.modeling.sam2.tracker_types import FrameFeatures

__all__ = [
    "EMPTY_LOGIT",
    "ExpressionPrediction",
    "apply_existence",
    "FrameSequence",
    "PRECISIONS",
    "chunk_bounds",
    "expression_text",
    "predict_expression",
    "predict_video",
    "resize_logits",
]


# A video's frames are the data side's FrameView (a (T, 3, H, W) tensor, or any sequence whose item t is frame t as a
# (3, H, W) tensor, so a reader can decode and transform frames lazily); FrameSequence is its older name here, kept
# for a release.
FrameSequence = FrameView


# the logit of an emptied frame: SAM 2's own "no object" mask value (sigmoid = 0 in float32)
EMPTY_LOGIT = NO_OBJ_SCORE


@dataclass
class ExpressionPrediction:
    """One expression's prediction over T frames at the original size (H, W).

    logits: (T, H, W) float32 mask logits; ``masks`` are ``logits > 0`` (sigmoid > 0.5).
    object_scores: (T,) float32 object-score logits of SAM 2 per frame (10 on every frame for a model without an
        object-score head), or None where not recorded.
    """

    logits: Tensor
    object_scores: Tensor | None = None

    @property
    def existence(self) -> float:
        """max over frames of sigmoid(object score): how surely the expression's object is in the video."""
        if self.object_scores is None:
            raise ValueError("this prediction carries no object scores")
        return float(torch.sigmoid(self.object_scores.float()).max())

    @property
    def masks(self) -> Tensor:
        """(T, H, W) bool."""
        return self.logits > 0

    @property
    def probs(self) -> Tensor:
        """(T, H, W) float32 probabilities."""
        return torch.sigmoid(self.logits)


def apply_existence(prediction: ExpressionPrediction, threshold: float | None) -> ExpressionPrediction:
    """The prediction with every frame emptied when the expression is judged absent (``prediction.existence <
    threshold``; see the module docstring); unchanged when ``threshold`` is None or the expression is present.

    Raises:
        ValueError: a threshold outside [0, 1], or a prediction without object scores.
    """
    if threshold is None:
        return prediction
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"existence threshold must lie in [0, 1] (a probability) or be None, got {threshold}"
        )
    if prediction.existence >= float(threshold):
        return prediction
    return ExpressionPrediction(
        logits=torch.full_like(prediction.logits, EMPTY_LOGIT), object_scores=prediction.object_scores
    )


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
    sam_frames: FrameView,
    beit_frames: FrameView,
    text_ids: Tensor,
    text_padding_mask: Tensor | None,
    orig_size: tuple[int, int],
    chunk_size: int | None = None,
) -> ExpressionPrediction:
    """Segment the referred object in every frame of one video: :func:`predict_video` with one expression.

    Each chunk (the whole video when ``chunk_size`` is None) is an independent run: its own multimodal context
    over the chunk's frames, its own SAM 2 state with the chunk's first frame as the conditioning frame. Frames
    are tracked one at a time, so memory does not grow with the video length beyond the context.

    Args:
        model: the model (its current train/eval mode is used as is).
        sam_frames: (T, 3, S, S) SAM view. beit_frames: (T, 3, Hb, Wb) BEiT-3 view (or lazy frame sequences, as
            :func:`predict_video` takes).
        text_ids: (L,) token ids. text_padding_mask: (L,) bool, True = padding, or None.
        orig_size: (H, W) of the original frames.
        chunk_size: frames per independent chunk (24 for MeViS, spec §3.2), or None for the whole video.

    Returns:
        The logits at the original size, on the CPU.
    """
    return predict_video(
        model, sam_frames, beit_frames, [(text_ids, text_padding_mask)], orig_size, chunk_size
    )[0]


def _frames(frames: FrameView, start: int, end: int) -> Tensor:
    """Frames [start, end) as one (end - start, 3, H, W) tensor (only these frames are read)."""
    if isinstance(frames, Tensor):
        return frames[start:end]
    return torch.stack([frames[t] for t in range(start, end)])


def expression_text(batch: ReferringBatch, row: int = 0) -> tuple[Tensor, Tensor]:
    """Row ``row`` of a collated batch's text, trimmed to the expression's own length: ids (L,) and mask (L,).

    The length runs to the last token that is not padding (every expression ends with its end-of-sentence
    token). parity: the padding mask itself is not used to cut, since with ``unk_as_pad`` unknown pieces inside
    the expression count as padding too and stay in place, as when the expression is collated alone.
    """
    ids, pad = batch.text_ids[row], batch.text_padding_mask[row].bool()
    real = (~pad).nonzero()
    length = int(real[-1]) + 1 if len(real) else ids.shape[0]
    return ids[:length], pad[:length]


# inference precisions: fp32, or autocast to a 16-bit type (the weights stay float32)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _pad_expressions(
    expressions: Sequence[tuple[Tensor, Tensor | None]], device: torch.device
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """K expressions as one batch at the longest length L.

    Returns ids [K, L]; the BEiT-3 padding mask [K, L] (each expression's own mask, then True past its length;
    None when nothing is padded); the decoder's word mask [K, L] (True only past each expression's length, so
    the decoder sees exactly the words it sees when the expression runs alone; None when all lengths agree).
    """
    lengths = [int(ids.shape[0]) for ids, _ in expressions]
    if min(lengths) < 1:
        raise ValueError("every expression needs at least one token")
    longest = max(lengths)
    ids = torch.zeros((len(expressions), longest), dtype=torch.long, device=device)
    pad = torch.ones((len(expressions), longest), dtype=torch.bool, device=device)
    for k, (text_ids, text_pad) in enumerate(expressions):
        if text_ids.dim() != 1 or (text_pad is not None and text_pad.shape != text_ids.shape):
            raise ValueError(f"expression {k}: expected text_ids (L,) and a mask (L,) or None")
        ids[k, : lengths[k]] = text_ids
        pad[k, : lengths[k]] = False if text_pad is None else text_pad.to(device=device, dtype=torch.bool)
    positions = torch.arange(longest, device=device)
    beyond = positions[None, :] >= torch.tensor(lengths, device=device)[:, None]
    all_same = all(n == longest for n in lengths)
    return ids, (pad if pad.any() else None), (None if all_same else beyond)


def _model_device(model: MPGSAM2) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_video(
    model: MPGSAM2,
    sam_frames: FrameView,
    beit_frames: FrameView,
    expressions: Sequence[tuple[Tensor, Tensor | None]],
    orig_size: tuple[int, int],
    chunk_size: int | None = None,
    *,
    precision: str = "fp32",
    compile: bool = False,
    beit_batch: int | None = None,
) -> list[ExpressionPrediction]:
    """Segment each of K expressions in one video; the unit of work of evaluation and ``mpgsam2.predict``.

    The path of a chunk (the whole video when ``chunk_size`` is None; chunks are independent runs):

    1. BEiT-3 and the mask-prior generator (``MPGSAM2.encode_tokens`` with ``frames_shared=True``,
       ``context_from_tokens``): the K expressions padded to a common length (padding masked wherever words are
       read, so each gets the masks it gets alone), each frame embedded once for the K, in calls of at most
       ``beit_batch`` (expression, frame) sequences.
    2. ``MPGSAM2.start_tracking(context, frames_shared=True, cache_context=True)``: the K targets tracked
       together (each its own memory bank and object pointers); what the decoder reads from the clip context is
       computed once (``ProjectedGlobalContext``) in place of the raw context, which is freed.
    3. ``VideoSession.propagate``, the model's one per-frame loop: per frame, the Hiera features once
       (``MPGSAM2.image_features``), shared by the K (the memory attention's first self-attention and the memory
       encoder's projection of the frame run once), the frame's prompts, SAM 2's ``track_step``.
    4. Each frame's K logits resized to ``orig_size`` as they come.

    Frames are read from the sequences as they are needed (BEiT-3 groups, then SAM frames one at a time), so
    memory grows with T only by the clip context and the returned logits. :func:`predict_expression` is the
    K = 1 case.

    Args:
        model: the model (its current train/eval mode is used as is; in train mode nothing is cached or
            shared).
        sam_frames: (T, 3, S, S) SAM view, or a sequence of T (3, S, S) frames.
        beit_frames: (T, 3, Hb, Wb) BEiT-3 view, or a sequence of T (3, Hb, Wb) frames.
        expressions: K pairs ``(text_ids (L,), text_padding_mask (L,) bool | None)``, of any lengths.
        orig_size: (H, W) of the original frames.
        chunk_size: frames per independent chunk (24 for MeViS, spec §3.2), or None for the whole video.
        precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"``: autocast on the model's device (meant for CUDA;
            masks then differ from fp32 where logits are near 0, and memories are stored as configured).
        compile: kept for old callers: compiles the model in place first (``MPGSAM2.compile_for_inference``,
            the build / load option ``compile=True`` of ``mpgsam2.build_model`` / ``mpgsam2.load_model``; it
            stays compiled). The same computation, so the masks agree up to float rounding.
        beit_batch: (expression, frame) sequences per BEiT-3 call: a group of frames for a group of expressions. It
            bounds BEiT-3's activation memory and sets its speed, not its result. None: 8 on the CPU, where
            larger calls run slower per sequence (29 ms at 8 sequences, 41 ms at 128 on the mid-size model,
            ``benchmarks/README.md``), 64 elsewhere (not measured: no GPU was lent).

    Returns:
        K predictions, in the order of ``expressions``: each gives the masks of that expression alone.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    num_frames = len(sam_frames)
    if len(beit_frames) != num_frames:
        raise ValueError(f"{num_frames} SAM frames but {len(beit_frames)} BEiT-3 frames")
    if not expressions:
        return []
    if compile:
        model.compile_for_inference()
    device = _model_device(model)
    ids, text_pad, word_mask = _pad_expressions(expressions, device)
    k = ids.shape[0]
    out = torch.empty((k, num_frames, *orig_size), dtype=torch.float32)
    scores = torch.empty((k, num_frames), dtype=torch.float32)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    if beit_batch is None:
        beit_batch = 8 if device.type == "cpu" else 64
    if beit_batch < 1:
        raise ValueError(f"beit_batch must be >= 1, got {beit_batch}")
    # each BEiT-3 call: a group of frames for a group of expressions, at most beit_batch sequences
    expressions_per_call = min(k, beit_batch)
    frames_per_call = max(1, beit_batch // expressions_per_call)
    with autocast:
        for start, end in chunk_bounds(num_frames, chunk_size):
            # each call's tokens are written into one preallocated [K, T, 1 + P + L, D] tensor: concatenating the
            # calls' tokens would hold them twice
            tokens: Tensor | None = None
            for g0, g1 in chunk_bounds(end - start, frames_per_call):
                group = _frames(beit_frames, start + g0, start + g1).to(device).unsqueeze(0)
                for e0, e1 in chunk_bounds(k, expressions_per_call):
                    part = model.encode_tokens(
                        group,
                        ids[e0:e1],
                        None if text_pad is None else text_pad[e0:e1],
                        frames_shared=True,
                        fused_attention=True,
                    )
                    if tokens is None:
                        tokens = part.new_empty((k, end - start, *part.shape[2:]))
                    tokens[e0:e1, g0:g1] = part
                    del part
            context = model.context_from_tokens(tokens, clip_at_a_time=True)
            del tokens
            session = model.start_tracking(
                context, frames_shared=True, text_key_padding_mask=word_mask, cache_context=True
            )
            del context  # the session holds what tracking reads (the raw global context is released)

            def frame_features(t: int, start: int = start) -> FrameFeatures:
                """Frame ``t`` of the chunk: its SAM view read now, when it is tracked, and its features."""
                return model.image_features(_frames(sam_frames, start + t, start + t + 1).to(device))

            for frame in session.propagate(frame_features):
                t = start + frame.frame_idx
                out[:, t] = resize_logits(frame.high_res_logits, orig_size)[:, 0]  # [K, 1, S, S] -> (K, H, W)
                scores[:, t] = frame.object_score_logits[:, 0].float().cpu()
    return [ExpressionPrediction(logits=logits, object_scores=s) for logits, s in zip(out, scores)]
