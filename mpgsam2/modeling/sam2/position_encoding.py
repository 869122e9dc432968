"""Positional encodings used by SAM 2 and by MPG-SAM 2's temporal embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def get_1d_sine_pe(positions: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Transformer sine/cosine embedding of scalar positions.

    positions: [...] float -> [..., dim], the first half sines, the second half cosines.
    """
    half = dim // 2
    freq_index = torch.arange(half, dtype=torch.float32, device=positions.device)
    inv_freq = temperature ** (2 * (freq_index // 2) / half)
    angles = positions.unsqueeze(-1) / inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class PositionEmbeddingSine(nn.Module):
    """2-D sine embedding of a feature map's pixel grid (DETR style, normalised coordinates).

    Args:
        num_pos_feats: output channels (half for y, half for x).
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("scale needs normalize=True")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] (only its shape and device are used) -> [B, num_pos_feats, H, W]."""
        b, _, h, w = x.shape
        y_embed = torch.arange(1, h + 1, dtype=torch.float32, device=x.device).view(h, 1).expand(h, w)
        x_embed = torch.arange(1, w + 1, dtype=torch.float32, device=x.device).view(1, w).expand(h, w)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (h + eps) * self.scale
            x_embed = x_embed / (w + eps) * self.scale
        freq_index = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        inv_freq = self.temperature ** (2 * (freq_index // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, None] / inv_freq
        pos_y = y_embed[:, :, None] / inv_freq
        # interleave sin (even channels) and cos (odd channels)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype if x.is_floating_point() else torch.float32)


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of normalised coordinates with a fixed random Gaussian matrix (SAM prompt encoder)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _encode(self, coords: Tensor) -> Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([coords.sin(), coords.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """Encoding of an (h, w) grid of pixel centres -> [2 * num_pos_feats, h, w]."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: Tensor, image_size: tuple[int, int]) -> Tensor:
        """coords: [B, N, 2] pixel (x, y) in an image of ``image_size`` (h, w) -> [B, N, 2 * num_pos_feats]."""
        coords = coords.clone().float()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._encode(coords)


def compute_axial_cis(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> Tensor:
    """Complex rotations for 2-D axial RoPE over an end_x * end_y grid (row-major) -> [end_x * end_y, dim // 2]."""
    exponents = torch.arange(0, dim, 4)[: dim // 4].float() / dim
    freqs = 1.0 / (theta**exponents)
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x = t % end_x
    t_y = torch.div(t, end_x, rounding_mode="floor")
    angles_x = torch.outer(t_x, freqs)
    angles_y = torch.outer(t_y, freqs)
    cis_x = torch.polar(torch.ones_like(angles_x), angles_x)
    cis_y = torch.polar(torch.ones_like(angles_y), angles_y)
    return torch.cat([cis_x, cis_y], dim=-1)


def apply_rotary_enc(
    xq: Tensor, xk: Tensor, freqs_cis: Tensor, repeat_freqs_k: bool = False
) -> tuple[Tensor, Tensor]:
    """Rotate queries [B, H, Nq, D] and keys [B, H, Nk, D] by ``freqs_cis`` [Nq, D // 2].

    With ``repeat_freqs_k`` the keys hold Nk / Nq stacked copies of the query grid and each copy is rotated
    like the queries.
    """
    q_c = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    q_out = torch.view_as_real(q_c * freqs_cis).flatten(3).type_as(xq)
    if xk.shape[-2] == 0:
        return q_out, xk
    k_c = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    k_freqs = freqs_cis
    if repeat_freqs_k:
        repeats = k_c.shape[-2] // q_c.shape[-2]
        k_freqs = freqs_cis.repeat(repeats, 1)
    k_out = torch.view_as_real(k_c * k_freqs).flatten(3).type_as(xk)
    return q_out, k_out
