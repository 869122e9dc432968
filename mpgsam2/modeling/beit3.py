"""BEiT-3 multiway encoder (vision-language early fusion), as used by MPG-SAM 2.

Re-implements the torchscale ``BEiT3`` model that the original builds through
``models/unilm/beit3/modeling_utils.py`` (``_get_base_config`` / ``_get_large_config``) and calls in
``models/evf_sam.py`` as ``mm_extractor.beit3(visual_tokens=..., textual_tokens=..., text_padding_position=...)``.

Architecture (spec §1.2): a pre-norm Magneto transformer whose every layer runs joint self-attention over the
concatenated ``[vision; text]`` sequence. Projections, layer norms (including the sub-LN ``inner_attn_ln`` and
``ffn_layernorm``) and FFNs are modality experts: ``A`` for vision tokens, ``B`` for text tokens. A final
multiway layer norm closes the encoder.

Parameter names equal the original's state-dict keys below ``mm_extractor.beit3.`` so checkpoints map by prefix.

The original's dropout, attention dropout, activation dropout and drop-path rates are all 0 in MPG-SAM 2, so no
dropout modules exist here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpgsam2.modeling.checkpointing import run_block

__all__ = ["BEIT3_PRESETS", "BEiT3"]

# Official BEiT-3 sizes (unilm beit3 modeling_utils). The MPG-SAM 2 "tiny" model uses BEiT-3 *base*; the small
# random test model of the tests and the demo is conf/model/beit3/test.yaml.
BEIT3_PRESETS: dict[str, dict[str, int]] = {
    "base": {"embed_dim": 768, "num_heads": 12, "ffn_dim": 3072, "num_layers": 12, "vocab_size": 64010},
    "large": {"embed_dim": 1024, "num_heads": 16, "ffn_dim": 4096, "num_layers": 24, "vocab_size": 64010},
}

# parity: torchscale (like fairseq) starts learned positions at index 2, so each table has 2 unused rows.
_POSITION_OFFSET = 2


def _pair_rows(shared: Tensor, per_sequence: Tensor) -> tuple[Tensor, Tensor]:
    """Views of ``shared`` (M, ...) and ``per_sequence`` (N, ...), N a multiple of M, as (N / M, M, ...): row n of
    the N sequences pairs with row n mod M of the shared tensor (broadcast, never copied)."""
    m = shared.size(0)
    return shared.unsqueeze(0), per_sequence.view(per_sequence.size(0) // m, m, *per_sequence.shape[1:])


def _join(vision: Tensor, text: Tensor) -> Tensor:
    """Vision tokens (M, Sv, C) and text tokens (N, St, C) -> the joint sequence (N, Sv + St, C), vision first; the
    M vision rows are repeated in order over the N sequences (M = N in the plain case)."""
    v, t = _pair_rows(vision, text)
    return torch.cat([v.expand(t.size(0), *v.shape[1:]), t], dim=2).flatten(0, 1)


def _add_shared(shared: Tensor, per_sequence: Tensor) -> Tensor:
    """``shared`` (M, ...) + ``per_sequence`` (N, ...) -> (N, ...), row n adding row n mod M of ``shared``."""
    s, p = _pair_rows(shared, per_sequence)
    return (s + p).flatten(0, 1)


class Multiway(nn.Module):
    """Two modality experts of the same kind: ``A`` for vision tokens, ``B`` for text tokens.

    The tokens are kept as two tensors (vision first in the joint sequence), so each expert runs on its own
    contiguous tokens; torchscale splits and re-concatenates the joint sequence around every expert instead,
    which gives the same values.
    """

    def __init__(self, module_a: nn.Module, module_b: nn.Module) -> None:
        super().__init__()
        self.A = module_a
        self.B = module_b

    def forward(self, vision: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Args: vision (M, Sv, C), text (N, St, C). Returns (A(vision), B(text))."""
        return self.A(vision), self.B(text)


def _multiway_linear(dim_in: int, dim_out: int) -> Multiway:
    return Multiway(nn.Linear(dim_in, dim_out), nn.Linear(dim_in, dim_out))


def _multiway_layernorm(dim: int, eps: float) -> Multiway:
    return Multiway(nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps))


class FeedForward(nn.Module):
    """Magneto FFN: fc1 -> GELU -> sub-LN (``ffn_layernorm``) -> fc2."""

    def __init__(self, embed_dim: int, ffn_dim: int, layernorm_eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=layernorm_eps)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (..., C). Returns (..., C)."""
        shape = x.shape
        # parity: torchscale flattens to 2-D before fc1 (same matmul shape) and runs GELU in float32.
        x = self.fc1(x.reshape(-1, x.size(-1)))
        x = F.gelu(x.float()).type_as(x)
        x = self.ffn_layernorm(x)
        return self.fc2(x).view(shape)


class MultiwaySelfAttention(nn.Module):
    """Joint multi-head self-attention with modality-specific projections and sub-LN before ``out_proj``."""

    def __init__(self, embed_dim: int, num_heads: int, layernorm_eps: float) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        # Registration order k, v, q, out, ln follows the original's state-dict order.
        self.k_proj = _multiway_linear(embed_dim, embed_dim)
        self.v_proj = _multiway_linear(embed_dim, embed_dim)
        self.q_proj = _multiway_linear(embed_dim, embed_dim)
        self.out_proj = _multiway_linear(embed_dim, embed_dim)
        self.inner_attn_ln = _multiway_layernorm(embed_dim, layernorm_eps)

    def forward(
        self,
        vision: Tensor,
        text: Tensor,
        key_padding_mask: Tensor | None = None,
        fused_attention: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Self-attention over all tokens of each joint sequence.

        Args:
            vision: (M, Sv, C) normalised vision tokens; text: (N, St, C) normalised text tokens, N a multiple of M
                (sequence n is vision row n mod M, then text row n).
            key_padding_mask: (N, Sv + St) bool, True = key ignored; or None.
            fused_attention: one fused kernel (``scaled_dot_product_attention``) instead of torchscale's
                scaled q, bmm and float32 softmax (see ``BEiT3.forward``).

        Returns:
            The vision (N, Sv, C) and text (N, St, C) outputs.
        """
        n, split = text.size(0), vision.size(1)
        s, c = split + text.size(1), self.embed_dim
        h, d = self.num_heads, self.head_dim
        # a shared vision row is projected once for all the sequences that read it
        q = _join(*self.q_proj(vision, text))
        k = _join(*self.k_proj(vision, text))
        v = _join(*self.v_proj(vision, text))
        if fused_attention:
            # deviation: inference runs the fused kernel (2-3x faster attention on the CPU, less memory on
            # GPUs): the same softmax(q k^T / sqrt(d)) v up to float rounding. Training keeps torchscale's form.
            heads = [t.view(n, s, h, d).transpose(1, 2) for t in (q, k, v)]
            keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(*heads, attn_mask=keep)  # (N, H, S, d)
            # each modality's tokens straight into their own contiguous (N, S', C) tensor
            out_vision = out[:, :, :split].transpose(1, 2).reshape(n, split, c)
            out_text = out[:, :, split:].transpose(1, 2).reshape(n, s - split, c)
        else:
            # parity: scale q before QK^T and use explicit bmm + softmax (not SDPA), as torchscale does.
            q = q * self.scaling
            q = q.view(n, s, h, d).transpose(1, 2).reshape(n * h, s, d)
            k = k.view(n, s, h, d).transpose(1, 2).reshape(n * h, s, d)
            v = v.view(n, s, h, d).transpose(1, 2).reshape(n * h, s, d)

            attn = torch.bmm(q, k.transpose(1, 2))  # (N*H, S, S)
            if key_padding_mask is not None:
                attn = attn.view(n, h, s, s).masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
                attn = attn.view(n * h, s, s)
            attn = F.softmax(attn, dim=-1, dtype=torch.float32).type_as(attn)

            out = torch.bmm(attn, v)  # (N*H, S, d)
            # (N*H, S, d) -> (S, N*H, d) -> (S, N, C) -> (N, S, C): heads concatenated per token.
            out = out.transpose(0, 1).reshape(s, n, c).transpose(0, 1)
            out_vision, out_text = out[:, :split], out[:, split:]
        return self.out_proj(*self.inner_attn_ln(out_vision, out_text))


class EncoderLayer(nn.Module):
    """Pre-norm multiway transformer layer (Magneto / sub-LN variant; residual scale 1)."""

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, layernorm_eps: float) -> None:
        super().__init__()
        self.self_attn = MultiwaySelfAttention(embed_dim, num_heads, layernorm_eps)
        self.self_attn_layer_norm = _multiway_layernorm(embed_dim, layernorm_eps)
        self.ffn = Multiway(
            FeedForward(embed_dim, ffn_dim, layernorm_eps), FeedForward(embed_dim, ffn_dim, layernorm_eps)
        )
        self.final_layer_norm = _multiway_layernorm(embed_dim, layernorm_eps)

    def forward(
        self,
        vision: Tensor,
        text: Tensor,
        key_padding_mask: Tensor | None = None,
        fused_attention: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Args: vision (M, Sv, C), text (N, St, C), N a multiple of M (see ``MultiwaySelfAttention``);
        key_padding_mask (N, Sv + St) bool or None; fused_attention (see ``BEiT3.forward``). Returns vision
        (N, Sv, C) and text (N, St, C)."""
        attn_vision, attn_text = self.self_attn(
            *self.self_attn_layer_norm(vision, text), key_padding_mask, fused_attention
        )
        # parity: torchscale computes residual * alpha + x with alpha = 1 (no DeepNorm).
        vision, text = _add_shared(vision, attn_vision), text + attn_text
        ffn_vision, ffn_text = self.ffn(*self.final_layer_norm(vision, text))
        return vision + ffn_vision, text + ffn_text


class VisionEmbedding(nn.Module):
    """Non-overlapping patchifier with a prepended [CLS] token.

    ``mask_token`` exists only so that BEiT-3 checkpoints load strictly: MPG-SAM 2 never masks patches, so it
    receives no gradient.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size ({img_size}) must be divisible by patch_size ({patch_size})")
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        # Registration order mask_token, cls_token, proj follows the original's state-dict order.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Args: pixel_values (N, 3, H, W) with H = W = img_size. Returns (N, 1 + P, C), [CLS] first."""
        n, _, h, w = pixel_values.shape
        if h != self.img_size or w != self.img_size:
            raise ValueError(
                f"BEiT-3 expects {self.img_size}x{self.img_size} images, got {h}x{w}; resize before the encoder"
            )
        x = self.proj(pixel_values).flatten(2).transpose(1, 2)  # (N, P, C), row-major patch order
        return torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)


class Encoder(nn.Module):
    """Multiway position embeddings, the layer stack and the final multiway layer norm."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        num_vision_positions: int,
        max_text_positions: int,
        layernorm_eps: float,
    ) -> None:
        super().__init__()
        self.embed_positions = Multiway(
            nn.Embedding(num_vision_positions, embed_dim), nn.Embedding(max_text_positions, embed_dim)
        )
        self.layers = nn.ModuleList(
            EncoderLayer(embed_dim, num_heads, ffn_dim, layernorm_eps) for _ in range(num_layers)
        )
        self.layer_norm = _multiway_layernorm(embed_dim, layernorm_eps)
        # each layer recomputed in backward when training (MPGSAM2Config.activation_checkpointing "beit3")
        self.checkpoint_layers = False

    def _positions(self, table: nn.Embedding, length: int, device: torch.device) -> Tensor:
        idx = torch.arange(_POSITION_OFFSET, length + _POSITION_OFFSET, device=device).unsqueeze(0)
        return table(idx)  # (1, length, C)

    def forward(
        self,
        vision: Tensor,
        text: Tensor,
        padding_mask: Tensor | None = None,
        fused_attention: bool = False,
    ) -> Tensor:
        """Runs the encoder on embedded tokens.

        Args:
            vision: (M, Sv, C) vision token embeddings ([CLS] then patches).
            text: (N, St, C) text token embeddings, N a multiple of M: sequence n is vision row n mod M followed by
                text row n (M = N: one image per sequence).
            padding_mask: (N, Sv + St) bool, True = padded token (zeroed and ignored as key); or None.
            fused_attention: see ``BEiT3.forward``.

        Returns:
            (N, Sv + St, C) after the final multiway layer norm, vision tokens first.
        """
        vision = vision + self._positions(self.embed_positions.A, vision.size(1), vision.device)
        text = text + self._positions(self.embed_positions.B, text.size(1), text.device)
        if padding_mask is not None:
            # parity: padded tokens are zeroed by multiplication before the first layer, as torchscale does
            # (vision tokens are never padded).
            text = text * (1 - padding_mask[:, vision.size(1) :].unsqueeze(-1).type_as(text))
        for layer in self.layers:
            vision, text = run_block(
                layer, self.checkpoint_layers, vision, text, padding_mask, fused_attention
            )
        if vision.size(0) != text.size(0):  # only without layers: the layers repeat shared rows themselves
            vision = vision.repeat(text.size(0) // vision.size(0), 1, 1)
        return torch.cat(self.layer_norm(vision, text), dim=1)


class BEiT3(nn.Module):
    """BEiT-3 multiway transformer over one image and one token sequence per sample.

    Args:
        embed_dim: token width D.
        num_heads: attention heads.
        ffn_dim: FFN hidden width.
        num_layers: number of encoder layers.
        vocab_size: text embedding rows (64010 for the official sentencepiece vocabulary).
        img_size: square input image side; fixes the patch grid and the vision position table.
        patch_size: square patch side.
        in_chans: image channels.
        max_text_positions: rows of the text position table (text length L <= max_text_positions - 2).
        layernorm_eps: epsilon of every LayerNorm.
        position_init_std: std of the random position tables (1.0 as the original). Only matters when training
            from scratch: at 1.0 the positions drown the token embeddings (std D^-0.5) and a small model is slow
            to learn which word is which; the CPU demo uses 0.02.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        vocab_size: int,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        max_text_positions: int = 1024,
        layernorm_eps: float = 1e-5,
        position_init_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.position_init_std = position_init_std
        self.max_text_positions = max_text_positions
        self.text_embed = nn.Embedding(vocab_size, embed_dim)
        self.vision_embed = VisionEmbedding(img_size, patch_size, in_chans, embed_dim)
        num_vision_tokens = self.vision_embed.num_patches + 1  # patches + [CLS]
        self.encoder = Encoder(
            embed_dim=embed_dim,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_layers=num_layers,
            num_vision_positions=num_vision_tokens + _POSITION_OFFSET,
            max_text_positions=max_text_positions,
            layernorm_eps=layernorm_eps,
        )
        self.init_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides: int | float) -> BEiT3:
        """Builds one of ``BEIT3_PRESETS`` ("base", "large"), with optional kwarg overrides."""
        if name not in BEIT3_PRESETS:
            raise KeyError(f"unknown BEiT-3 preset {name!r}; choose one of {sorted(BEIT3_PRESETS)}")
        return cls(**{**BEIT3_PRESETS[name], **overrides})

    @property
    def num_patches(self) -> int:
        """Number of patch tokens P (without [CLS])."""
        return self.vision_embed.num_patches

    @property
    def grid_size(self) -> int:
        """Patch grid side G (P = G * G)."""
        return self.vision_embed.grid_size

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random initialisation following the original recipe (used only when no checkpoint is loaded).

        Linear: truncated normal std 0.02 cut at +-1 std, zero bias (BEiT3Wrapper._init_weights, which overrides
        torchscale's sub-LN rescaling); LayerNorm: ones / zeros; text embedding: N(0, D^-0.5); position tables:
        N(0, ``position_init_std``) (1 in the original); cls / mask tokens: zeros; patch conv: PyTorch default.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.text_embed.weight, mean=0.0, std=self.embed_dim**-0.5)
        nn.init.normal_(self.encoder.embed_positions.A.weight, std=self.position_init_std)
        nn.init.normal_(self.encoder.embed_positions.B.weight, std=self.position_init_std)
        nn.init.zeros_(self.vision_embed.cls_token)
        nn.init.zeros_(self.vision_embed.mask_token)

    def forward(
        self,
        pixel_values: Tensor,
        text_ids: Tensor,
        text_padding_mask: Tensor | None = None,
        *,
        image_repeats: int = 1,
        fused_attention: bool | None = None,
    ) -> Tensor:
        """Encodes each image jointly with its token sequence.

        Args:
            pixel_values: (M, 3, H, W) float, H = W = img_size, ImageNet-normalised.
            text_ids: (N, L) long token ids, N = M * ``image_repeats``.
            text_padding_mask: (N, L) bool, True = padded / ignored token; None = no padding.
            image_repeats: how many token sequences read each image: sequence n reads image n mod M. The images'
                embedding and the first layer's image projections, which do not depend on the text yet, are
                then computed once per image (e.g. one video's frames for each of its expressions).
            fused_attention: the attention as one fused kernel (inference: faster, less memory, the same values
                up to float rounding) instead of torchscale's explicit form (training, parity of gradients).
                None, the documented default: fused exactly when autograd is off.

        Returns:
            (N, 1 + P + L, D): [CLS], P patch tokens (row-major grid), then L text tokens, after the final
            layer norm (the original's ``output["encoder_out"]``).
        """
        n, length = text_ids.shape
        if length + _POSITION_OFFSET > self.max_text_positions:
            raise ValueError(
                f"text length {length} exceeds the text position table "
                f"({self.max_text_positions} rows, {self.max_text_positions - _POSITION_OFFSET} usable)"
            )
        if image_repeats < 1 or pixel_values.size(0) * image_repeats != n:
            raise ValueError(
                f"batch mismatch: {pixel_values.size(0)} images x {image_repeats} repeats vs {n} token sequences"
            )
        vision = self.vision_embed(pixel_values)  # (M, 1 + P, D)
        text = self.text_embed(text_ids)  # (N, L, D)

        padding_mask = None
        if text_padding_mask is not None:
            if text_padding_mask.shape != text_ids.shape:
                raise ValueError(
                    f"text_padding_mask shape {tuple(text_padding_mask.shape)} != text_ids shape "
                    f"{tuple(text_ids.shape)}"
                )
            # Vision tokens are never padded.
            vision_pad = text_padding_mask.new_zeros(n, vision.size(1), dtype=torch.bool)
            padding_mask = torch.cat([vision_pad, text_padding_mask.bool()], dim=1)
        if fused_attention is None:
            fused_attention = not torch.is_grad_enabled()
        return self.encoder(vision, text, padding_mask, fused_attention)
