"""Activation checkpointing: blocks whose activations are recomputed in backward instead of kept.

``MPGSAM2Config.activation_checkpointing`` names groups of blocks (``ACTIVATION_CHECKPOINTING_BLOCKS``); each
block of a named group runs through ``torch.utils.checkpoint`` (non-reentrant) while training with autograd,
so only its inputs are kept between forward and backward and its inside is computed again in backward. The
gradients are those of the plain run: the random state is restored before the recompute (torch's default), so
dropout draws the same masks. Without autograd (inference, the frozen image encoder) nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ACTIVATION_CHECKPOINTING_BLOCKS", "checkpointing_blocks", "run_block"]

# name -> the blocks it recomputes (each block is one checkpoint: its inputs are kept, its inside is not)
ACTIVATION_CHECKPOINTING_BLOCKS: dict[str, str] = {
    "beit3": "each BEiT-3 encoder layer",
    "mask_prior": "the mask-prior generator's clip-wide self-attention layer and multiplicative cross-attention",
    "memory_attention": "each SAM 2 memory-attention layer",
    "decoder_fusion": "the mask decoder's pixel-global, object-global and object-historical fusion blocks",
}


def checkpointing_blocks(names: Iterable[str] | None) -> list[str]:
    """``names`` as a plain list of known block-group names (duplicates dropped, order kept).

    Raises:
        ValueError: a name that is not in ``ACTIVATION_CHECKPOINTING_BLOCKS``, or a single string (a list is
            expected: ``["beit3"]``, not ``"beit3"``).
    """
    known = ", ".join(ACTIVATION_CHECKPOINTING_BLOCKS)
    if names is None:
        return []
    if isinstance(names, str):
        raise ValueError(f"activation_checkpointing must be a list of block names ({known}), got {names!r}")
    out: list[str] = []
    for name in names:
        if name not in ACTIVATION_CHECKPOINTING_BLOCKS:
            raise ValueError(f"activation_checkpointing: unknown block {name!r}; known: {known}")
        if name not in out:
            out.append(str(name))
    return out


def run_block(block: nn.Module, recompute: bool, *args: Any, **kwargs: Any) -> Any:
    """``block(*args, **kwargs)``; recomputed in backward when ``recompute`` and the block is training with
    autograd on (otherwise a plain call: inference and no-grad code paths are untouched)."""
    if recompute and block.training and torch.is_grad_enabled():
        # preserve_rng_state (the default): dropout inside the block draws the same masks in the recompute
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)
