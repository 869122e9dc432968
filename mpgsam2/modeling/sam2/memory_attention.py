"""SAM 2 memory attention: conditions the current frame's features on the memory bank.

Each layer is pre-norm self-attention over the current frame's tokens, pre-norm cross-attention into the
memory (spatial memories of earlier frames followed by object-pointer tokens) and a pre-norm MLP. Parameter
names (``layers.<i>.self_attn.*``, ``cross_attn_image.*``, ``linear1``, ``linear2``, ``norm1..3``, ``norm``)
are those of SAM 2 so that checkpoints map by prefix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mpgsam2.modeling.checkpointing import run_block
from mpgsam2.modeling.sam2.common import RoPEAttention

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def _activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None


class MemoryAttentionLayer(nn.Module):
    """One memory-attention block: self-attention, cross-attention to memory, MLP (all pre-norm, residual).

    Args:
        activation: MLP activation, ``"relu"``, ``"gelu"`` or ``"glu"``.
        d_model: width C of the current frame's tokens.
        dim_feedforward: hidden width of the MLP.
        dropout: dropout after each residual branch and inside the MLP (training only).
        pos_enc_at_attn: add the query position encoding to the self-attention queries and keys.
        pos_enc_at_cross_attn_keys: add the memory position encoding to the cross-attention keys.
        pos_enc_at_cross_attn_queries: add the query position encoding to the cross-attention queries.
        self_attention: attention module over the current tokens (``[B, HW, C]`` in and out).
        cross_attention: attention module from the current tokens to the memory (keys of width Cm).
    """

    def __init__(
        self,
        activation: str,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
        cross_attention: nn.Module,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.dropout_value = dropout
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)

        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

        self.activation_str = activation
        self.activation = _activation_fn(activation)

        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    def _self_attention(self, tgt: Tensor, query_pos: Tensor | None) -> Tensor:
        tgt2 = self.norm1(tgt)
        q = k = tgt2 + query_pos if self.pos_enc_at_attn else tgt2
        tgt2 = self.self_attn(q, k, v=tgt2)
        return tgt + self.dropout1(tgt2)

    def _cross_attention(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Tensor | None,
        pos: Tensor | None,
        num_k_exclude_rope: int,
    ) -> Tensor:
        kwargs = {}
        if num_k_exclude_rope > 0:
            if not isinstance(self.cross_attn_image, RoPEAttention):
                raise TypeError("num_k_exclude_rope > 0 needs a RoPEAttention cross-attention")
            kwargs["num_k_exclude_rope"] = num_k_exclude_rope
        tgt2 = self.norm2(tgt)
        tgt2 = self.cross_attn_image(
            q=tgt2 + query_pos if self.pos_enc_at_cross_attn_queries else tgt2,
            k=memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            v=memory,
            **kwargs,
        )
        return tgt + self.dropout2(tgt2)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        num_k_exclude_rope: int = 0,
        self_attended: bool = False,
    ) -> Tensor:
        """Batch-first tensors.

        Args:
            tgt: current tokens [B, HW, C].
            memory: memory tokens [B, M, Cm]; the last ``num_k_exclude_rope`` of them get no RoPE.
            pos: memory position encoding [B, M, Cm].
            query_pos: current position encoding [B, HW, C].
            num_k_exclude_rope: number of trailing memory tokens (object pointers) without rotary encoding.
            self_attended: ``tgt`` already went through this layer's self-attention block.

        Returns:
            [B, HW, C].
        """
        if not self_attended:
            tgt = self._self_attention(tgt, query_pos)
        tgt = self._cross_attention(tgt, memory, query_pos, pos, num_k_exclude_rope)
        tgt2 = self.norm3(tgt)
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt2))))
        return tgt + self.dropout3(tgt2)


class MemoryAttention(nn.Module):
    """A stack of ``num_layers`` copies of ``layer`` followed by a LayerNorm.

    Args:
        d_model: width C of the current frame's tokens.
        pos_enc_at_input: add ``0.1 * curr_pos`` to the input tokens.
        layer: the layer to clone (each copy gets its own parameters).
        num_layers: number of layers.
        batch_first: the layers take batch-first tensors (the public interface is sequence-first either way).
    """

    def __init__(
        self,
        d_model: int,
        pos_enc_at_input: bool,
        layer: nn.Module,
        num_layers: int,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first
        # each layer recomputed in backward when training (MPGSAM2Config.activation_checkpointing)
        self.checkpoint_layers = False

    def forward(
        self,
        curr: Tensor | list[Tensor],
        memory: Tensor,
        curr_pos: Tensor | list[Tensor] | None = None,
        memory_pos: Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
        shared_frame: bool = False,
    ) -> Tensor:
        """Condition the current frame on the memory (sequence-first tensors).

        Args:
            curr: current frame tokens [HW, B, C] (or a one-element list of it, as SAM 2 passes it).
            memory: memory tokens [M, B, Cm]: spatial memories first, then ``num_obj_ptr_tokens`` pointer tokens.
            curr_pos: position encoding of ``curr`` [HW, B, C] (same container type as ``curr``).
            memory_pos: position encoding of ``memory`` [M, B, Cm].
            num_obj_ptr_tokens: number of trailing object-pointer tokens in ``memory`` (no RoPE on them).
            shared_frame: the B columns of ``curr`` / ``curr_pos`` are one frame (e.g. expanded) for B targets
                with their own memories (predict_video's K expressions): only column 0 is read, and the first
                layer's self-attention, which reads nothing else, runs once. Inference only (eval mode: dropout
                would draw each target's own mask).

        Returns:
            [HW, B, C].
        """
        if isinstance(curr, list):
            if not isinstance(curr_pos, list) or len(curr) != 1 or len(curr_pos) != 1:
                raise ValueError("curr and curr_pos must both be one-element lists")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(f"batch sizes differ: curr {curr.shape[1]} vs memory {memory.shape[1]}")
        batch = curr.shape[1]
        if shared_frame and self.training:
            raise ValueError(
                "shared_frame is for inference: in train mode dropout draws each target's own mask"
            )
        shared_frame = shared_frame and batch > 1 and self.batch_first and len(self.layers) > 0
        if shared_frame:
            curr = curr[:, :1]
            curr_pos = None if curr_pos is None else curr_pos[:, :1]

        output = curr
        if self.pos_enc_at_input and curr_pos is not None:
            output = output + 0.1 * curr_pos

        if self.batch_first:
            output = output.transpose(0, 1)
            curr_pos = curr_pos.transpose(0, 1) if curr_pos is not None else None
            memory = memory.transpose(0, 1)
            memory_pos = memory_pos.transpose(0, 1) if memory_pos is not None else None
        if shared_frame:
            output = self.layers[0]._self_attention(output, curr_pos).expand(batch, -1, -1)
            curr_pos = None if curr_pos is None else curr_pos.expand(batch, -1, -1)

        for i, layer in enumerate(self.layers):
            kwargs = {}
            if isinstance(layer.cross_attn_image, RoPEAttention):
                kwargs["num_k_exclude_rope"] = num_obj_ptr_tokens
            output = run_block(
                layer,
                self.checkpoint_layers,
                tgt=output,
                memory=memory,
                pos=memory_pos,
                query_pos=curr_pos,
                self_attended=shared_frame and i == 0,
                **kwargs,
            )
        output = self.norm(output)

        if self.batch_first:
            output = output.transpose(0, 1)
        return output


def _strip_target(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "_target_"}


def build_memory_attention(cfg: Mapping[str, Any]) -> MemoryAttention:
    """Build a :class:`MemoryAttention` from the ``memory_attention`` section of a SAM 2 yaml config.

    ``cfg`` is the nested section (``layer`` with ``self_attention`` / ``cross_attention``); ``_target_`` keys,
    if present, are ignored (both attentions are built as :class:`RoPEAttention`, as in every SAM 2 config).
    """
    cfg = _strip_target(cfg)
    layer_cfg = _strip_target(cfg.pop("layer"))
    self_attention = RoPEAttention(**_strip_target(layer_cfg.pop("self_attention")))
    cross_attention = RoPEAttention(**_strip_target(layer_cfg.pop("cross_attention")))
    layer = MemoryAttentionLayer(self_attention=self_attention, cross_attention=cross_attention, **layer_cfg)
    return MemoryAttention(layer=layer, **cfg)
