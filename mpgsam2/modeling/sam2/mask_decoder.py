"""SAM 2 mask decoder with MPG-SAM 2's hierarchical global-historical aggregator (spec §1.5, step 3).

Original: ``MaskDecoder`` in ``models/sam2/modeling/sam/mask_decoder.py`` of the MPG-SAM 2 fork. Three post-norm
cross-attention blocks (:class:`~mpgsam2.modeling.sam2.fusion_block.CrossAttentionFusionBlock`) are added to SAM 2's
decoder:

- ``pixel_global_fusion`` (original: ``vtlfusion_module``): the image embedding cross-attends to the global visual
  context of all frames (re-patchified ``p x p`` and projected by ``context_patch_proj``, original:
  ``patch_linear``) followed by the word features.
- ``object_global_fusion`` (original: ``mmfusion_module``): the mask tokens cross-attend to the global context.
- ``object_historical_fusion`` (original: ``objfusion_module``): the mask tokens cross-attend to the object
  pointers of earlier frames (temporal sine position on the keys).

Each block runs when it exists (its ``use_*`` switch) and its inputs are given: the global context (raw, or
projected once per clip by :func:`~mpgsam2.modeling.sam2.global_context.project_global_context`) and
``obj_memory``; without them the decoder is the stock SAM 2 decoder.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from mpgsam2.modeling.checkpointing import run_block
from mpgsam2.modeling.sam2.common import MLP, LayerNorm2d
from mpgsam2.modeling.sam2.fusion_block import CrossAttentionFusionBlock
from mpgsam2.modeling.sam2.global_context import GlobalContext, ProjectedGlobalContext


class MaskDecoder(nn.Module):
    """SAM 2 mask decoder plus the MPG-SAM 2 fusion blocks.

    Args:
        transformer_dim: width C.
        transformer: the two-way transformer (``TwoWayTransformer``).
        num_multimask_outputs: multimask outputs M (one more mask token is used for the single-mask output).
        activation: activation class of the upscaling stack.
        iou_head_depth: layers of the IoU MLP.
        iou_head_hidden_dim: hidden width of the IoU MLP.
        use_high_res_features: add the stride-4 / stride-8 features in the upscaling (and create conv_s0/conv_s1,
            which the caller applies to the backbone's FPN levels beforehand).
        iou_prediction_use_sigmoid: sigmoid on the IoU predictions.
        dynamic_multimask_via_stability: in eval single-mask mode, fall back to the best multimask output when the
            single mask is unstable.
        dynamic_multimask_stability_delta: logit margin of the stability score.
        dynamic_multimask_stability_thresh: stability threshold.
        pred_obj_scores: predict an object score from an extra token.
        pred_obj_scores_mlp: 3-layer MLP (instead of a linear layer) as object-score head.
        use_multimask_token_for_obj_ptr: in multimask mode, return the multimask tokens (else the single-mask one).
        fusion_ffn_dim: FFN width of the fusion blocks.
        fusion_num_heads: heads of the fusion blocks.
        fusion_dropout: dropout of the fusion blocks.
        context_patch_size: p of the p x p re-patchification of the global context before pixel fusion.
        use_pixel_global_fusion: create and run ``pixel_global_fusion`` (and ``context_patch_proj``).
        use_object_global_fusion: create and run ``object_global_fusion``.
        use_object_historical_fusion: create and run ``object_historical_fusion``.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
        fusion_ffn_dim: int = 1024,
        fusion_num_heads: int = 8,
        fusion_dropout: float = 0.1,
        context_patch_size: int = 2,
        use_pixel_global_fusion: bool = True,
        use_object_global_fusion: bool = True,
        use_object_historical_fusion: bool = True,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1, stride=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            if pred_obj_scores_mlp:
                self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)
            else:
                self.pred_obj_score_head = nn.Linear(transformer_dim, 1)

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

        def fusion_block() -> CrossAttentionFusionBlock:
            return CrossAttentionFusionBlock(
                transformer_dim, fusion_num_heads, fusion_ffn_dim, fusion_dropout
            )

        self.context_patch_size = context_patch_size
        self.use_pixel_global_fusion = use_pixel_global_fusion
        self.use_object_global_fusion = use_object_global_fusion
        self.use_object_historical_fusion = use_object_historical_fusion
        if use_pixel_global_fusion:
            self.pixel_global_fusion = fusion_block()
            # deviation: width from transformer_dim and grid from the token count (original: Linear(1024, 256)
            # and a hard-coded 14 x 14 grid, i.e. the same at full size).
            self.context_patch_proj = nn.Linear(transformer_dim * context_patch_size**2, transformer_dim)
        if use_object_global_fusion:
            self.object_global_fusion = fusion_block()
        if use_object_historical_fusion:
            self.object_historical_fusion = fusion_block()
        # the three fusion blocks recomputed in backward when training (activation_checkpointing
        # "decoder_fusion"); a projected global context is inference only and never recomputes
        self.checkpoint_fusion = False

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[Tensor] | None = None,
        text_feat: Tensor | None = None,
        global_context: GlobalContext | None = None,
        obj_memory: Tensor | None = None,
        obj_memory_pos: Tensor | None = None,
        text_key_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Predict masks from the image embedding and the prompts.

        Args:
            image_embeddings: [B, C, E, E] (memory-conditioned) image embedding.
            image_pe: [1, C, E, E] dense positional encoding (``PromptEncoder.get_dense_pe``).
            sparse_prompt_embeddings: [B, N, C] sparse prompt tokens.
            dense_prompt_embeddings: [B, C, E, E] dense prompt.
            multimask_output: return the M multimask outputs instead of the single mask.
            repeat_image: repeat the image embedding over the prompt batch.
            high_res_features: [feat_s0 [B, C/8, 4E, 4E], feat_s1 [B, C/4, 2E, 2E]], already through
                conv_s0 / conv_s1; required when ``use_high_res_features``.
            text_feat: [B, L, C] word features appended to the pixel-fusion memory (original: ``text_feat``).
            global_context: the clip's global context, memory of both global fusion blocks: the raw tensor
                [B, T, G*G, C] (original: ``visual_feat``, and flattened ``mask_pred``), or its
                :class:`~mpgsam2.modeling.sam2.global_context.ProjectedGlobalContext`, computed once per clip
                (inference). None skips both blocks.
            obj_memory: [K, B, C] object pointers of earlier frames; None (first frame) skips the historical fusion.
            obj_memory_pos: [K, B, C] their temporal positional encoding.
            text_key_padding_mask: [B, L] bool, True = word not attended by the pixel fusion; None attends every
                word (the original). Lets expressions padded to a common length run as one batch.

        Returns:
            masks: [B, M', 4E, 4E] mask logits (M' = M with ``multimask_output``, else 1).
            iou_pred: [B, M'] predicted IoUs.
            sam_tokens_out: [B, M'', C] output tokens for the object pointer (M'' = M with multimask output and
                ``use_multimask_token_for_obj_ptr``, else 1: the single-mask token).
            object_score_logits: [B, 1] (10.0 when object scores are not predicted).
        """
        # parity: the raw context is flattened before the pixel fusion reads it, where the original makes its
        # `mask_pred` (the same values): the same autograd graph, so training sums the context's gradients in the
        # same order (other orders differ in rounding, which 2,000 steps of the demo turn into 1e-3 of J&F)
        object_context = global_context
        if isinstance(global_context, Tensor):
            object_context = global_context.flatten(1, 2)
        elif isinstance(global_context, ProjectedGlobalContext):
            self._check_projection(global_context)
        if global_context is not None and self.use_pixel_global_fusion:
            image_embeddings = self._pixel_global_fusion(
                image_embeddings, image_pe, global_context, text_feat, text_key_padding_mask
            )

        masks, iou_pred, mask_tokens_out, object_score_logits = self._predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=repeat_image,
            high_res_features=high_res_features,
            object_context=object_context,
            obj_memory=obj_memory,
            obj_memory_pos=obj_memory_pos,
        )

        if multimask_output:
            masks = masks[:, 1:]
            iou_pred = iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks = masks[:, 0:1]
            iou_pred = iou_pred[:, 0:1]

        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            # SAM 2 otherwise always tracks with the single-mask token (the one trained as object memory).
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def _check_projection(self, projected: ProjectedGlobalContext) -> None:
        """A projection lacks nothing this decoder's fusion blocks read (it came from a decoder with the same
        blocks, see :func:`~mpgsam2.modeling.sam2.global_context.project_global_context`)."""
        missing = [
            name
            for name, used, value in (
                ("pixel_kv", self.use_pixel_global_fusion, projected.pixel_kv),
                ("object_tokens", self.use_object_global_fusion, projected.object_tokens),
            )
            if used and value is None
        ]
        if missing:
            raise ValueError(
                f"the projected global context has no {' / '.join(missing)}, which this decoder's global fusion "
                "reads: project the context with this decoder (project_global_context)"
            )

    def _pixel_global_fusion(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        global_context: GlobalContext,
        text_feat: Tensor | None,
        text_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Image embedding [B, C, E, E] cross-attends to [patchified global context ; words] -> [B, C, E, E].

        A projected global context gives the context's key / value projections; a raw one is patchified and
        projected here."""
        b, _, h, w = image_embeddings.shape
        dtype = image_embeddings.dtype
        words = None if text_feat is None else rearrange(text_feat.to(dtype), "b l c -> l b c")
        if isinstance(global_context, ProjectedGlobalContext):
            context_kv, memory = global_context.pixel_kv, None
            num_context = context_kv[0].shape[0]
        else:
            context_kv, memory = None, self.patchified_context(global_context.to(dtype))
            num_context = memory.shape[0]
        key_padding_mask = None
        if words is not None and text_key_padding_mask is not None:
            # deviation: words past an expression's length are not attended, so expressions padded to a common
            # length give their own results; the original never batches expressions (mask None = original).
            context_keys = text_key_padding_mask.new_zeros(b, num_context)
            key_padding_mask = torch.cat([context_keys, text_key_padding_mask.bool()], dim=1)
        tgt = rearrange(image_embeddings, "b c h w -> (h w) b c")
        query_pos = rearrange(image_pe, "b c h w -> (h w) b c")
        if context_kv is not None:
            keys, values = context_kv
            if words is not None:
                word_keys, word_values = self.pixel_global_fusion.project_memory(words)
                keys, values = torch.cat([keys, word_keys]), torch.cat([values, word_values])
            fused = self.pixel_global_fusion(
                tgt=tgt,
                memory=None,
                query_pos=query_pos,
                key_padding_mask=key_padding_mask,
                memory_kv=(keys, values),
            )
            return rearrange(fused, "(h w) b c -> b c h w", h=h, w=w)
        if words is not None:
            memory = torch.cat([memory, words], dim=0)
        fused = run_block(
            self.pixel_global_fusion,
            self.checkpoint_fusion,
            tgt=tgt,
            memory=memory,
            query_pos=query_pos,
            key_padding_mask=key_padding_mask,
        )
        return rearrange(fused, "(h w) b c -> b c h w", h=h, w=w)

    def patchified_context(self, global_context: Tensor) -> Tensor:
        """The raw global context [B, T, G*G, C] -> the pixel fusion's context memory [T*G*G/p^2, B, C]."""
        p = self.context_patch_size
        grid = math.isqrt(global_context.shape[2])
        if grid * grid != global_context.shape[2] or grid % p:
            raise ValueError(
                f"global_context needs a square token grid divisible by {p}, got {global_context.shape[2]} tokens"
            )
        # p x p neighbours are stacked channel-major (c, p_row, p_col), tokens ordered (t, row, col).
        patches = rearrange(
            global_context, "b t (h p1 w p2) c -> (t h w) b (c p1 p2)", h=grid // p, p1=p, p2=p
        )
        return self.context_patch_proj(patches)

    def _predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        repeat_image: bool,
        high_res_features: list[Tensor] | None,
        object_context: Tensor | ProjectedGlobalContext | None,
        obj_memory: Tensor | None,
        obj_memory_pos: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All mask-token outputs: masks [B, M+1, 4E, 4E], iou [B, M+1], tokens [B, M+1, C], score [B, 1].

        object_context: the global context as the object global fusion reads it: raw and flattened,
        [B, T*G*G, C], or projected; None skips the block."""
        s = 1 if self.pred_obj_scores else 0
        lead = (
            [self.obj_score_token.weight, self.iou_token.weight]
            if self.pred_obj_scores
            else [self.iou_token.weight]
        )
        bs = sparse_prompt_embeddings.size(0)
        lead_tokens = torch.cat(lead, dim=0).unsqueeze(0).expand(bs, -1, -1)
        mask_tokens = self.mask_tokens.weight.unsqueeze(0).expand(bs, -1, -1)

        # Object-level aggregation: the mask tokens (not the score / IoU tokens) attend to the global context,
        # then to the object pointers of earlier frames.
        run_global = self.use_object_global_fusion and object_context is not None
        run_historical = self.use_object_historical_fusion and obj_memory is not None
        if run_global or run_historical:
            mask_tokens = rearrange(mask_tokens, "b m c -> m b c")
            if run_global and isinstance(object_context, ProjectedGlobalContext):
                # the block's output, computed once per clip
                mask_tokens = object_context.object_tokens.to(mask_tokens.dtype)
            elif run_global:
                memory = rearrange(object_context.to(mask_tokens.dtype), "b n c -> n b c")
                mask_tokens = run_block(
                    self.object_global_fusion, self.checkpoint_fusion, tgt=mask_tokens, memory=memory
                )
            if run_historical:
                mask_tokens = run_block(
                    self.object_historical_fusion,
                    self.checkpoint_fusion,
                    tgt=mask_tokens,
                    memory=obj_memory,
                    pos=obj_memory_pos,
                )
            mask_tokens = rearrange(mask_tokens, "m b c -> b m c")

        tokens = torch.cat([lead_tokens, mask_tokens, sparse_prompt_embeddings], dim=1)

        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        else:
            assert image_embeddings.shape[0] == tokens.shape[0]
            src = image_embeddings
        src = src + dense_prompt_embeddings
        assert image_pe.size(0) == 1, "image_pe should have size 1 in batch dim (from `get_dense_pe()`)"
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).view(b, c, h, w)
        if not self.use_high_res_features:
            upscaled = self.output_upscaling(src)
        else:
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(ln1(dc1(src) + feat_s1))
            upscaled = act2(dc2(upscaled) + feat_s0)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:
            # No score head: the object is taken as present (sigmoid(10) ~ 1).
            object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _get_stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU between the masks thresholded at +delta and -delta: [B, K, H, W] -> [B, K]."""
        mask_logits = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        area_i = torch.sum(mask_logits > delta, dim=-1).float()
        area_u = torch.sum(mask_logits > -delta, dim=-1).float()
        return torch.where(area_u > 0, area_i / area_u, 1.0)

    def _dynamic_multimask_via_stability(
        self, all_mask_logits: Tensor, all_iou_scores: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Single mask [B, 1, H, W] / IoU [B, 1], replaced by the best multimask output where it is unstable."""
        multimask_logits = all_mask_logits[:, 1:]
        multimask_iou = all_iou_scores[:, 1:]
        best = torch.argmax(multimask_iou, dim=-1)
        batch = torch.arange(multimask_iou.size(0), device=all_iou_scores.device)
        best_logits = multimask_logits[batch, best].unsqueeze(1)
        best_iou = multimask_iou[batch, best].unsqueeze(1)

        single_logits = all_mask_logits[:, 0:1]
        single_iou = all_iou_scores[:, 0:1]
        is_stable = self._get_stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh
        mask_logits = torch.where(
            is_stable[..., None, None].expand_as(single_logits), single_logits, best_logits
        )
        iou = torch.where(is_stable.expand_as(single_iou), single_iou, best_iou)
        return mask_logits, iou
