"""SAM 2 prompt encoder with MPG-SAM 2's text token (spec §1.4).

Original: ``models/sam2/modeling/sam/prompt_encoder.py`` of the MPG-SAM 2 fork (the EVF-SAM variant that takes
``text_embeds``). Points, boxes and masks are encoded exactly as in SAM 2; the text token(s) are appended after
the point / box tokens of the sparse prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mpgsam2.modeling.sam2.common import LayerNorm2d
from mpgsam2.modeling.sam2.position_encoding import PositionEmbeddingRandom


class PromptEncoder(nn.Module):
    """Encodes point, box, mask and text prompts for the SAM 2 mask decoder.

    Args:
        embed_dim: prompt width C (the SAM hidden width).
        image_embedding_size: (E_h, E_w), spatial size of the image embedding (image size / backbone stride).
        input_image_size: (H, W) of the image given to the image encoder; point coordinates are in its pixels.
        mask_in_chans: hidden channels of the mask downscaling convolutions.
        activation: activation class used in the mask downscaling stack.
    """

    num_point_embeddings = 4  # positive / negative point + two box corners

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid -> [1, C, E_h, E_w]."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """points: [B, N, 2] pixel (x, y); labels: [B, N] -> [B, N (+1 if pad), C]."""
        points = points + 0.5  # centre of the pixel
        if pad:
            # parity: the padding point is appended after the half-pixel shift, at (0, 0) with label -1.
            padding_point = torch.zeros((points.shape[0], 1, 2), device=points.device, dtype=points.dtype)
            padding_label = -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)
            points = torch.cat([points, padding_point], dim=1)
            labels = torch.cat([labels, padding_label], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels.unsqueeze(-1)
        # Label -1 (padding) replaces the coordinate encoding by the learned "not a point" embedding; labels 0..3
        # add their type embedding (negative, positive, box top-left, box bottom-right).
        embedding = torch.where(
            labels == -1, torch.zeros_like(embedding) + self.not_a_point_embed.weight, embedding
        )
        for i, type_embed in enumerate(self.point_embeddings):
            embedding = torch.where(labels == i, embedding + type_embed.weight, embedding)
        return embedding

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """boxes: [B, 4] pixel (x0, y0, x1, y1) -> [B, 2, C]."""
        coords = (boxes + 0.5).reshape(-1, 2, 2)
        corners = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return corners + corner_types

    @staticmethod
    def _batch_size(
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
        text_embeds: Tensor | None,
    ) -> int:
        # parity: the first prompt that is given decides the batch size; text comes last in that order.
        for prompt in (points[0] if points is not None else None, boxes, masks, text_embeds):
            if prompt is not None:
                return prompt.shape[0]
        return 1

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
        text_embeds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed the prompts.

        Args:
            points: (coords [B, N, 2] pixel (x, y), labels [B, N]: 1 positive, 0 negative, -1 padding) or None.
                Without boxes a padding point (label -1) is appended.
            boxes: [B, 4] pixel boxes or None.
            masks: [B, 1, 4 * E_h, 4 * E_w] dense mask prompt or None.
            text_embeds: [B, L_s, C] text tokens appended to the sparse prompt (MPG-SAM 2: L_s = 1) or None.

        Returns:
            sparse: [B, N', C] (point tokens, box corners, then text tokens).
            dense: [B, C, E_h, E_w] (the encoded mask, or the learned no-mask embedding broadcast).
        """
        bs = self._batch_size(points, boxes, masks, text_embeds)
        device = self.point_embeddings[0].weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if text_embeds is not None:
            sparse = torch.cat([sparse, text_embeds], dim=1)

        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
