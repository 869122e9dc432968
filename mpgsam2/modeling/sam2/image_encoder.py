"""SAM 2 image encoder: Hiera trunk + FPN neck, with the trunk/neck presets of the official SAM 2.0 / 2.1 configs.

Original: ``models/sam2/modeling/backbones/image_encoder.py`` of MPG-SAM 2 (identical in behaviour to SAM 2.0 and
2.1). Parameter names match the original state dict below ``image_encoder.`` (``trunk.*``, ``neck.convs.<i>.conv.*``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpgsam2.modeling.sam2.hiera import Hiera
from mpgsam2.modeling.sam2.position_encoding import PositionEmbeddingSine

__all__ = ["HIERA_PRESETS", "FpnNeck", "Hiera", "ImageEncoder", "build_image_encoder", "image_encoder_config"]


class FpnNeck(nn.Module):
    """FPN variant of SAM 2: 1x1 lateral convs, top-down fusion by upsampling, no output convs.

    Args:
        position_encoding: module mapping a [B, d_model, H, W] map to its [B, d_model, H, W] positional encoding.
        d_model: output width of every level.
        backbone_channel_list: trunk widths, lowest resolution first (``convs.<i>`` projects that width).
        kernel_size, stride, padding: of the lateral convolutions.
        fpn_interp_model: ``F.interpolate`` mode of the top-down path ("nearest" in all SAM 2 configs).
        fuse_type: "sum" or "avg" of lateral and top-down features.
        fpn_top_down_levels: output levels (0 = highest resolution) that receive top-down features; the others
            are lateral features only. None means all levels.
    """

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: Sequence[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module(
                "conv", nn.Conv2d(dim, d_model, kernel_size=kernel_size, stride=stride, padding=padding)
            )
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        if fpn_top_down_levels is None:
            fpn_top_down_levels = range(len(self.convs))
        self.fpn_top_down_levels = list(fpn_top_down_levels)

    def forward(self, xs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Trunk maps (highest resolution first, [B, C_i, H_i, W_i]) -> (features, positions).

        Both lists are highest resolution first; each entry is [B, d_model, H_i, W_i].
        """
        n = len(self.convs) - 1
        if len(xs) != n + 1:
            raise ValueError(f"FpnNeck expects {n + 1} feature maps, got {len(xs)}")
        out: list[Tensor] = [None] * (n + 1)  # type: ignore[list-item]
        pos: list[Tensor] = [None] * (n + 1)  # type: ignore[list-item]
        prev = None
        # Top-down: from the lowest resolution (xs[n], convs[0]) to the highest (xs[0], convs[n]).
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                # parity: the original upsamples in float32 with scale_factor 2 and antialias off.
                top_down = F.interpolate(
                    prev.to(dtype=torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
        return out, pos


class ImageEncoder(nn.Module):
    """Trunk + neck; returns SAM 2's backbone dict.

    Args:
        trunk: a module with ``channel_list`` returning multi-scale maps (e.g. :class:`Hiera`).
        neck: a :class:`FpnNeck` whose ``backbone_channel_list`` equals the trunk's ``channel_list``.
        scalp: number of lowest-resolution levels to discard (1 in all SAM 2 configs).
    """

    # deviation: scalp defaults to 1 (every SAM 2 config's value) instead of the original's 0;
    # build_image_encoder keeps 0 for a config that leaves it unset, as the original did.
    def __init__(self, trunk: nn.Module, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                "Channel dims of trunk and neck do not match: "
                f"trunk.channel_list={list(trunk.channel_list)}, "
                f"neck.backbone_channel_list={list(neck.backbone_channel_list)}"
            )
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, sample: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Image [B, 3, S, S] -> dict.

        Returns:
            ``backbone_fpn``: list of [B, d_model, H_i, W_i], highest resolution first (strides 4, 8, 16 for
            Hiera with scalp 1); ``vision_pos_enc``: their positional encodings, same shapes;
            ``vision_features``: ``backbone_fpn[-1]`` (stride 16 with scalp 1).
        """
        features, pos = self.neck(self.trunk(sample))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


def _neck_defaults(backbone_channel_list: list[int]) -> dict:
    # The neck section every official SAM 2.0 / 2.1 config uses (only the channel list changes).
    return {
        "position_encoding": {"num_pos_feats": 256, "normalize": True, "scale": None, "temperature": 10000},
        "d_model": 256,
        "backbone_channel_list": backbone_channel_list,
        "fpn_top_down_levels": [2, 3],
        "fpn_interp_model": "nearest",
    }


# Image-encoder sections of facebookresearch/sam2 sam2/configs/sam2/sam2_hiera_{t,s,b+,l}.yaml and
# sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml (identical between 2.0 and 2.1), with the Hiera constructor
# defaults written out where a yaml leaves them unset. No model yaml sets drop_path_rate (default 0.0); the 2.1
# training config sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml sets drop_path_rate 0.1 for fine-tuning.
# MPG-SAM 2 builds sam2_hiera_l.yaml. Keyed by the size tag of those file names (t, s, b+, l), the one name of a
# SAM 2 size in this project.
HIERA_PRESETS: dict[str, dict] = {
    "t": {
        "scalp": 1,
        "trunk": {
            "embed_dim": 96,
            "num_heads": 1,
            "stages": [1, 2, 7, 2],
            "global_att_blocks": [5, 7, 9],
            "window_pos_embed_bkg_spatial_size": [7, 7],
            "window_spec": [8, 4, 14, 7],  # default
        },
        "neck": _neck_defaults([768, 384, 192, 96]),
    },
    "s": {
        "scalp": 1,
        "trunk": {
            "embed_dim": 96,
            "num_heads": 1,
            "stages": [1, 2, 11, 2],
            "global_att_blocks": [7, 10, 13],
            "window_pos_embed_bkg_spatial_size": [7, 7],
            "window_spec": [8, 4, 14, 7],  # default
        },
        "neck": _neck_defaults([768, 384, 192, 96]),
    },
    "b+": {
        "scalp": 1,
        "trunk": {
            "embed_dim": 112,
            "num_heads": 2,
            "stages": [2, 3, 16, 3],  # default
            "global_att_blocks": [12, 16, 20],  # default
            "window_pos_embed_bkg_spatial_size": [14, 14],  # default
            "window_spec": [8, 4, 14, 7],  # default
        },
        "neck": _neck_defaults([896, 448, 224, 112]),
    },
    "l": {
        "scalp": 1,
        "trunk": {
            "embed_dim": 144,
            "num_heads": 2,
            "stages": [2, 6, 36, 4],
            "global_att_blocks": [23, 33, 43],
            "window_pos_embed_bkg_spatial_size": [7, 7],
            "window_spec": [8, 4, 16, 8],
        },
        "neck": _neck_defaults([1152, 576, 288, 144]),
    },
}


def image_encoder_config(size: str) -> dict:
    """A deep copy of ``HIERA_PRESETS[size]`` (safe to modify; ``size``: t, s, b+ or l), shaped like a SAM 2 yaml
    ``image_encoder`` section."""
    if size not in HIERA_PRESETS:
        raise KeyError(f"unknown SAM 2 size {size!r}; known: {list(HIERA_PRESETS)}")
    return copy.deepcopy(HIERA_PRESETS[size])


def _strip_target(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if k != "_target_"}


def build_image_encoder(config: Mapping) -> ImageEncoder:
    """Build an :class:`ImageEncoder` from a SAM 2 yaml-shaped ``image_encoder`` section.

    Args:
        config: ``{"scalp": int, "trunk": {Hiera kwargs}, "neck": {FpnNeck kwargs, "position_encoding":
            {PositionEmbeddingSine kwargs}}}``, e.g. ``HIERA_PRESETS["l"]`` or a resolved Hydra config.
            ``_target_`` keys are ignored (the classes are fixed).
    """
    trunk = Hiera(**_strip_target(config["trunk"]))
    neck_cfg = _strip_target(config["neck"])
    position_encoding = PositionEmbeddingSine(**_strip_target(neck_cfg.pop("position_encoding")))
    neck = FpnNeck(position_encoding=position_encoding, **neck_cfg)
    # parity: a config without ``scalp`` meant the original's default, 0.
    return ImageEncoder(trunk, neck, scalp=config.get("scalp", 0))
