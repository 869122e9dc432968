"""Small layers shared by the SAM 2 modules: MLP, channel-first LayerNorm, and SAM's multi-head attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mpgsam2.modeling.sam2.position_encoding import apply_rotary_enc, compute_axial_cis


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with ``activation`` between them.

    Parameter names (``layers.<i>.weight``) follow SAM 2 so that checkpoints map one-to-one.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., input_dim] -> [..., output_dim]."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a [B, C, H, W] map."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        # parity: SAM 2 normalises by hand (mean / biased variance) rather than with F.layer_norm.
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Attention(nn.Module):
    """SAM's multi-head attention with separate q/k/v/out projections and an optional internal down-projection.

    Args:
        embedding_dim: width of the queries and of the output.
        num_heads: number of heads.
        downsample_rate: the internal width is ``embedding_dim // downsample_rate``.
        dropout: attention dropout, applied in training only.
        kv_in_dim: width of keys and values (defaults to ``embedding_dim``).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        b, h, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, h * c)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        if q.device.type == "cpu" and torch.is_grad_enabled():
            # parity: off-GPU the original forces the math kernel (its sdp_kernel context); the CPU flash
            # kernel differs by ~1e-7 per call. deviation: inference (no autograd) lets PyTorch pick the fused
            # kernel, 1.3-1.5x faster here, the same attention up to float rounding.
            with sdpa_kernel([SDPBackend.MATH]):
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self._merge_heads(out))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: [B, Nq, C]; k, v: [B, Nk, kv_in_dim] -> [B, Nq, C]."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        return self._attend(q, k, v)


class RoPEAttention(Attention):
    """Attention with 2-D axial rotary position encoding on queries and keys (SAM 2 memory attention).

    Args:
        rope_theta: RoPE base frequency.
        rope_k_repeat: keys hold several frames of the query's grid (cross-attention to memory), so the
            query frequencies are tiled over them.
        feat_sizes: (width, height) of the grid the frequencies are precomputed for; recomputed when the
            query length differs.
    """

    def __init__(
        self,
        *args,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (32, 32),
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.head_dim = self.internal_dim // self.num_heads
        self.register_buffer(
            "freqs_cis",
            compute_axial_cis(self.head_dim, feat_sizes[0], feat_sizes[1], rope_theta),
            persistent=False,
        )

    def _freqs_for(self, num_tokens: int, device: torch.device) -> Tensor:
        if self.freqs_cis.shape[0] == num_tokens:
            return self.freqs_cis.to(device)
        side = int(round(num_tokens**0.5))
        if side * side != num_tokens:
            raise ValueError(f"RoPE attention needs a square query grid, got {num_tokens} tokens")
        # deviation: not cached on the module (the original overwrote its table in forward); cheap to compute.
        return compute_axial_cis(self.head_dim, side, side, self.rope_theta).to(device)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        """q: [B, HW, C]; k, v: [B, Nk, kv_in_dim]; the last ``num_k_exclude_rope`` keys get no rotation."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        if q.shape[-2] != k.shape[-2] and not self.rope_k_repeat:
            raise ValueError("keys differ in length from queries; set rope_k_repeat for cross-attention")
        freqs = self._freqs_for(q.shape[-2], q.device)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        q, k_rope = apply_rotary_enc(q, k[:, :, :num_k_rope], freqs, repeat_freqs_k=self.rope_k_repeat)
        k = torch.cat([k_rope, k[:, :, num_k_rope:]], dim=2)
        return self._attend(q, k, v)


class DropPath(nn.Module):
    """Stochastic depth: zeroes whole samples of a residual branch in training and rescales the rest.

    Args:
        drop_prob: probability of dropping a sample's branch.
        scale_by_keep: divide the kept samples by ``1 - drop_prob``.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, ...] -> [B, ...]."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0 and self.scale_by_keep:
            mask.div_(keep_prob)
        return x * mask
