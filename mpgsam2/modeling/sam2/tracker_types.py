"""The data a :class:`~mpgsam2.modeling.sam2.tracker.SAM2Tracker` takes and returns per frame.

Inputs: :class:`FrameFeatures` (the backbone's) and :class:`FramePrompts` (MPG-SAM 2's prompts). Outputs:
:class:`FrameOutput` (one tracking step), :class:`ImageBatchOutput` (the image path), and the intermediate
:class:`HeadOutput` (the prompted heads) and :class:`ChosenMask` (after mask selection and gating).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mpgsam2.modeling.sam2.global_context import GlobalContext


@dataclass
class FrameFeatures:
    """Backbone features of a batch of frames (one frame per batch entry).

    top: [B, C, E, E] stride-16 FPN level, before ``no_mem_embed`` or memory attention.
    top_pos: [B, C, E, E] its sine position encoding.
    high_res: [B, C/8, 4E, 4E] and [B, C/4, 2E, 2E] after the decoder's conv_s0 / conv_s1, or None.
    shared: every batch entry is the same frame (one video's frame for B targets, see :meth:`expand`): what
        reads only the frame (the memory attention's first self-attention, the memory encoder's projection of
        the frame) then runs once for all B (eval mode only). Set by whoever builds the features, never inferred.
    """

    top: Tensor
    top_pos: Tensor
    high_res: list[Tensor] | None
    shared: bool = False

    def expand(self, batch: int, shared: bool = True) -> FrameFeatures:
        """The features of one frame (batch 1) as the same frame for ``batch`` targets: views, no copies, marked
        ``shared`` (False: computed per target, as in train mode, where dropout differs per target)."""
        if self.top.shape[0] != 1:
            raise ValueError(f"expand takes the features of one frame, got a batch of {self.top.shape[0]}")
        return FrameFeatures(
            top=self.top.expand(batch, -1, -1, -1),
            top_pos=self.top_pos.expand(batch, -1, -1, -1),
            high_res=None if self.high_res is None else [x.expand(batch, -1, -1, -1) for x in self.high_res],
            shared=shared,
        )

    def select(self, index: Tensor | slice | int) -> FrameFeatures:
        """The features of some batch entries (``index`` into dim 0)."""
        pick = (lambda x: x[index : index + 1]) if isinstance(index, int) else (lambda x: x[index])
        return FrameFeatures(
            top=pick(self.top),
            top_pos=pick(self.top_pos),
            high_res=None if self.high_res is None else [pick(x) for x in self.high_res],
            shared=self.shared,
        )


@dataclass
class FramePrompts:
    """What MPG-SAM 2 gives SAM 2 for one frame (batch B of clips).

    mask_prior: [B, 1, G, G] prior probabilities (dense prompt), or None.
    sparse_token: [B, 1, C] multimodal class token (sparse prompt), or None.
    text_feat: [B, L, C] word features of the expression for this frame.
    global_context: the clip's global context (mask features of every frame, with temporal position): the raw
        [B, T, G*G, C], or its ``ProjectedGlobalContext`` (computed once per clip, inference), or None: no global
        fusion.
    text_key_padding_mask: [B, L] bool, True = word the decoder does not attend (expressions batched at a common
        length), or None (every word attended, the original).
    """

    mask_prior: Tensor | None
    sparse_token: Tensor | None
    text_feat: Tensor | None
    global_context: GlobalContext | None
    text_key_padding_mask: Tensor | None = None


@dataclass
class FrameOutput:
    """Everything one tracking step computes (B clips).

    low_res_logits: [B, 1, 4E, 4E] chosen mask logits (``tracker.NO_OBJ_SCORE`` where the object is judged
        absent).
    high_res_logits: [B, 1, S, S] the same upsampled to the SAM input size.
    multimask_logits: [B, M, 4E, 4E] raw decoder masks; iou_pred: [B, M]; sam_tokens: [B, M', C].
    object_score_logits: [B, 1]; obj_ptr: [B, C].
    pix_feat_with_mem: [B, C, E, E] memory-conditioned image embedding fed to the decoder.
    maskmem_features: [B, Cm, E, E] this frame's new memory before the storage cast, or None.
    obj_memory / obj_memory_pos: [K, B, C] object pointers of earlier frames given to the decoder, or None.
    """

    frame_idx: int
    low_res_logits: Tensor
    high_res_logits: Tensor
    multimask_logits: Tensor
    iou_pred: Tensor
    sam_tokens: Tensor
    object_score_logits: Tensor
    obj_ptr: Tensor
    pix_feat_with_mem: Tensor
    maskmem_features: Tensor | None = None
    obj_memory: Tensor | None = None
    obj_memory_pos: Tensor | None = None


@dataclass
class HeadOutput:
    """The prompted heads' raw results for B frames (M = 3 with multimask output, else 1).

    multimask_logits: [B, M, 4E, 4E] decoder mask logits; iou_pred: [B, M]; sam_tokens: [B, M', C] output tokens
    (M' = M, or 1 when the pointer comes from the single-mask token); object_score_logits: [B, 1].
    """

    multimask_logits: Tensor
    iou_pred: Tensor
    sam_tokens: Tensor
    object_score_logits: Tensor


@dataclass
class ChosenMask:
    """One mask per frame after selection and object-score gating (B frames).

    low_res_logits: [B, 1, 4E, 4E]; high_res_logits: [B, 1, S, S]; obj_ptr: [B, C].
    """

    low_res_logits: Tensor
    high_res_logits: Tensor
    obj_ptr: Tensor


@dataclass
class ImageBatchOutput:
    """The image path's results for B single images (no memory, single-mask output).

    low_res_logits: [B, 1, 4E, 4E]; high_res_logits: [B, 1, S, S]; iou_pred: [B, 1].
    """

    low_res_logits: Tensor
    high_res_logits: Tensor
    iou_pred: Tensor
