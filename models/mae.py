"""Masked autoencoder around the Sapiens ViT (after facebookresearch/mae, models_mae.py).

The encoder sees only the visible patches; a light decoder (8 x 512, 16 heads) reconstructs
every patch; the loss is the MSE against per-patch normalised pixels, on masked patches only.
Both position tables are fixed 2D sine-cosine embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.vit import Block, VisionTransformer, ViTConfig, init_linear_and_norm


@dataclass(kw_only=True)
class MAEConfig:
    encoder: ViTConfig  # the backbone being pretrained
    decoder_dim: int = 512  # decoder token width
    decoder_depth: int = 8  # decoder blocks
    decoder_heads: int = 16  # decoder attention heads
    decoder_mlp_dim: int = 2048  # decoder MLP hidden width
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder
    norm_pix_loss: bool = True  # targets normalised per patch: (x - mean) / sqrt(var + 1e-6)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio <= 0.95:
            raise ValueError(f"mask_ratio must be in (0, 0.95], got {self.mask_ratio}")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError("decoder_heads must divide decoder_dim")
        if min(self.decoder_dim, self.decoder_depth, self.decoder_mlp_dim) <= 0:
            raise ValueError("decoder sizes must be positive")
        if not self.encoder.cls_token or self.encoder.patch_padding:
            # the reference MAE: a class token, and patches that patchify() cuts the same way
            raise ValueError("MAE pretraining needs an encoder with a class token, no padding")
        visible = num_visible(self.encoder.num_patches, self.mask_ratio)
        if visible < 1:
            raise ValueError(
                f"mask_ratio {self.mask_ratio} leaves no visible patch of "
                f"{self.encoder.num_patches}"
            )


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample; the same for every sample so a batch stays rectangular."""
    return int(num_patches * (1 - mask_ratio))


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> np.ndarray:
    """Fixed 2D sine-cosine table [1 (+1), gh*gw, dim]: half the channels encode the row,
    half the column; each half is [sin(p * w_k), cos(p * w_k)] with w_k = 10000^(-k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need dim divisible by 4, got {dim}")
    rows, cols = np.meshgrid(
        np.arange(grid[0], dtype=np.float64), np.arange(grid[1], dtype=np.float64), indexing="ij"
    )
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)  # [L, dim/4]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # [L, dim/2]

    # the column (w) code first, then the row (h) code, as in the MAE reference
    table = np.concatenate([encode(cols), encode(rows)], axis=1)  # [L, dim]
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return table.astype(np.float32)


class MAE(nn.Module):
    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder
        self.encoder = VisionTransformer(enc)
        self.encoder.pos_embed.requires_grad_(False)  # fixed sin-cos during pretraining
        dim = config.decoder_dim
        self.decoder_embed = nn.Linear(enc.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + enc.num_patches, dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(dim, config.decoder_heads, config.decoder_mlp_dim, ln_eps=enc.ln_eps)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dim, eps=enc.ln_eps)
        self.decoder_pred = nn.Linear(dim, enc.patch_size**2 * 3)
        self.init_weights()

    def init_weights(self) -> None:
        enc = self.config.encoder
        if self.encoder.pos_embed.is_meta:  # counting parameters only
            return
        with torch.no_grad():
            self.encoder.pos_embed.copy_(
                torch.from_numpy(sincos_pos_embed(enc.embed_dim, enc.grid))
            )
            self.decoder_pos_embed.copy_(
                torch.from_numpy(sincos_pos_embed(self.config.decoder_dim, enc.grid))
            )
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ):
            module.apply(init_linear_and_norm)

    # -- patches ---------------------------------------------------------------------------

    def patchify(self, imgs: Tensor) -> Tensor:
        """[N, 3, H, W] -> [N, L, p*p*3], patches in row-major order, pixels (p, q, c)."""
        p = self.config.encoder.patch_size
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, q := p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // q), p * q * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[N, L, p*p*3] -> [N, 3, H, W] (the config's grid)."""
        p = self.config.encoder.patch_size
        gh, gw = self.config.encoder.grid
        x = x.reshape(x.shape[0], gh, gw, p, p, 3)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], 3, gh * p, gw * p)

    def random_masking(self, x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        """Keep a random subset of each sample's tokens (per-sample shuffle by argsort of noise).

        x: [N, L, D] -> (visible [N, K, D], mask [N, L] with 1 = hidden, ids_restore [N, L]).
        """
        n, length, dim = x.shape
        keep = num_visible(length, mask_ratio)
        noise = torch.rand(n, length, device=x.device)  # [N, L]
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the first `keep` are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]  # [N, K]
        visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # [N, K, D]
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # [N, L] back in patch order
        return visible, mask, ids_restore

    # -- the three steps -------------------------------------------------------------------

    def forward_encoder(self, imgs: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        enc = self.encoder
        pos = enc.pos_embed  # [1, 1 + L, D]
        x = enc.patch_embed(imgs) + pos[:, 1:]  # [N, L, D]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)  # [N, K, D]
        cls = (enc.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # [N, 1, D]
        x = torch.cat([cls, x], dim=1)  # [N, 1 + K, D]
        for block in enc.blocks:
            x = block(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.decoder_embed(latent)  # [N, 1 + K, Dd]
        n, length = ids_restore.shape
        hidden = self.mask_token.expand(n, length + 1 - x.shape[1], -1)  # [N, L - K, Dd]
        patches = torch.cat([x[:, 1:], hidden], dim=1)  # [N, L, Dd] in shuffled order
        index = ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2])
        patches = torch.gather(patches, 1, index)  # [N, L, Dd] in patch order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # [N, 1 + L, Dd]
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # [N, L, p*p*3]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the masked patches only."""
        target = self.patchify(imgs)  # [N, L, p*p*3]
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum()

    def forward(
        self, imgs: Tensor, mask_ratio: float | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """imgs [N, 3, H, W] (the config's size) -> (loss, pred [N, L, p*p*3], mask [N, L])."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if tuple(imgs.shape[-2:]) != self.config.encoder.image_size:
            raise ValueError(
                f"MAE expects images of {self.config.encoder.image_size}, got "
                f"{tuple(imgs.shape[-2:])}"
            )
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def reconstruct(self, pred: Tensor, imgs: Tensor) -> Tensor:
        """Predicted pixels back in image space (undoing the per-patch normalisation)."""
        if self.config.norm_pix_loss:
            target = self.patchify(imgs)
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        return self.unpatchify(pred)


def count_parameters(config: MAEConfig) -> tuple[int, int]:
    """(whole MAE, encoder alone) parameter counts, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = MAE(config)
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.encoder.parameters())
    return total, encoder
