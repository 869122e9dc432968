"""The post-norm cross-attention block of MPG-SAM 2's hierarchical global-historical aggregator (spec §1.5).

Original: ``VisionLanguageFusionModule`` in ``models/sam2/modeling/sam/mask_decoder.py`` of the MPG-SAM 2 fork;
the mask decoder holds three of them (see :mod:`mpgsam2.modeling.sam2.mask_decoder`).
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class CrossAttentionFusionBlock(nn.Module):
    """Post-norm cross-attention + FFN block of the MPG aggregator (original: ``VisionLanguageFusionModule``).

    ``tgt = norm1(tgt + attn(tgt + query_pos, memory + pos, memory)); tgt = norm2(tgt + ffn(tgt))``.

    Args:
        d_model: width C of queries and memory.
        num_heads: attention heads.
        dim_feedforward: FFN hidden width.
        dropout: dropout of the attention weights, the FFN hidden layer and both residual branches.
    """

    def __init__(
        self, d_model: int, num_heads: int, dim_feedforward: int = 1024, dropout: float = 0.1
    ) -> None:
        super().__init__()
        # parity: nn.MultiheadAttention (sequence-first, weights returned) as the original, for identical numerics.
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU()

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor | None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """tgt: [Nq, B, C]; memory: [Nk, B, C]; pos: [Nk, B, C] on keys; query_pos: [Nq, B or 1, C] -> [Nq, B, C].

        key_padding_mask: [B, Nk] bool, True = memory token not attended (None: all attended, as the original).
        memory_kv: the memory's key and value projections [Nk, B, C] (:meth:`project_memory`), computed once for
            a memory that many calls read (inference only); ``memory`` and ``pos`` are then ignored.
        """
        # The unmodified tensor is passed on (not a copy) when there is no position, so that key and value are
        # the same object and nn.MultiheadAttention takes the same packed-projection path as in the original.
        query = tgt if query_pos is None else tgt + query_pos
        if memory_kv is not None:
            attended = self._attend_projected(query, *memory_kv, key_padding_mask)
        else:
            key = memory if pos is None else memory + pos
            attended = self.multihead_attn(
                query=query, key=key, value=memory, key_padding_mask=key_padding_mask
            )[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm2(tgt + self.dropout2(ffn))

    def _in_proj(self, index: int) -> tuple[Tensor, Tensor | None]:
        attn = self.multihead_attn
        c = attn.embed_dim
        bias = None if attn.in_proj_bias is None else attn.in_proj_bias[index * c : (index + 1) * c]
        return attn.in_proj_weight[index * c : (index + 1) * c], bias

    def project_memory(self, memory: Tensor, pos: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Key and value projections of a memory [Nk, B, C] (keys with ``pos`` added) -> ([Nk, B, C], [Nk, B, C]).

        Row-wise, so the projections of a concatenated memory are the concatenated projections."""
        key = memory if pos is None else memory + pos
        return F.linear(key, *self._in_proj(1)), F.linear(memory, *self._in_proj(2))

    def _attend_projected(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None
    ) -> Tensor:
        """nn.MultiheadAttention's computation from already projected keys / values (no attention dropout)."""
        # deviation: SDPA on cached projections instead of nn.MultiheadAttention (the parity path), so the clip
        # context is projected once per clip; the same attention up to float rounding (inference only).
        if self.training and self.multihead_attn.dropout > 0:
            raise RuntimeError("projected memories are for inference (no attention dropout)")
        heads = self.multihead_attn.num_heads
        q = F.linear(query, *self._in_proj(0))
        q, k, v = (
            rearrange(x, "n b (h d) -> b h n d", h=heads) for x in (q, key.to(q.dtype), value.to(q.dtype))
        )
        mask = None if key_padding_mask is None else ~key_padding_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = rearrange(out, "b h n d -> n b (h d)")
        return self.multihead_attn.out_proj(out)
