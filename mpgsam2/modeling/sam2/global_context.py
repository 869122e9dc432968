"""The clip's global context as the mask decoder reads it: raw, or projected once per clip for inference.

The global context (spec §1.5: the mask-prior generator's mask features of every frame, with temporal position) is
the same for every frame of a clip. Two of the decoder's fusion blocks read it: the pixel global fusion (through
its key / value projections of the patchified context) and the object global fusion (whose queries are the learned
mask tokens alone, so in eval mode its output is the same on every frame). :func:`project_global_context`
computes what those blocks read once per clip; the decoder then takes the result in place of the raw tensor under
the same argument, ``global_context``. Training and the parity path give the raw tensor (dropout differs per frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from einops import rearrange
from torch import Tensor

if TYPE_CHECKING:
    from mpgsam2.modeling.sam2.mask_decoder import MaskDecoder


@dataclass
class ProjectedGlobalContext:
    """What the decoder's fusion blocks read from a clip's global context, computed once per clip (inference).

    Exact up to float rounding. The blocks run from it alone, so the raw context [B, T, G*G, C] need not be kept
    once it is built (it grows with T).

    pixel_kv: the pixel global fusion's key / value projections of the patchified context, [T*G*G/p^2, B, C]
        each, or None (no pixel global fusion).
    object_tokens: the mask tokens after the object global fusion, [M+1, B, C], or None (no object global fusion).
        Its [T*G*G, B, C] key / value projections are not kept.
    """

    pixel_kv: tuple[Tensor, Tensor] | None
    object_tokens: Tensor | None


# What the decoder's ``global_context`` argument (and ``FramePrompts`` / ``ClipContext.global_context``) holds:
# the raw context [B, T, G*G, C], or its per-clip projection.
GlobalContext = Tensor | ProjectedGlobalContext


def project_global_context(decoder: MaskDecoder, global_context: Tensor) -> ProjectedGlobalContext:
    """What every frame of a clip reads from its global context [B, T, G*G, C] (the decoder in eval mode)."""
    if decoder.training:
        raise RuntimeError("the projected global context is for inference (eval mode: no dropout)")
    pixel_kv = object_tokens = None
    # one clip (batch row) at a time: the clip-wide intermediates (patchified context, the object fusion's keys /
    # values) then exist for one clip at once; rows are independent
    clips = global_context.split(1)
    if decoder.use_pixel_global_fusion:
        for i, clip in enumerate(clips):
            keys, values = decoder.pixel_global_fusion.project_memory(decoder.patchified_context(clip))
            if pixel_kv is None:
                pixel_kv = tuple(x.new_empty((x.shape[0], len(clips), x.shape[2])) for x in (keys, values))
            pixel_kv[0][:, i], pixel_kv[1][:, i] = keys[:, 0], values[:, 0]
            del keys, values
    if decoder.use_object_global_fusion:
        tokens = decoder.mask_tokens.weight[:, None]  # [M+1, 1, C], as the decoder's queries
        block = decoder.object_global_fusion
        object_tokens = torch.cat(
            [
                block(
                    tgt=tokens,
                    memory=None,
                    memory_kv=block.project_memory(rearrange(clip, "b t n c -> (t n) b c")),
                )
                for clip in clips
            ],
            dim=1,
        )
    return ProjectedGlobalContext(pixel_kv=pixel_kv, object_tokens=object_tokens)
