"""SAM's two-way transformer: prompt tokens and image tokens attend to each other (unchanged by MPG-SAM 2).

Original: ``TwoWayTransformer`` / ``TwoWayAttentionBlock`` in ``models/sam2/modeling/sam/transformer.py``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mpgsam2.modeling.sam2.common import MLP, Attention


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention (post-norm).

    Args:
        embedding_dim: token width C.
        num_heads: attention heads.
        mlp_dim: hidden width of the token MLP.
        activation: activation class of the token MLP.
        attention_downsample_rate: internal width divisor of the two cross-attentions.
        skip_first_layer_pe: the first block's self-attention sees no positional encoding and has no residual.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """queries, query_pe: [B, N, C]; keys, key_pe: [B, HW, C] -> (queries [B, N, C], keys [B, HW, C])."""
        if self.skip_first_layer_pe:
            # parity: SAM replaces (no residual) the tokens by their self-attention in the first block.
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of two-way blocks followed by a last token->image attention and LayerNorm.

    Args:
        depth: number of two-way blocks.
        embedding_dim: width C.
        num_heads: attention heads.
        mlp_dim: hidden width of the token MLPs.
        activation: activation class of the token MLPs.
        attention_downsample_rate: internal width divisor of the cross-attentions.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Run the two-way transformer.

        Args:
            image_embedding: [B, C, H, W] image tokens.
            image_pe: [B, C, H, W] their positional encoding.
            point_embedding: [B, N, C] prompt / output tokens (also used as their positional encoding).

        Returns:
            queries: [B, N, C] processed tokens.
            keys: [B, H*W, C] processed image tokens.
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)

        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
