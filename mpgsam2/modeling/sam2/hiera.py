"""Hiera trunk of the SAM 2 image encoder (hierarchical ViT with windowed attention and query pooling).

Original: ``models/sam2/modeling/backbones/{hieradet.py,utils.py}`` of MPG-SAM 2 (unchanged from SAM 2.0 / 2.1,
Hiera paper arXiv:2306.00989, window positional embedding arXiv:2311.05613). Parameter names match the original
state dict below ``image_encoder.trunk.``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpgsam2.modeling.sam2.common import MLP, DropPath


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Cut a channels-last map into non-overlapping windows, zero-padding bottom/right to a multiple of the window.

    Args:
        x: [B, H, W, C].
        window_size: side of the square windows.

    Returns:
        windows [B * nH * nW, window_size, window_size, C] (row-major over windows) and the padded (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and crop the padding.

    Args:
        windows: [B * nH * nW, window_size, window_size, C].
        window_size: side of the windows.
        pad_hw: padded (Hp, Wp).
        hw: unpadded (H, W).

    Returns:
        [B, H, W, C].
    """
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.reshape(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def _pool_channels_last(x: Tensor, pool: nn.Module | None) -> Tensor:
    """Apply a 2-D pooling module to a channels-last map: [B, H, W, C] -> [B, H', W', C]."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided convolution whose output is returned channels-last.

    Args:
        kernel_size, stride, padding: of the projection convolution (SAM 2: 7, 4, 3).
        in_chans: image channels.
        embed_dim: output channels.
    """

    def __init__(
        self,
        kernel_size: tuple[int, int] = (7, 7),
        stride: tuple[int, int] = (4, 4),
        padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, in_chans, H, W] -> [B, H / stride, W / stride, embed_dim]."""
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries can be pooled (the stage-transition downsampling of Hiera).

    Args:
        dim: input width.
        dim_out: width of q/k/v and of the output.
        num_heads: number of heads.
        q_pool: pooling module applied to the query grid, or None.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, H, W, dim] -> [B, H', W', dim_out] (H', W' = H, W unless the queries are pooled)."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)  # each [B, HW, heads, head_dim]
        if self.q_pool is not None:
            q = _pool_channels_last(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        # parity: the original uses scaled_dot_product_attention (default scale) on [B, heads, N, head_dim].
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm Hiera block: (windowed) attention with optional query pooling, then an MLP.

    Args:
        dim: input width.
        dim_out: output width (differs from ``dim`` at a stage change; the shortcut is then projected).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim_out``.
        drop_path: stochastic-depth probability of both residual branches.
        q_stride: query-pooling stride at a stage change, or None.
        window_size: side of the attention windows; 0 for global attention.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = None
        if q_stride:
            self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, H, W, dim] -> [B, H', W', dim_out] (H', W' = H / q_stride, W / q_stride when pooling)."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # parity: the projected shortcut is taken from the normalised input, as in the original.
            shortcut = _pool_channels_last(self.proj(x), self.pool)

        window_size = self.window_size
        if window_size > 0:
            hw = (x.shape[1], x.shape[2])
            x, pad_hw = window_partition(x, window_size)

        x = self.attn(x)
        if self.window_size > 0:
            if self.q_stride:
                # Query pooling shrank every window (and the map): recompute the window side and padding.
                # deviation: only for windowed blocks; the original also did this for a global block with
                # query pooling and divided by zero there (no official config has such a block).
                window_size = self.window_size // self.q_stride[0]
                hw = (shortcut.shape[1], shortcut.shape[2])
                pad_h = (window_size - hw[0] % window_size) % window_size
                pad_w = (window_size - hw[1] % window_size) % window_size
                pad_hw = (hw[0] + pad_h, hw[1] + pad_w)
            x = window_unpartition(x, window_size, pad_hw, hw)

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """Hiera trunk as used by SAM 2 (``hieradet``): four stages, stride 4/8/16/32.

    Args:
        embed_dim: width of the first stage.
        num_heads: heads of the first stage.
        drop_path_rate: stochastic depth of the last block (linearly increasing from 0 over the blocks).
        q_pool: how many stage changes pool the queries (downsample).
        q_stride: pooling stride at those stage changes.
        stages: number of blocks per stage.
        dim_mul: width multiplier at each stage change.
        head_mul: heads multiplier at each stage change.
        window_pos_embed_bkg_spatial_size: (h, w) of the background positional embedding (interpolated to the
            patch grid).
        window_spec: attention window side per stage (the first block of a stage still uses the previous stage's
            window, before pooling).
        global_att_blocks: indices of blocks with global attention.
        return_interm_layers: return the output of every stage (else only the last one).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] | None = (12, 16, 20),
        return_interm_layers: bool = True,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(
                f"stages {list(stages)} and window_spec {list(window_spec)} must have the same length"
            )
        self.window_spec = tuple(window_spec)
        self.q_stride = tuple(q_stride)
        depth = sum(stages)
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        if not 0 <= q_pool <= len(self.stage_ends) - 1:
            raise ValueError(f"q_pool={q_pool} must lie in [0, {len(self.stage_ends) - 1}]")
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers
        self.global_att_blocks = tuple(global_att_blocks) if global_att_blocks is not None else None
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0])
        )

        # On the CPU explicitly so that building under a meta-device context still yields plain floats.
        drop_rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        cur_stage = 1
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = embed_dim
            # The window lags by one block: a stage's first block attends in the previous stage's window
            # (then pools its queries), so it is read before cur_stage advances.
            window_size = self.window_spec[cur_stage - 1]
            if self.global_att_blocks is not None and i in self.global_att_blocks:
                window_size = 0
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    drop_path=drop_rates[i],
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            embed_dim = dim_out

        # Widths of the returned maps, lowest resolution first (the order FpnNeck's backbone_channel_list uses).
        self.channel_list = (
            [self.blocks[i].dim_out for i in self.stage_ends[::-1]]
            if return_interm_layers
            else [self.blocks[-1].dim_out]
        )

    def _get_pos_embed(self, hw: tuple[int, int]) -> Tensor:
        """Background embedding resized to the patch grid plus the tiled window embedding -> [1, H, W, C]."""
        h, w = hw
        pos_embed = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        window_embed = self.pos_embed_window
        pos_embed = pos_embed + window_embed.tile(
            [a // b for a, b in zip(pos_embed.shape, window_embed.shape)]
        )
        return pos_embed.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Image [B, 3, H, W] -> stage outputs [B, C_i, H / s_i, W / s_i], highest resolution first.

        With ``return_interm_layers`` there is one map per stage (s_i = 4, 8, 16, 32 for 4 stages with
        q_pool = 3); else only the last stage's map.
        """
        x = self.patch_embed(x)  # [B, H/4, W/4, C]
        x = x + self._get_pos_embed((x.shape[1], x.shape[2]))
        outputs = []
        last = self.stage_ends[-1]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == last or (self.return_interm_layers and i in self.stage_ends):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs

    def get_layer_id(self, layer_name: str) -> int:
        """Layer index of a parameter name for layer-wise learning-rate decay (as the official SAM 2 trunk)."""
        num_layers = self.get_num_layers()
        if "rel_pos" in layer_name:
            return num_layers + 1
        if "pos_embed" in layer_name or "patch_embed" in layer_name:
            return 0
        if "blocks" in layer_name:
            return int(layer_name.split("blocks")[1].split(".")[1]) + 1
        return num_layers + 1

    def get_num_layers(self) -> int:
        """Number of blocks."""
        return len(self.blocks)
