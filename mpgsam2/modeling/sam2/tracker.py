"""SAM 2 as MPG-SAM 2 drives it: image features, memory-conditioned features, prompted heads and the memory bank.

This replaces the original's ``SAM2Base`` + ``SAM2VideoPredictor`` pair with one module and an explicit
``TrackingState``. The video predictor's bookkeeping (per-object dicts, temporary outputs, consolidation,
"preflight") reduces, for MPG-SAM 2's use, to: frame 0 of a clip is the single conditioning frame, every other
frame is tracked forward in order, each frame is prompted by its own mask prior, sparse token and text features.
The state keeps only what later frames can read (the conditioning memory, the last ``num_maskmem - 1`` memories
and the last ``max_obj_ptrs_in_encoder - 1`` object pointers), so memory stays flat over long videos.

Here: the module, its settings (SAM 2's config keys) and ``build_sam2_tracker``. The state and which frames a
frame reads are in :mod:`~mpgsam2.modeling.sam2.memory_bank`; the per-frame inputs and outputs in
:mod:`~mpgsam2.modeling.sam2.tracker_types` (both importable from here too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from mpgsam2.modeling.sam2.common import MLP
from mpgsam2.modeling.sam2.image_encoder import build_image_encoder
from mpgsam2.modeling.sam2.mask_decoder import MaskDecoder
from mpgsam2.modeling.sam2.memory_attention import build_memory_attention
from mpgsam2.modeling.sam2.memory_bank import MemoryWindow, TrackingState
from mpgsam2.modeling.sam2.memory_encoder import build_memory_encoder
from mpgsam2.modeling.sam2.position_encoding import get_1d_sine_pe
from mpgsam2.modeling.sam2.prompt_encoder import PromptEncoder
from mpgsam2.modeling.sam2.tracker_types import (
    ChosenMask,
    FrameFeatures,
    FrameOutput,
    FramePrompts,
    HeadOutput,
    ImageBatchOutput,
)
from mpgsam2.modeling.sam2.two_way_transformer import TwoWayTransformer

# Logit written where the object-score head says the object is absent.
NO_OBJ_SCORE = -1024.0


@dataclass(frozen=True)
class MemorySettings:
    """How frames are written to and read from the memory bank (field names are SAM 2's config keys).

    num_maskmem: memories attended (the conditioning frame + ``num_maskmem - 1`` previous ones).
    sigmoid_scale_for_mem_enc / sigmoid_bias_for_mem_enc: affine map of the mask probabilities before encoding.
    directly_add_no_mem_embed: a frame without memory gets ``no_mem_embed`` added instead of memory attention.
    memory_temporal_stride_for_eval: stride between the older memories read at inference.
    no_obj_embed_spatial: (SAM 2.1) a learned embedding marks the memories of frames where the object is absent.
    memory_storage_dtype: dtype memories are stored in between frames (None: as computed).
    """

    num_maskmem: int = 7
    sigmoid_scale_for_mem_enc: float = 1.0
    sigmoid_bias_for_mem_enc: float = 0.0
    directly_add_no_mem_embed: bool = False
    memory_temporal_stride_for_eval: int = 1
    no_obj_embed_spatial: bool = False
    memory_storage_dtype: torch.dtype | None = torch.bfloat16


@dataclass(frozen=True)
class ObjectPointerSettings:
    """Object pointers: one token per frame summarising the object, read by later frames.

    use_obj_ptrs_in_encoder: pointers are made (projected output token) and attended with the memories.
    max_obj_ptrs_in_encoder: pointer window (also the normaliser of their temporal positions).
    add_tpos_enc_to_obj_ptrs / proj_tpos_enc_in_obj_ptrs / use_signed_tpos_enc_to_obj_ptrs: the pointers'
        temporal position (added at all / projected from the full width / signed offset, SAM 2.1).
    only_obj_ptrs_in_the_past_for_eval: at inference, no pointer of a conditioning frame after the current one.
    use_mlp_for_obj_ptr_proj: a 3-layer MLP instead of a linear projection of the token.
    use_multimask_token_for_obj_ptr: with multimask output, the pointer comes from the chosen mask's token.
    fixed_no_obj_ptr / soft_no_obj_ptr: where the object is judged absent, the pointer is replaced by
        ``no_obj_ptr`` (fixed) / weighted by the object probability instead of a hard 0-1 gate (soft).
    """

    use_obj_ptrs_in_encoder: bool = False
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = False
    use_signed_tpos_enc_to_obj_ptrs: bool = False
    only_obj_ptrs_in_the_past_for_eval: bool = False
    use_mlp_for_obj_ptr_proj: bool = False
    use_multimask_token_for_obj_ptr: bool = False
    fixed_no_obj_ptr: bool = False
    soft_no_obj_ptr: bool = False

    def __post_init__(self) -> None:
        if self.proj_tpos_enc_in_obj_ptrs and not self.add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs")


@dataclass(frozen=True)
class MaskHeadSettings:
    """The mask decoder's heads and how one mask is chosen from them.

    use_high_res_features_in_sam: the decoder upsamples with the stride-4 / stride-8 backbone levels.
    multimask_output_in_sam / multimask_output_for_tracking / multimask_min_pt_num / multimask_max_pt_num: when
        the decoder outputs 3 masks (the IoU head picks one): on the conditioning frame / also on tracked frames,
        if the number of clicks (always 0 here) is within [min, max].
    iou_prediction_use_sigmoid: sigmoid on the IoU head's output.
    pred_obj_scores / pred_obj_scores_mlp: an object-score head (an MLP rather than a linear layer) that gates
        the masks and the pointers.
    """

    use_high_res_features_in_sam: bool = False
    multimask_output_in_sam: bool = False
    multimask_min_pt_num: int = 1
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = False
    iou_prediction_use_sigmoid: bool = False
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False


class SAM2Tracker(nn.Module):
    """SAM 2 (2.0 or 2.1 semantics) with MPG-SAM 2's prompted mask decoder.

    Sub-module and parameter names equal SAM 2's, so official checkpoints load under the ``sam.`` prefix.
    The settings' field names are the official config keys; see ``build_sam2_tracker`` for building from such a
    config. image_size: SAM input side S; backbone_stride: S / E (E the side of the stride-16 feature map).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        *,
        image_size: int = 1024,
        backbone_stride: int = 16,
        memory_settings: MemorySettings | None = None,
        pointer_settings: ObjectPointerSettings | None = None,
        head_settings: MaskHeadSettings | None = None,
        mask_decoder_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        mem = memory_settings or MemorySettings()
        ptr = pointer_settings or ObjectPointerSettings()
        heads = head_settings or MaskHeadSettings()
        if ptr.fixed_no_obj_ptr and not (heads.pred_obj_scores and ptr.use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")
        self.memory_settings = mem
        self.pointer_settings = ptr
        self.head_settings = heads
        self.image_encoder = image_encoder
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.hidden_dim = memory_attention.d_model
        out_proj = getattr(memory_encoder, "out_proj", None)
        self.mem_dim = out_proj.weight.shape[0] if isinstance(out_proj, nn.Conv2d) else self.hidden_dim
        self.image_size = image_size
        self.backbone_stride = backbone_stride

        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(mem.num_maskmem, 1, 1, self.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        if ptr.use_obj_ptrs_in_encoder:
            # only used to encode an input mask without SAM, which MPG-SAM 2 never does; kept for the key layout
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        if heads.pred_obj_scores and ptr.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
        self.no_obj_embed_spatial = (
            nn.Parameter(torch.zeros(1, self.mem_dim)) if mem.no_obj_embed_spatial else None
        )

        embed_size = image_size // backbone_stride
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.hidden_dim,
            image_embedding_size=(embed_size, embed_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        )
        # parity: the decoder sizes are constants in SAM 2's _build_sam_heads, not config keys.
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=self.hidden_dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=self.hidden_dim, mlp_dim=2048, num_heads=8),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=heads.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=heads.iou_prediction_use_sigmoid,
            pred_obj_scores=heads.pred_obj_scores,
            pred_obj_scores_mlp=heads.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=ptr.use_multimask_token_for_obj_ptr,
            **dict(mask_decoder_kwargs or {}),
        )
        if ptr.use_obj_ptrs_in_encoder:
            if ptr.use_mlp_for_obj_ptr_proj:
                self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
            else:
                self.obj_ptr_proj = nn.Linear(self.hidden_dim, self.hidden_dim)
        else:
            self.obj_ptr_proj = nn.Identity()
        if ptr.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)
        else:
            self.obj_ptr_tpos_proj = nn.Identity()
        self.reset_learned_embeddings()

    @torch.no_grad()
    def reset_learned_embeddings(self) -> None:
        """SAM 2's initialisation of the free embeddings (truncated normal, std 0.02)."""
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc):
            trunc_normal_(p, std=0.02)
        if hasattr(self, "no_obj_ptr"):
            trunc_normal_(self.no_obj_ptr, std=0.02)
        if self.no_obj_embed_spatial is not None:
            trunc_normal_(self.no_obj_embed_spatial, std=0.02)

    # ------------------------------------------------------------------ image features
    def forward_image(self, images: Tensor, encoder_no_grad: bool = False) -> FrameFeatures:
        """images: [N, 3, S, S] normalised frames -> their features (N frames in the batch dimension).

        encoder_no_grad: run the (frozen) image encoder without autograd; the decoder's conv_s0 / conv_s1,
        which the original trains, still get gradients.
        """
        if encoder_no_grad:
            with torch.no_grad():
                out = self.image_encoder(images)
        else:
            out = self.image_encoder(images)
        fpn, pos = list(out["backbone_fpn"]), list(out["vision_pos_enc"])
        high_res = None
        if self.head_settings.use_high_res_features_in_sam:
            high_res = [self.sam_mask_decoder.conv_s0(fpn[0]), self.sam_mask_decoder.conv_s1(fpn[1])]
        return FrameFeatures(top=fpn[-1], top_pos=pos[-1], high_res=high_res)

    # ------------------------------------------------------------------ memory
    def new_state(self, num_frames: int) -> TrackingState:
        """An empty memory bank for a clip of ``num_frames`` frames."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        return TrackingState(num_frames=num_frames)

    @property
    def memory_window(self) -> MemoryWindow:
        """Which earlier frames a frame reads, from the memory and pointer settings."""
        return MemoryWindow(
            num_maskmem=self.memory_settings.num_maskmem,
            stride=self.memory_settings.memory_temporal_stride_for_eval,
            max_obj_ptrs=self.pointer_settings.max_obj_ptrs_in_encoder,
        )

    def _past_pointers(self, state: TrackingState, frame_idx: int, signed: bool) -> list[tuple[int, Tensor]]:
        """(temporal offset, pointer [B, C]) of the conditioning frame, then of frames t-1, t-2, ... ."""
        out: list[tuple[int, Tensor]] = []
        cond = state.cond_frame_idx
        use_cond = cond is not None and (
            self.training or not self.pointer_settings.only_obj_ptrs_in_the_past_for_eval or cond <= frame_idx
        )
        if use_cond:
            out.append(((frame_idx - cond) if signed else abs(frame_idx - cond), state.cond_obj_ptr))
        for offset, t in self.memory_window.pointer_frames(frame_idx, state.num_frames):
            ptr = state.obj_ptrs.get(t)
            if ptr is not None:
                out.append((offset, ptr))
        return out

    def _memory_frames(self, state: TrackingState, frame_idx: int) -> list[tuple[int, Tensor]]:
        """(t_pos, stored memory) for the conditioning frame (t_pos 0) and the previous frames (1..num_maskmem-1)."""
        out: list[tuple[int, Tensor]] = [(0, state.cond_memory)]
        for t_pos, t in self.memory_window.memory_frames(frame_idx):
            mem = state.memories.get(t)
            if mem is not None:
                out.append((t_pos, mem))
        return out

    def _condition_on_memory(self, state: TrackingState, frame_idx: int, feats: FrameFeatures) -> Tensor:
        """The top-level feature of this frame conditioned on the memory bank -> [B, C, E, E]."""
        top = feats.top
        b, c, h, w = top.shape
        if state.cond_frame_idx is None:  # the initial conditioning frame sees no memory
            if self.memory_settings.directly_add_no_mem_embed:
                return top + self.no_mem_embed.view(1, c, 1, 1)
            memory = self.no_mem_embed.expand(1, b, self.mem_dim)
            memory_pos = self.no_mem_pos_enc.expand(1, b, self.mem_dim)
            num_ptr_tokens = 0
        else:
            mems, mem_pos = [], []
            pos_enc = state.maskmem_pos_enc.flatten(2).permute(2, 0, 1)
            for t_pos, mem in self._memory_frames(state, frame_idx):
                # parity: memories are stored in bfloat16 and read back at the feature dtype.
                mems.append(mem.to(top.dtype).flatten(2).permute(2, 0, 1))
                mem_pos.append(pos_enc + self.maskmem_tpos_enc[self.memory_settings.num_maskmem - t_pos - 1])
            num_ptr_tokens = 0
            if self.pointer_settings.use_obj_ptrs_in_encoder:
                pointers = self._past_pointers(
                    state, frame_idx, signed=self.pointer_settings.use_signed_tpos_enc_to_obj_ptrs
                )
                if pointers:
                    offsets, ptrs = zip(*pointers)
                    obj_ptrs = torch.stack(ptrs, dim=0)  # [K, B, C]
                    if self.pointer_settings.add_tpos_enc_to_obj_ptrs:
                        t_diff_max = self.memory_window.pointer_window(state.num_frames) - 1
                        tpos_dim = c if self.pointer_settings.proj_tpos_enc_in_obj_ptrs else self.mem_dim
                        rel = torch.tensor(offsets, device=top.device, dtype=torch.float32) / t_diff_max
                        obj_pos = self.obj_ptr_tpos_proj(get_1d_sine_pe(rel, dim=tpos_dim))
                        obj_pos = obj_pos.unsqueeze(1).expand(-1, b, self.mem_dim)
                    else:
                        obj_pos = obj_ptrs.new_zeros(len(offsets), b, self.mem_dim)
                    if self.mem_dim < c:  # each pointer becomes C / mem_dim memory tokens
                        split = c // self.mem_dim
                        obj_ptrs = (
                            obj_ptrs.reshape(-1, b, split, self.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
                        )
                        obj_pos = obj_pos.repeat_interleave(split, dim=0)
                    mems.append(obj_ptrs)
                    mem_pos.append(obj_pos)
                    num_ptr_tokens = obj_ptrs.shape[0]
            memory = torch.cat(mems, dim=0)
            memory_pos = torch.cat(mem_pos, dim=0)
        curr = top.flatten(2).permute(2, 0, 1)
        curr_pos = feats.top_pos.flatten(2).permute(2, 0, 1)
        fused = self.memory_attention(
            curr=curr,
            memory=memory,
            curr_pos=curr_pos,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_ptr_tokens,
            shared_frame=feats.shared,
        )
        return fused.permute(1, 2, 0).reshape(b, c, h, w)

    def _object_history(
        self, state: TrackingState, frame_idx: int, batch: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """MPG-SAM 2's object-level historical context: past pointers [K, B, C] and their sine positions."""
        if state.cond_frame_idx is None or not self.pointer_settings.use_obj_ptrs_in_encoder:
            return None, None
        # parity: MPG-SAM 2 uses |t - t'| here whatever the SAM 2 version, normalised by the pointer window.
        pointers = self._past_pointers(state, frame_idx, signed=False)
        if not pointers:
            return None, None
        offsets, ptrs = zip(*pointers)
        obj_memory = torch.stack(ptrs, dim=0)
        t_diff_max = self.memory_window.pointer_window(state.num_frames) - 1
        rel = torch.tensor(offsets, device=obj_memory.device, dtype=torch.float32) / t_diff_max
        obj_pos = get_1d_sine_pe(rel, dim=self.hidden_dim).unsqueeze(1).expand(-1, batch, self.hidden_dim)
        return obj_memory, obj_pos

    def encode_memory(
        self, feats: FrameFeatures, high_res_logits: Tensor, object_score_logits: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Memory of a frame from its raw top-level feature and its logits [B, 1, S, S] (``feats.shared``: one
        frame for the B masks, projected once).

        Returns the memory features [B, Cm, E, E] and their position encoding [B, Cm, E, E].
        """
        mask_for_mem = torch.sigmoid(high_res_logits)
        if self.memory_settings.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * self.memory_settings.sigmoid_scale_for_mem_enc
        if self.memory_settings.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + self.memory_settings.sigmoid_bias_for_mem_enc
        out = self.memory_encoder(feats.top, mask_for_mem, skip_mask_sigmoid=True, shared_frame=feats.shared)
        features = out["vision_features"]
        if self.no_obj_embed_spatial is not None:  # SAM 2.1: mark frames where the object is absent
            absent = 1.0 - (object_score_logits > 0).to(features.dtype)
            features = features + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return features, out["vision_pos_enc"][-1]

    # ------------------------------------------------------------------ heads
    def forward_heads(
        self,
        pix_feat: Tensor,
        high_res: list[Tensor] | None,
        prompts: FramePrompts,
        *,
        video_point_padding: bool,
        multimask_output: bool,
        obj_memory: Tensor | None = None,
        obj_memory_pos: Tensor | None = None,
    ) -> HeadOutput:
        """Prompt encoder + MPG mask decoder + mask selection and object-score gating.

        video_point_padding: the video path always hands the prompt encoder one padding point (label -1),
        the image path none (parity: the two stages see different sparse layouts, spec §8).
        """
        b = pix_feat.shape[0]
        device = pix_feat.device
        points = None
        if video_point_padding:
            points = (
                torch.zeros(b, 1, 2, device=device),
                -torch.ones(b, 1, dtype=torch.int32, device=device),
            )
        mask_prompt = prompts.mask_prior
        if mask_prompt is not None and mask_prompt.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
            mask_prompt = F.interpolate(
                mask_prompt.float(),
                size=self.sam_prompt_encoder.mask_input_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        sparse, dense = self.sam_prompt_encoder(
            points=points, boxes=None, masks=mask_prompt, text_embeds=prompts.sparse_token
        )
        masks, ious, tokens, obj_scores = self.sam_mask_decoder(
            image_embeddings=pix_feat,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=high_res,
            text_feat=prompts.text_feat,
            global_context=prompts.global_context,
            obj_memory=obj_memory,
            obj_memory_pos=obj_memory_pos,
            text_key_padding_mask=prompts.text_key_padding_mask,
        )
        return HeadOutput(
            multimask_logits=masks, iou_pred=ious, sam_tokens=tokens, object_score_logits=obj_scores
        )

    def _select_and_gate(self, heads: HeadOutput, multimask_output: bool) -> ChosenMask:
        masks, ious, tokens, obj_scores = (
            heads.multimask_logits,
            heads.iou_pred,
            heads.sam_tokens,
            heads.object_score_logits,
        )
        b = masks.shape[0]
        if self.head_settings.pred_obj_scores:
            # parity: the (unsupervised) object-score head hard-gates the masks.
            present = obj_scores > 0
            masks = torch.where(present[:, None, None], masks, NO_OBJ_SCORE)
        masks = masks.float()
        token = tokens[:, 0]
        if multimask_output:
            # parity: the (unsupervised) IoU head picks one of the multimask outputs on every frame.
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=masks.device)
            low_res = masks[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        else:
            low_res = masks
        high_res = F.interpolate(
            low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        obj_ptr = self.obj_ptr_proj(token)
        if self.head_settings.pred_obj_scores:
            weight = (
                torch.sigmoid(obj_scores)
                if self.pointer_settings.soft_no_obj_ptr
                else (obj_scores > 0).float()
            )
            if self.pointer_settings.fixed_no_obj_ptr:
                obj_ptr = weight * obj_ptr
            obj_ptr = obj_ptr + (1 - weight) * self.no_obj_ptr
        return ChosenMask(low_res_logits=low_res, high_res_logits=high_res, obj_ptr=obj_ptr)

    def _use_multimask(self, is_init_cond_frame: bool) -> bool:
        num_pts = 0  # MPG-SAM 2 never clicks
        return (
            self.head_settings.multimask_output_in_sam
            and (is_init_cond_frame or self.head_settings.multimask_output_for_tracking)
            and (
                self.head_settings.multimask_min_pt_num <= num_pts <= self.head_settings.multimask_max_pt_num
            )
        )

    # ------------------------------------------------------------------ tracking
    def track_step(
        self, state: TrackingState, frame_idx: int, feats: FrameFeatures, prompts: FramePrompts
    ) -> FrameOutput:
        """Segment frame ``frame_idx`` of B clips and add it to the memory bank.

        The first frame given to a fresh state becomes the conditioning frame (no memory); later frames must
        come in increasing order. ``feats.shared`` (one frame for the B clips, :meth:`FrameFeatures.expand`)
        runs what reads only the frame once (eval mode).
        """
        is_init = state.cond_frame_idx is None
        if not is_init and frame_idx <= max([state.cond_frame_idx, *state.memories, *state.obj_ptrs]):
            raise ValueError(
                f"frames must be tracked forward in order; got frame {frame_idx} after later ones"
            )
        pix_feat = self._condition_on_memory(state, frame_idx, feats)
        obj_memory, obj_memory_pos = self._object_history(state, frame_idx, pix_feat.shape[0])
        multimask = self._use_multimask(is_init)
        heads = self.forward_heads(
            pix_feat,
            feats.high_res,
            prompts,
            video_point_padding=True,
            multimask_output=multimask,
            obj_memory=obj_memory,
            obj_memory_pos=obj_memory_pos,
        )
        chosen = self._select_and_gate(heads, multimask)
        maskmem = None
        if self.memory_settings.num_maskmem > 0:
            maskmem, maskmem_pos = self.encode_memory(
                feats, chosen.high_res_logits, heads.object_score_logits
            )
            stored = (
                maskmem
                if self.memory_settings.memory_storage_dtype is None
                else maskmem.to(self.memory_settings.memory_storage_dtype)
            )
            if state.maskmem_pos_enc is None:
                # the memory position encoding is the same for every frame: keep one copy
                state.maskmem_pos_enc = maskmem_pos
            if is_init:
                state.cond_memory = stored
            else:
                state.memories[frame_idx] = stored
        if is_init:
            state.cond_frame_idx = frame_idx
            state.cond_obj_ptr = chosen.obj_ptr
        else:
            state.obj_ptrs[frame_idx] = chosen.obj_ptr
        self.memory_window.prune(state, frame_idx)
        return FrameOutput(
            frame_idx=frame_idx,
            low_res_logits=chosen.low_res_logits,
            high_res_logits=chosen.high_res_logits,
            multimask_logits=heads.multimask_logits,
            iou_pred=heads.iou_pred,
            sam_tokens=heads.sam_tokens,
            object_score_logits=heads.object_score_logits,
            obj_ptr=chosen.obj_ptr,
            pix_feat_with_mem=pix_feat,
            maskmem_features=maskmem,
            obj_memory=obj_memory,
            obj_memory_pos=obj_memory_pos,
        )

    # ------------------------------------------------------------------ image path
    def forward_image_batch(self, feats: FrameFeatures, prompts: FramePrompts) -> ImageBatchOutput:
        """Single images (RefCOCO pre-training): no memory, single-mask output, no object-score gating."""
        c = feats.top.shape[1]
        pix_feat = feats.top
        if self.memory_settings.directly_add_no_mem_embed:
            pix_feat = pix_feat + self.no_mem_embed.view(1, c, 1, 1)
        heads = self.forward_heads(
            pix_feat, feats.high_res, prompts, video_point_padding=False, multimask_output=False
        )
        low_res = heads.multimask_logits.float()
        high_res = F.interpolate(
            low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        return ImageBatchOutput(low_res_logits=low_res, high_res_logits=high_res, iou_pred=heads.iou_pred)


# Config keys of the official SAM 2 YAML that do not change what this module computes for MPG-SAM 2.
_IGNORED_KEYS = {
    # parity: MPG-SAM 2 comments out the "use the input mask as output" branch; priors always go through SAM.
    "use_mask_input_as_output_without_sam",
    "compile_image_encoder",
    "binarize_mask_from_pts_for_mem_enc",  # only for click prompts
    "non_overlap_masks_for_mem_enc",  # only with several objects per state
    "add_all_frames_to_correct_as_cond",  # only for interactive corrections
    "max_cond_frames_in_attn",  # MPG-SAM 2 has a single conditioning frame
    "sam_mask_decoder_extra_args",
}


# The settings objects a SAM 2 config is split into; their field names are the config keys they accept.
_SETTINGS_TYPES = {
    "memory_settings": MemorySettings,
    "pointer_settings": ObjectPointerSettings,
    "head_settings": MaskHeadSettings,
}
# Config keys that are plain arguments of SAM2Tracker (the image geometry).
_GEOMETRY_KEYS = ("image_size", "backbone_stride")


def build_sam2_tracker(
    model_cfg: Mapping[str, Any], mask_decoder_kwargs: Mapping[str, Any] | None = None
) -> SAM2Tracker:
    """Build from a SAM 2 ``model`` config dict (see ``presets.sam2_model_config`` / ``apply_overrides``).

    The flat config keys are split into the settings objects by field name. Unknown top-level keys are an
    error, so a typo in a config does not pass silently.
    """
    cfg = {k: v for k, v in model_cfg.items() if k != "_target_"}
    image_encoder = build_image_encoder(cfg.pop("image_encoder"))
    memory_attention = build_memory_attention(cfg.pop("memory_attention"))
    memory_encoder = build_memory_encoder(cfg.pop("memory_encoder"))
    for key in _IGNORED_KEYS:
        cfg.pop(key, None)
    field_names = {arg: {f.name for f in fields(cls)} for arg, cls in _SETTINGS_TYPES.items()}
    unknown = sorted(set(cfg) - set(_GEOMETRY_KEYS).union(*field_names.values()))
    if unknown:
        raise ValueError(f"unknown SAM 2 config keys: {', '.join(unknown)}")
    settings = {
        arg: cls(**{k: v for k, v in cfg.items() if k in field_names[arg]})
        for arg, cls in _SETTINGS_TYPES.items()
    }
    geometry = {k: cfg[k] for k in _GEOMETRY_KEYS if k in cfg}
    return SAM2Tracker(
        image_encoder,
        memory_attention,
        memory_encoder,
        **geometry,
        **settings,
        mask_decoder_kwargs=mask_decoder_kwargs,
    )
