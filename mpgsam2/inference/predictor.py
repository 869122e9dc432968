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

``predict_expression`` is the simple reference (one expression, ``MPGSAM2.start_video`` / ``track``);
``predict_video``, evaluation's unit of work, runs a video's K expressions as one batch and is tested to give the
reference's masks (tests/inference/test_predict_video.py; throughput in benchmarks/README.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpgsam2.data.batch import ReferringBatch
from mpgsam2.modeling.mpgsam2 import MPGSAM2
from mpgsam2.modeling.sam2.tracker import NO_OBJ_SCORE, FrameFeatures

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


# A video's frames: a (T, 3, H, W) tensor, or any sequence whose item t is frame t as a (3, H, W) tensor (so a reader
# can decode and transform frames lazily).
FrameSequence = Tensor | Sequence[Tensor]


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
    scores = torch.empty(num_frames, dtype=torch.float32)
    for start, end in chunk_bounds(num_frames, chunk_size):
        session = model.start_video(beit_frames[start:end], text_ids, text_padding_mask)
        for t in range(end - start):
            frame = session.track(t, sam_frames[start + t])
            out[start + t] = resize_logits(frame.high_res_logits, orig_size)[0, 0]  # [1, 1, S, S] -> (H, W)
            scores[start + t] = frame.object_score_logits[0, 0].float()
    return ExpressionPrediction(logits=out, object_scores=scores)


def _frames(frames: FrameSequence, start: int, end: int) -> Tensor:
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

# compiled forwards of (image encoder, memory attention) per model, made on first use and kept with the model
_COMPILED: weakref.WeakKeyDictionary[nn.Module, tuple[Callable[..., Any], ...]] = weakref.WeakKeyDictionary()


@contextmanager
def _compiled(model: MPGSAM2, enabled: bool) -> Iterator[None]:
    """Within the block, the image encoder and memory attention run through ``torch.compile``."""
    if not enabled:
        yield
        return
    modules = (model.sam.image_encoder, model.sam.memory_attention)
    if model not in _COMPILED:
        _COMPILED[model] = tuple(torch.compile(m.forward) for m in modules)
    for module, forward in zip(modules, _COMPILED[model]):
        module.forward = forward  # an instance attribute: parameters and state-dict keys are untouched
    try:
        yield
    finally:
        for module in modules:
            del module.forward


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
    sam_frames: FrameSequence,
    beit_frames: FrameSequence,
    expressions: Sequence[tuple[Tensor, Tensor | None]],
    orig_size: tuple[int, int],
    chunk_size: int | None = None,
    *,
    precision: str = "fp32",
    compile: bool = False,
    beit_batch: int | None = None,
) -> list[ExpressionPrediction]:
    """Segment each of K expressions in one video; the unit of work of evaluation and ``mpgsam2.predict``.

    The K expressions run as one batch: BEiT-3 and the mask-prior generator see them padded to a common length
    (padding masked wherever words are read, so each gets the masks it gets alone), and SAM 2 tracks the K
    targets together (each with its own memory bank and object pointers). What reads only the frame is computed
    once per frame and shared by the K: the Hiera features, BEiT-3's patch embedding and first-layer image
    projections, the memory attention's first self-attention, the memory encoder's projection of the frame. What
    reads only the clip context is computed once per chunk (the decoder's ``ContextCache``; the raw context is
    then released). Frames are read from the sequences as they are needed: BEiT-3 in groups of ``beit_batch``
    (expression, frame) pairs at a time, SAM frames one at a time, so memory grows with T only by the clip
    context and the returned logits.

    Args:
        model: the model (its current train/eval mode is used as is).
        sam_frames: (T, 3, S, S) SAM view, or a sequence of T (3, S, S) frames.
        beit_frames: (T, 3, Hb, Wb) BEiT-3 view, or a sequence of T (3, Hb, Wb) frames.
        expressions: K pairs ``(text_ids (L,), text_padding_mask (L,) bool | None)``, of any lengths.
        orig_size: (H, W) of the original frames.
        chunk_size: frames per independent chunk (24 for MeViS, spec §3.2), or None for the whole video.
        precision: ``"fp32"``, or ``"bf16"`` / ``"fp16"``: autocast on the model's device (meant for CUDA;
            masks then differ from fp32 where logits are near 0, and memories are stored as configured).
        compile: run the Hiera image encoder and the memory attention through ``torch.compile`` (compiled on the
            first call, kept for the model; the memory attention recompiles while the memory bank fills up).
            The same computation, so the masks agree up to float rounding.
        beit_batch: (expression, frame) sequences per BEiT-3 call: a group of frames for a group of expressions. It
            bounds BEiT-3's activation memory and sets its speed, not its result. None: 8 on the CPU, where
            larger calls run slower per sequence (29 ms at 8 sequences, 41 ms at 128 on the mid-size model,
            ``benchmarks/README.md``), 64 elsewhere (not measured: no GPU was lent).

    Returns:
        K predictions, in the order of ``expressions``: each gives the masks of :func:`predict_expression`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    num_frames = len(sam_frames)
    if len(beit_frames) != num_frames:
        raise ValueError(f"{num_frames} SAM frames but {len(beit_frames)} BEiT-3 frames")
    if not expressions:
        return []
    device = _model_device(model)
    ids, text_pad, word_mask = _pad_expressions(expressions, device)
    k = ids.shape[0]
    out = torch.empty((k, num_frames, *orig_size), dtype=torch.float32)
    scores = torch.empty((k, num_frames), dtype=torch.float32)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    cfg = model.config
    if beit_batch is None:
        beit_batch = 8 if device.type == "cpu" else 64
    if beit_batch < 1:
        raise ValueError(f"beit_batch must be >= 1, got {beit_batch}")
    # each BEiT-3 call: a group of frames for a group of expressions, at most beit_batch sequences
    expressions_per_call = min(k, beit_batch)
    frames_per_call = max(1, beit_batch // expressions_per_call)
    with autocast, _compiled(model, compile):
        for start, end in chunk_bounds(num_frames, chunk_size):
            # each call's tokens are written into one preallocated [K, T, 1 + P + L, D] tensor: concatenating the
            # calls' tokens would hold them twice
            tokens: Tensor | None = None
            for g0, g1 in chunk_bounds(end - start, frames_per_call):
                group = _frames(beit_frames, start + g0, start + g1).to(device)
                for e0, e1 in chunk_bounds(k, expressions_per_call):
                    part = model.encode_tokens(
                        group.unsqueeze(0).expand(e1 - e0, *group.shape),
                        ids[e0:e1],
                        None if text_pad is None else text_pad[e0:e1],
                    )
                    if tokens is None:
                        tokens = part.new_empty((k, end - start, *part.shape[2:]))
                    tokens[e0:e1, g0:g1] = part
                    del part
            context = model.context_from_tokens(tokens)
            del tokens
            # what the decoder reads from the clip context, once per chunk instead of once per frame
            cache = (
                None if model.training else model.sam.sam_mask_decoder.context_cache(context.global_context)
            )
            if cache is not None:
                # the decoder reads only the cache from here on: the raw context is not held while tracking
                context.global_context = context.prior.global_context = None
            state = model.sam.new_state(num_frames=end - start)
            for t in range(end - start):
                frame = _frames(sam_frames, start + t, start + t + 1).to(device)
                shared = model._image_features(frame)  # once per frame, whatever K
                feats = FrameFeatures(
                    top=shared.top.expand(k, -1, -1, -1),
                    top_pos=shared.top_pos.expand(k, -1, -1, -1),
                    high_res=None
                    if shared.high_res is None
                    else [x.expand(k, -1, -1, -1) for x in shared.high_res],
                )
                prompts = context.frame_prompts(t, cfg.use_dense_prior, cfg.use_sparse_token)
                prompts.text_key_padding_mask = word_mask
                prompts.context_cache = cache
                frame_out = model.sam.track_step(state, t, feats, prompts)
                out[:, start + t] = resize_logits(frame_out.high_res_logits, orig_size)[:, 0]  # [K, 1, S, S]
                scores[:, start + t] = frame_out.object_score_logits[:, 0].float().cpu()
    return [ExpressionPrediction(logits=logits, object_scores=s) for logits, s in zip(out, scores)]
