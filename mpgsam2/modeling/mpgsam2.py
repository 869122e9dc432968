"""MPG-SAM 2: BEiT-3 multimodal encoding, the mask-prior generator, and SAM 2 tracking prompted by both.

Three entry points:
- ``MPGSAM2.forward``: a batch of clips, every frame segmented (training and whole-clip inference);
- ``MPGSAM2.start_video`` -> ``VideoSession.track``: streaming inference (the global context is computed once
  from all frames, then SAM 2 runs frame by frame holding only its memory window);
- ``MPGSAM2.forward_images``: single images (RefCOCO pre-training).

The per-frame tracking loop is defined once, :meth:`VideoSession.propagate` (frame features -> prompts ->
``track_step``): ``forward`` runs it over B clips, ``mpgsam2.inference.predict_video`` over one video's frames for
K expressions (``MPGSAM2.start_tracking(..., frames_shared=True, cache_context=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from mpgsam2.modeling.beit3 import BEiT3
from mpgsam2.modeling.checkpointing import checkpointing_blocks, run_block
from mpgsam2.modeling.config import MPGSAM2Config
from mpgsam2.modeling.sam2.global_context import GlobalContext, project_global_context
from mpgsam2.modeling.sam2.position_encoding import get_1d_sine_pe
from mpgsam2.modeling.sam2.tracker import (
    FrameFeatures,
    FrameOutput,
    FramePrompts,
    SAM2Tracker,
    TrackingState,
    build_sam2_tracker,
)


class PostNormEncoderLayer(nn.Module):
    """Transformer encoder layer, post-norm, ReLU FFN (DETR style), over a [N, B, D] sequence."""

    # At inference (eval mode, no autograd) the layer runs over at most this many query tokens at a time: its
    # activations over a whole clip (T x G*G tokens: the FFN's [N, B, ffn_dim] hidden layer, the attention's packed
    # projections) were the peak of inference memory. Row-wise after the keys / values, so the result is the same.
    inference_token_chunk: int = 1024

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor) -> Tensor:
        """src: [N, B, D] -> [N, B, D]."""
        if not (torch.is_grad_enabled() or self.training) and src.shape[0] > self.inference_token_chunk:
            return self._forward_in_query_chunks(src)
        # deviation: need_weights=False (no [heads, N, N] weight tensor is kept; the original materialised it,
        # 12 GB at 100 frames); the output is the same attention.
        attended = self.self_attn(src, src, src, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        return self.norm2(src + self.dropout2(self._ffn(src)))

    def _ffn(self, src: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(src))))

    def _forward_in_query_chunks(self, src: Tensor) -> Tensor:
        """The eval-mode layer without autograd, over chunks of queries: src [N, B, D] -> [N, B, D]."""
        # deviation: keys / values are projected once for the clip, then each chunk of queries runs attention,
        # out_proj, norms and FFN into one output, instead of nn.MultiheadAttention's packed [N, B, 3D]
        # projection (and its head-major copies) plus full-clip intermediates; same values up to float rounding.
        attn = self.self_attn
        k, v = (_project_heads(src, attn, i) for i in (1, 2))  # [B, heads, N, d], projected once
        out = torch.empty_like(src)
        for start in range(0, src.shape[0], self.inference_token_chunk):
            part = src[start : start + self.inference_token_chunk]
            attended = F.scaled_dot_product_attention(_project_heads(part, attn, 0), k, v)
            part = self.norm1(part + attn.out_proj(rearrange(attended, "b h n d -> n b (h d)")))
            # eval mode: dropout is the identity; ReLU in place, so one [chunk, B, ffn_dim] hidden layer at a time
            ffn = self.linear2(F.relu_(self.linear1(part)))
            out[start : start + part.shape[0]] = self.norm2(part + ffn)
        return out


def _project_heads(x: Tensor, attn: nn.MultiheadAttention, index: int) -> Tensor:
    """Query (0), key (1) or value (2) projection of ``x`` [N, B, D] by ``attn``, as a [B, heads, N, d] view."""
    dim = attn.embed_dim
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[index * dim : (index + 1) * dim]
    projected = F.linear(x, attn.in_proj_weight[index * dim : (index + 1) * dim], bias)
    # a strided view, not a copy: SDPA reads any strides
    return rearrange(projected, "n b (h d) -> b h n d", h=attn.num_heads)


class MultiplicativeCrossAttention(nn.Module):
    """Queries attend to a memory and are then MULTIPLIED by the result (no residual, no norm)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads)

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        """query: [Nq, B, D]; memory: [Nk, B, D] -> [Nq, B, D]."""
        if torch.is_grad_enabled() or self.training:
            return query * self.attn(query, memory, memory, need_weights=False)[0]
        # deviation: at inference the memory's keys / values are projected straight into head views (a clip's
        # T x G*G tokens), without nn.MultiheadAttention's packed [Nk, B, 2D] projection and its head-major
        # copies; the same attention up to float rounding.
        k, v = (_project_heads(memory, self.attn, i) for i in (1, 2))
        attended = F.scaled_dot_product_attention(_project_heads(query, self.attn, 0), k, v)
        return query * self.attn.out_proj(rearrange(attended, "b h n d -> n b (h d)"))


@dataclass
class PriorOutput:
    """The mask-prior generator's results for B clips of T frames (G x G BEiT-3 patch grid, C SAM width).

    prior_logits: [B, T, G, G]; global_context: [B, T, G*G, C] (with temporal position); refined_token: [B, T, D]
    (class token after the multiplicative fusion).
    """

    prior_logits: Tensor
    global_context: Tensor
    refined_token: Tensor


class MaskPriorGenerator(nn.Module):
    """Turns BEiT-3's fused tokens into a coarse target mask per frame and into SAM 2's global context.

    Args:
        dim: BEiT-3 width D. context_dim: SAM 2 width C. num_heads, ffn_dim, dropout: the global self-attention.
        use_global_attention: False skips the clip-wide patch self-attention (ablation).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        num_heads: int = 8,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        use_global_attention: bool = True,
    ) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.global_attn = (
            PostNormEncoderLayer(dim, num_heads, ffn_dim or 4 * dim, dropout)
            if use_global_attention
            else None
        )
        self.token_refine = MultiplicativeCrossAttention(dim, num_heads)
        self.token_proj = nn.Linear(dim, dim)
        self.prior_head = nn.Linear(dim, 1)
        self.context_proj = nn.Linear(dim, context_dim)
        # both attention layers recomputed in backward when training (activation_checkpointing "mask_prior")
        self.checkpoint_layers = False

    def forward(self, cls_token: Tensor, patch_tokens: Tensor, grid: tuple[int, int]) -> PriorOutput:
        """cls_token: [B, T, D]; patch_tokens: [B, T, G*G, D] row-major over ``grid`` (G, G)."""
        b, t, p, _ = patch_tokens.shape
        h, w = grid
        # every patch of every frame attends to every other: the clip-level pixel context
        visual = rearrange(patch_tokens, "b t p d -> (t p) b d")
        if self.global_attn is not None:
            visual = run_block(self.global_attn, self.checkpoint_layers, visual)
        token = run_block(
            self.token_refine, self.checkpoint_layers, rearrange(cls_token, "b t d -> t b d"), visual
        )
        token = self.token_proj(rearrange(token, "t b d -> b t d"))
        visual = rearrange(visual, "(t h w) b d -> b t h w d", t=t, h=h, w=w)
        mask_features = visual * token[:, :, None, None, :]
        del visual  # clip-wide tensors are released as soon as they are read (inference memory)
        prior_logits = self.prior_head(mask_features).squeeze(-1)
        context = rearrange(self.context_proj(mask_features), "b t h w c -> b t (h w) c")
        del mask_features
        frame_pos = get_1d_sine_pe(
            torch.arange(t, dtype=context.dtype, device=context.device), self.context_dim
        )[None, :, None, :].to(context.dtype)
        # in place without autograd: no second clip-wide context tensor
        context = context + frame_pos if torch.is_grad_enabled() else context.add_(frame_pos)
        return PriorOutput(prior_logits=prior_logits, global_context=context, refined_token=token)


@dataclass
class ClipContext:
    """Per-clip quantities computed before SAM 2 runs (B clips, T frames, L tokens, C SAM width, G grid).

    prior_logits: [B, T, G, G] the mask-prior generator's logits; priors: [B, T, 1, G, G] their sigmoid (the dense
    prompts); sparse_tokens: [B, T, 1, C]; text_feat: [B, T, L, C]; global_context: the raw [B, T, G*G, C], or its
    ``ProjectedGlobalContext`` once ``MPGSAM2.start_tracking(cache_context=True)`` has replaced it (the only
    reference to the raw tensor is here, so it is then freed); sentence_scores: [B, T] (the original's sentence
    scalar per frame).
    """

    prior_logits: Tensor
    priors: Tensor
    sparse_tokens: Tensor
    text_feat: Tensor
    global_context: GlobalContext
    sentence_scores: Tensor

    def frame_prompts(
        self,
        t: int,
        use_dense_prior: bool,
        use_sparse_token: bool,
        *,
        text_key_padding_mask: Tensor | None = None,
    ) -> FramePrompts:
        """Frame ``t``'s prompts (``text_key_padding_mask``: see :class:`FramePrompts`)."""
        return FramePrompts(
            mask_prior=self.priors[:, t] if use_dense_prior else None,
            sparse_token=self.sparse_tokens[:, t] if use_sparse_token else None,
            text_feat=self.text_feat[:, t],
            global_context=self.global_context,
            text_key_padding_mask=text_key_padding_mask,
        )


@dataclass
class ClipOutput:
    """pred_masks: [B, T, 1, S, S] mask logits at the SAM input size; sentence_scores: [B, T]."""

    pred_masks: Tensor
    sentence_scores: Tensor
    context: ClipContext
    frames: list[FrameOutput] = field(default_factory=list)


@dataclass
class ImageOutput:
    """The image path's results for B single images (G x G BEiT-3 patch grid, S SAM input size).

    pred_masks: [B, 1, S, S] mask logits; sentence_scores: [B]; prior_logits: [B, G, G].
    """

    pred_masks: Tensor
    sentence_scores: Tensor
    prior_logits: Tensor


# the dtypes a config (possibly read from someone else's checkpoint) may name; never looked up by name on torch
MEMORY_STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def memory_storage_dtype(name: str | None) -> torch.dtype | None:
    """The dtype SAM 2 memories are stored in between frames (None: as computed)."""
    if name is None:
        return None
    if name not in MEMORY_STORAGE_DTYPES:
        raise ValueError(
            f"memory_storage_dtype={name!r}: expected None or one of {sorted(MEMORY_STORAGE_DTYPES)}"
        )
    return MEMORY_STORAGE_DTYPES[name]


class MPGSAM2(nn.Module):
    """The MPG-SAM 2 model. Build with ``MPGSAM2(config)``; load weights with ``mpgsam2.weights``."""

    def __init__(self, config: MPGSAM2Config) -> None:
        super().__init__()
        self.config = config
        d, c = config.beit_dim, config.sam_dim
        self.beit3 = BEiT3(**config.beit3)
        self.mask_prior = MaskPriorGenerator(
            d,
            c,
            num_heads=config.prior_num_heads,
            ffn_dim=config.prior_ffn_dim,
            dropout=config.dropout,
            use_global_attention=config.use_global_pixel_attention,
        )
        self.sparse_prompt_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, c))
        self.text_proj = nn.Linear(d, c)
        self.sentence_head = nn.Linear(c, 1)
        storage = memory_storage_dtype(config.memory_storage_dtype)
        sam2_cfg = dict(config.sam2)
        sam2_cfg.setdefault("memory_storage_dtype", storage)
        self.sam: SAM2Tracker = build_sam2_tracker(
            sam2_cfg,
            mask_decoder_kwargs={
                "fusion_ffn_dim": config.fusion_ffn_dim,
                "fusion_num_heads": config.fusion_num_heads,
                "fusion_dropout": config.dropout,
                "use_pixel_global_fusion": config.use_pixel_global_fusion,
                "use_object_global_fusion": config.use_object_global_fusion,
                "use_object_historical_fusion": config.use_object_historical_fusion,
            },
        )
        if config.freeze_image_encoder:
            self.sam.image_encoder.requires_grad_(False)
        self.set_activation_checkpointing(config.activation_checkpointing)

    def set_activation_checkpointing(self, names: Iterable[str]) -> None:
        """Recompute the named block groups in backward when training (``ACTIVATION_CHECKPOINTING_BLOCKS``;
        empty: none); recorded in ``config.activation_checkpointing``."""
        names = checkpointing_blocks(names)
        self.config.activation_checkpointing = names
        self.beit3.encoder.checkpoint_layers = "beit3" in names
        self.mask_prior.checkpoint_layers = "mask_prior" in names
        self.sam.memory_attention.checkpoint_layers = "memory_attention" in names
        self.sam.sam_mask_decoder.checkpoint_fusion = "decoder_fusion" in names

    @property
    def input_sizes(self) -> dict[str, int]:
        """The side in pixels of each square input view, by the names the data side uses:
        ``{"sam_size": S, "beit_size": Hb}`` (``ClipTransform(**model.input_sizes, train=False)``).

        Read from the built modules, not the config: the BEiT-3 presets and a released ``config.json`` leave the
        image size to ``BEiT3``'s default (224), so ``config.beit3`` need not name it."""
        return {"sam_size": int(self.sam.image_size), "beit_size": int(self.beit3.vision_embed.img_size)}

    @property
    def grid(self) -> tuple[int, int]:
        side = self.beit3.grid_size
        return (side, side) if isinstance(side, int) else tuple(side)

    def train(self, mode: bool = True) -> MPGSAM2:
        super().train(mode)
        if self.config.freeze_image_encoder:
            # frozen means frozen: no drop-path or other train-only behaviour in the image encoder either
            self.sam.image_encoder.eval()
        return self

    # ------------------------------------------------------------------ multimodal context
    def encode_context(
        self, beit_frames: Tensor, text_ids: Tensor, text_padding_mask: Tensor | None
    ) -> ClipContext:
        """beit_frames: [B, T, 3, H, W]; text_ids: [B, L]; text_padding_mask: [B, L] (True = ignored)."""
        return self.context_from_tokens(self.encode_tokens(beit_frames, text_ids, text_padding_mask))

    def encode_tokens(
        self,
        beit_frames: Tensor,
        text_ids: Tensor,
        text_padding_mask: Tensor | None,
        *,
        frames_shared: bool = False,
        fused_attention: bool | None = None,
    ) -> Tensor:
        """BEiT-3 over every frame of B clips: beit_frames [B, T, 3, H, W], text [B, L] -> [B, T, 1 + P + L, D].

        Frames are independent here, so a caller may run groups of frames and concatenate along T.

        Args:
            frames_shared: the B clips are one video's frames for B expressions (``beit_frames`` [1, T, ...] or
                those frames expanded over B): only row 0 is read, and BEiT-3 embeds each frame once for all B.
            fused_attention: BEiT-3's attention kernel (see :meth:`BEiT3.forward`; None: fused without autograd).
        """
        b, t = text_ids.shape[0], beit_frames.shape[1]
        if not frames_shared and beit_frames.shape[0] != b:
            raise ValueError(f"{beit_frames.shape[0]} clips of frames for {b} texts (frames_shared=False)")
        ids = text_ids.repeat_interleave(t, dim=0)
        pad = None if text_padding_mask is None else text_padding_mask.repeat_interleave(t, dim=0)
        if frames_shared:
            tokens = self.beit3(beit_frames[0], ids, pad, image_repeats=b, fused_attention=fused_attention)
        else:
            tokens = self.beit3(beit_frames.flatten(0, 1), ids, pad, fused_attention=fused_attention)
        return tokens.unflatten(0, (b, t))

    def context_from_tokens(self, tokens: Tensor, *, clip_at_a_time: bool | None = None) -> ClipContext:
        """The clip context from BEiT-3's tokens [B, T, 1 + P + L, D] (P = G*G patches).

        clip_at_a_time: run the mask-prior generator one clip at a time into preallocated outputs, so its
        clip-wide activations exist for one clip at once (inference; clips are independent). None, the
        documented default: so exactly when autograd is off.
        """
        if clip_at_a_time is None:
            clip_at_a_time = not torch.is_grad_enabled()
        b, t = tokens.shape[:2]
        tokens = tokens.flatten(0, 1)
        num_patches = self.grid[0] * self.grid[1]
        cls_token = tokens[:, 0].unflatten(0, (b, t))
        patches = tokens[:, 1 : 1 + num_patches].unflatten(0, (b, t))
        words = tokens[:, 1 + num_patches :]
        if not clip_at_a_time or b == 1:
            prior = self.mask_prior(cls_token, patches, self.grid)
        else:
            # one clip at a time (e.g. K expressions of one video): the clip-wide attention's activations
            # (T x G*G tokens each) then exist for one clip at once; clips are independent. Each clip's results
            # are written into preallocated outputs, so no clip's context is held twice.
            prior = None
            for i in range(b):
                part = self.mask_prior(cls_token[i : i + 1], patches[i : i + 1], self.grid)
                if prior is None:
                    prior = PriorOutput(
                        *(
                            x.new_empty((b, *x.shape[1:]))
                            for x in (part.prior_logits, part.global_context, part.refined_token)
                        )
                    )
                prior.prior_logits[i] = part.prior_logits[0]
                prior.global_context[i] = part.global_context[0]
                prior.refined_token[i] = part.refined_token[0]
                del part  # not alive during the next clip
        # the sparse prompt uses the raw class token (not the refined one), as the original
        sparse = self.sparse_prompt_mlp(tokens[:, :1]).unflatten(0, (b, t))
        text_feat = self.text_proj(words)
        sentence = self.sentence_head(text_feat[:, 0]).view(b, t)
        return ClipContext(
            prior_logits=prior.prior_logits,
            priors=torch.sigmoid(prior.prior_logits).unsqueeze(2),
            sparse_tokens=sparse,
            text_feat=text_feat.unflatten(0, (b, t)),
            global_context=prior.global_context,
            sentence_scores=sentence,
        )

    def image_features(self, sam_frames: Tensor) -> FrameFeatures:
        """SAM 2's features of N frames: sam_frames [N, 3, S, S] -> :class:`FrameFeatures` of batch N (the
        frozen image encoder runs without autograd)."""
        return self.sam.forward_image(sam_frames, encoder_no_grad=self.config.freeze_image_encoder)

    def compile_for_inference(self) -> MPGSAM2:
        """Run the Hiera image encoder and the memory attention through ``torch.compile`` from now on
        (``nn.Module.compile``: parameters and state-dict names unchanged; idempotent). The build / load option
        ``compile=True`` of ``mpgsam2.build_model`` / ``mpgsam2.load_model``; the same computation, so the
        masks agree up to float rounding (the memory attention recompiles while the memory bank fills up)."""
        for module in (self.sam.image_encoder, self.sam.memory_attention):
            if getattr(module, "_compiled_call_impl", None) is None:
                module.compile()
        return self

    # ------------------------------------------------------------------ clips
    def forward(
        self,
        sam_frames: Tensor,
        beit_frames: Tensor,
        text_ids: Tensor,
        text_padding_mask: Tensor | None = None,
    ) -> ClipOutput:
        """Segment every frame of B clips of T frames (frame 0 conditions, the rest are tracked).

        sam_frames: [B, T, 3, S, S]; beit_frames: [B, T, 3, Hb, Wb]; text_ids / text_padding_mask: [B, L].
        """
        b, t = sam_frames.shape[:2]
        context = self.encode_context(beit_frames, text_ids, text_padding_mask)
        feats = self.image_features(sam_frames.flatten(0, 1))  # all frames of all clips in one call
        first_frames = torch.arange(b, device=sam_frames.device) * t  # row of each clip's frame 0
        session = self.start_tracking(context)
        frames = list(session.propagate(lambda i: feats.select(first_frames + i)))
        pred = torch.stack([f.high_res_logits for f in frames], dim=1)
        return ClipOutput(
            pred_masks=pred, sentence_scores=context.sentence_scores, context=context, frames=frames
        )

    # ------------------------------------------------------------------ streaming
    def start_video(
        self, beit_frames: Tensor, text_ids: Tensor, text_padding_mask: Tensor | None = None
    ) -> VideoSession:
        """Begin streaming inference on one video: beit_frames [T, 3, Hb, Wb] (all frames), text_ids [L]."""
        context = self.encode_context(
            beit_frames.unsqueeze(0),
            text_ids.unsqueeze(0),
            None if text_padding_mask is None else text_padding_mask.unsqueeze(0),
        )
        return self.start_tracking(context)

    def start_tracking(
        self,
        context: ClipContext,
        *,
        frames_shared: bool = False,
        text_key_padding_mask: Tensor | None = None,
        cache_context: bool = False,
    ) -> VideoSession:
        """A tracking run over the clip of ``context`` (B rows, T frames): an empty memory bank and the options
        every frame is tracked with (see :class:`VideoSession`).

        Args:
            context: the clip context (:meth:`encode_context` / :meth:`context_from_tokens`), [B, T, ...].
            frames_shared: the B rows are one video's frames for B expressions: each frame's features are
                computed once and given for all B (``VideoSession.step`` takes one row and expands it).
            text_key_padding_mask: [B, L] bool, True = a word the decoder does not attend (expressions batched
                at a common length), or None.
            cache_context: compute what the decoder reads from the clip's global context once now, and replace
                ``context.global_context`` by it (``ProjectedGlobalContext``), so the raw context is freed
                (inference, eval mode; ignored in train mode, where dropout differs per frame).
        """
        if cache_context and not self.training and isinstance(context.global_context, Tensor):
            context.global_context = project_global_context(self.sam.sam_mask_decoder, context.global_context)
        return VideoSession(
            self,
            context,
            self.sam.new_state(num_frames=context.priors.shape[1]),
            frames_shared=frames_shared,
            text_key_padding_mask=text_key_padding_mask,
        )

    # ------------------------------------------------------------------ images
    def forward_images(
        self,
        sam_images: Tensor,
        beit_images: Tensor,
        text_ids: Tensor,
        text_padding_mask: Tensor | None = None,
    ) -> ImageOutput:
        """Single-image path (RefCOCO): sam_images [B, 3, S, S], beit_images [B, 3, Hb, Wb], text [B, L]."""
        context = self.encode_context(beit_images.unsqueeze(1), text_ids, text_padding_mask)
        feats = self.image_features(sam_images)
        prompts = context.frame_prompts(0, self.config.use_dense_prior, self.config.use_sparse_token)
        out = self.sam.forward_image_batch(feats, prompts)
        return ImageOutput(
            pred_masks=out.high_res_logits,
            sentence_scores=context.sentence_scores[:, 0],
            prior_logits=context.prior_logits[:, 0],
        )


class VideoSession:
    """One tracking run over a clip of B rows (clips, or one video for B expressions): the per-frame step and the
    per-frame loop of every video path (training's ``MPGSAM2.forward``, ``predict_video``, streaming).

    Streaming: call ``track(frame_idx, sam_frame)`` for frames 0, 1, 2, ... in order. Only the SAM 2 memory
    window and the pointer window are held between calls; the multimodal context of the whole clip was computed
    once (``MPGSAM2.start_video`` / ``start_tracking``).

    Args:
        model: the model. context: the clip context [B, T, ...]. state: an empty memory bank of T frames.
        frames_shared: the B rows share each frame (one video, B expressions): :meth:`step` takes that frame's
            features once (batch 1) and gives them to the B rows, marked shared (eval mode) so that what reads
            only the frame runs once.
        text_key_padding_mask: [B, L] decoder word mask, or None (see :class:`FramePrompts`).
    """

    def __init__(
        self,
        model: MPGSAM2,
        context: ClipContext,
        state: TrackingState,
        *,
        frames_shared: bool = False,
        text_key_padding_mask: Tensor | None = None,
    ) -> None:
        self.model = model
        self.context = context
        self.state = state
        self.frames_shared = frames_shared
        self.text_key_padding_mask = text_key_padding_mask

    @property
    def num_frames(self) -> int:
        return self.state.num_frames

    @property
    def batch(self) -> int:
        """B: the rows tracked together."""
        return self.context.priors.shape[0]

    def step(self, frame_idx: int, feats: FrameFeatures) -> FrameOutput:
        """Track frame ``frame_idx`` of the B rows from its SAM 2 features (B rows, or one row when
        ``frames_shared``) -> its output (``high_res_logits`` [B, 1, S, S])."""
        if not 0 <= frame_idx < self.num_frames:
            raise IndexError(f"frame {frame_idx} outside the video's {self.num_frames} frames")
        if self.frames_shared:
            # one frame for the B rows; shared (computed once) only in eval mode: dropout differs per row
            feats = feats.expand(self.batch, shared=not self.model.training)
        cfg = self.model.config
        prompts = self.context.frame_prompts(
            frame_idx,
            cfg.use_dense_prior,
            cfg.use_sparse_token,
            text_key_padding_mask=self.text_key_padding_mask,
        )
        return self.model.sam.track_step(self.state, frame_idx, feats, prompts)

    def track(self, frame_idx: int, sam_frame: Tensor) -> FrameOutput:
        """sam_frame: [3, S, S] -> this frame's output (``high_res_logits`` [B, 1, S, S]); B = 1, or the B rows
        of a ``frames_shared`` run."""
        if self.batch > 1 and not self.frames_shared:
            raise ValueError(f"track takes one frame; this run tracks {self.batch} clips: use step()")
        return self.step(frame_idx, self.model.image_features(sam_frame.unsqueeze(0)))

    def propagate(self, frame_features: Callable[[int], FrameFeatures]) -> Iterator[FrameOutput]:
        """The per-frame tracking loop: frames 0 .. T - 1 in order, each from ``frame_features(t)`` (the
        features :meth:`step` takes), yielded as they are tracked (so a caller can stream the outputs)."""
        for frame_idx in range(self.num_frames):
            yield self.step(frame_idx, frame_features(frame_idx))
