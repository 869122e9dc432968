"""SAM 2 memory encoder: fuses a frame's top-level image feature with its predicted mask into a memory.

The mask (already turned into scaled sigmoid probabilities by the caller, see ``MemoryEncoder.forward``) is
downsampled to the feature stride by strided convolutions, added to a 1x1 projection of the image feature,
refined by ConvNeXt blocks and projected to the memory width. Parameter names follow SAM 2 (including the
layer-scale parameter ``gamma`` of :class:`CXBlock`, which released checkpoints store under that name).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mpgsam2.modeling.sam2.common import DropPath, LayerNorm2d
from mpgsam2.modeling.sam2.position_encoding import PositionEmbeddingSine


class MaskDownSampler(nn.Module):
    """Downsample a mask by ``total_stride`` in steps of ``stride``, then project to ``embed_dim`` channels.

    Each step is conv (channels x stride**2) -> LayerNorm2d -> activation; the final 1x1 conv maps to
    ``embed_dim``. Module indices inside ``encoder`` match SAM 2 (``encoder.0``, ``encoder.1``, ...).

    Args:
        embed_dim: output channels.
        kernel_size, stride, padding: of each downsampling conv.
        total_stride: overall downsampling factor; must be a power of ``stride``.
        activation: activation class placed after each LayerNorm2d.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        num_layers = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_layers != total_stride:
            raise ValueError(f"total_stride={total_stride} is not a power of stride={stride}")
        self.encoder = nn.Sequential()
        in_chans = out_chans = 1
        for _ in range(num_layers):
            out_chans = in_chans * stride**2
            self.encoder.append(
                nn.Conv2d(in_chans, out_chans, kernel_size=kernel_size, stride=stride, padding=padding)
            )
            self.encoder.append(LayerNorm2d(out_chans))
            self.encoder.append(activation())
            in_chans = out_chans
        self.encoder.append(nn.Conv2d(out_chans, embed_dim, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, 1, H, W] -> [B, embed_dim, H / total_stride, W / total_stride]."""
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv -> LayerNorm2d -> pointwise MLP (as Linear layers) -> layer scale, residual.

    Args:
        dim: channels.
        kernel_size, padding: of the depthwise conv.
        drop_path: stochastic-depth rate of the residual branch.
        layer_scale_init_value: initial value of the per-channel layer scale ``gamma``; <= 0 disables it.
        use_dwconv: depthwise (True) or dense (False) spatial conv.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # parity: the layer scale keeps the name "gamma"; checkpoints store it under that key.
        self.gamma = (
            nn.Parameter(layer_scale_init_value * torch.ones(dim), requires_grad=True)
            if layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, dim, H, W] -> [B, dim, H, W]."""
        residual = x
        x = self.norm(self.dwconv(x))
        x = x.permute(0, 2, 3, 1)  # channels last for the Linear layers
        x = self.pwconv2(self.act(self.pwconv1(x)))
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return residual + self.drop_path(x)


class Fuser(nn.Module):
    """``num_layers`` copies of ``layer`` after an optional 1x1 input projection.

    Args:
        layer: the block to clone (each copy gets its own parameters).
        num_layers: number of blocks.
        dim: channels, needed only with ``input_projection``.
        input_projection: apply a 1x1 conv first.
    """

    def __init__(
        self, layer: nn.Module, num_layers: int, dim: int | None = None, input_projection: bool = False
    ):
        super().__init__()
        self.proj: nn.Module = nn.Identity()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        if input_projection:
            if dim is None:
                raise ValueError("Fuser(input_projection=True) needs dim")
            self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode (image feature, mask) into a memory feature and its spatial position encoding.

    Args:
        out_dim: memory width Cm (a 1x1 ``out_proj`` is added when it differs from ``in_dim``).
        mask_downsampler: maps [B, 1, S, S] masks to [B, in_dim, H, W].
        fuser: refines the fused [B, in_dim, H, W] map.
        position_encoding: spatial encoding of the output map ([B, Cm, H, W]).
        in_dim: width C of the image feature.
    """

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: nn.Module,
        fuser: nn.Module,
        position_encoding: nn.Module,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj: nn.Module = nn.Identity()
        if out_dim != in_dim:
            self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(
        self, pix_feat: Tensor, masks: Tensor, skip_mask_sigmoid: bool = False, shared_frame: bool = False
    ) -> dict[str, Any]:
        """Fuse a frame's feature with its mask.

        Args:
            pix_feat: top-level image feature [B, C, H, W] (the raw backbone feature, without no_mem_embed).
            masks: [B, 1, S, S] with S = H * total_stride of the downsampler. Mask logits, or, with
                ``skip_mask_sigmoid=True``, values the caller already mapped (SAM 2 passes
                ``sigmoid(logits) * 20 - 10``).
            skip_mask_sigmoid: do not apply a sigmoid to ``masks``.
            shared_frame: the B rows of ``pix_feat`` are one frame (e.g. expanded) for B masks: only row 0 is
                read and projected, once.

        Returns:
            ``{"vision_features": [B, Cm, H, W], "vision_pos_enc": [pos [B, Cm, H, W]]}``.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        pix_feat = pix_feat.to(masks.device)
        if shared_frame:
            # one frame's feature for B targets (predict_video's K expressions): projected once
            pix_feat = pix_feat[:1]
        x = self.pix_feat_proj(pix_feat) + masks
        x = self.fuser(x)
        x = self.out_proj(x)
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}


def _strip_target(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "_target_"}


def build_memory_encoder(cfg: Mapping[str, Any]) -> MemoryEncoder:
    """Build a :class:`MemoryEncoder` from the ``memory_encoder`` section of a SAM 2 yaml config.

    ``cfg`` is the nested section (``position_encoding``, ``mask_downsampler``, ``fuser`` with ``layer``);
    ``_target_`` keys, if present, are ignored (the classes are those of every SAM 2 config).
    """
    cfg = _strip_target(cfg)
    position_encoding = PositionEmbeddingSine(**_strip_target(cfg.pop("position_encoding")))
    mask_downsampler = MaskDownSampler(**_strip_target(cfg.pop("mask_downsampler")))
    fuser_cfg = _strip_target(cfg.pop("fuser"))
    fuser = Fuser(layer=CXBlock(**_strip_target(fuser_cfg.pop("layer"))), **fuser_cfg)
    return MemoryEncoder(
        mask_downsampler=mask_downsampler, fuser=fuser, position_encoding=position_encoding, **cfg
    )
