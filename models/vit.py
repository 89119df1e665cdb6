"""The Sapiens backbone: a plain ViT (patch 16, qkv bias, LayerNorm eps 1e-6, class token).

Parameter names follow the MAE / timm layout (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.{i}.attn.qkv``, ``norm``) so that MAE checkpoints and fine-tuning
share one state dict (``training.import_sapiens`` maps Sapiens' mmpretrain names onto it).
MAE pretraining uses the class token; fine-tuning, as in Sapiens, runs on the patch tokens
only (``cls_token=False``: no class token, and a position table without its slot). The model
knows nothing of Ray or of parallelism: activation checkpointing, FSDP and compilation are
applied from outside (``training.parallel``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(kw_only=True)
class ViTConfig:
    # input (height, width) in pixels; multiples of patch_size. Encoder files written before
    # the glossary rename call it img_size (read through runtime.config.stored_fields)
    image_size: tuple[int, int] = field(metadata={"aliases": ["img_size"]})
    patch_size: int = 16  # square patch side in pixels
    embed_dim: int  # token width D
    depth: int  # number of transformer blocks
    num_heads: int  # attention heads; must divide embed_dim
    mlp_dim: int  # hidden width of each block's MLP
    qkv_bias: bool = True  # bias on the fused q/k/v projection (Sapiens: yes)
    ln_eps: float = 1e-6  # LayerNorm epsilon
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear ramp from 0)
    cls_token: bool = True  # a class token (MAE pretraining); Sapiens fine-tunes without one
    # zero padding of the patch convolution; Sapiens' pose and normal models use 2 (the grid
    # is the same while 2 * padding < patch_size, each patch shifted by ``padding`` pixels)
    patch_padding: int = 0

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        if not 0 <= 2 * self.patch_padding < self.patch_size:
            raise ValueError(
                f"patch_padding must be in [0, patch_size / 2), got {self.patch_padding}"
            )
        for side in self.image_size:
            if side <= 0 or side % self.patch_size:
                raise ValueError(
                    f"image_size {self.image_size} must be positive multiples of patch_size "
                    f"{self.patch_size}"
                )
        if min(self.embed_dim, self.depth, self.num_heads, self.mlp_dim) <= 0:
            raise ValueError("embed_dim, depth, num_heads and mlp_dim must be positive")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide embed_dim {self.embed_dim}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_extra_tokens(self) -> int:
        """Tokens before the patches in the sequence and the position table (the class token)."""
        return int(self.cls_token)


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def sapiens_0_3b(image_size: int | tuple[int, int] = 1024, **kw) -> ViTConfig:
    return ViTConfig(
        image_size=_size(image_size), embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, **kw
    )


def sapiens_0_6b(image_size: int | tuple[int, int] = 1024, **kw) -> ViTConfig:
    return ViTConfig(
        image_size=_size(image_size), embed_dim=1280, depth=32, num_heads=16, mlp_dim=5120, **kw
    )


def sapiens_1b(image_size: int | tuple[int, int] = 1024, **kw) -> ViTConfig:
    return ViTConfig(
        image_size=_size(image_size), embed_dim=1536, depth=40, num_heads=24, mlp_dim=6144, **kw
    )


def sapiens_2b(image_size: int | tuple[int, int] = 1024, **kw) -> ViTConfig:
    return ViTConfig(
        image_size=_size(image_size), embed_dim=1920, depth=48, num_heads=32, mlp_dim=7680, **kw
    )


def vit_tiny(image_size: int | tuple[int, int] = 224, **kw) -> ViTConfig:
    """A small model for quick experiments (4 blocks x 192 wide)."""
    return ViTConfig(
        image_size=_size(image_size), embed_dim=192, depth=4, num_heads=3, mlp_dim=768, **kw
    )


def vit_test(image_size: int | tuple[int, int] = 32, **kw) -> ViTConfig:
    """The smallest useful model, for tests on 2 CPUs (2 blocks x 64 wide)."""
    return ViTConfig(
        image_size=_size(image_size), embed_dim=64, depth=2, num_heads=4, mlp_dim=256, **kw
    )


PRESETS: dict[str, Callable[..., ViTConfig]] = {
    "sapiens_0.3b": sapiens_0_3b,
    "sapiens_0.6b": sapiens_0_6b,
    "sapiens_1b": sapiens_1b,
    "sapiens_2b": sapiens_2b,
    "vit_tiny": vit_tiny,
    "vit_test": vit_test,
}


def preset(name: str, **kw) -> ViTConfig:
    """The config of a named preset; keyword arguments (image_size, drop_path) are passed on."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name](**kw)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole samples during training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [N, heads, L, D/heads]
        # flash / memory-efficient kernels on GPU, the math kernel on CPU
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, L, D/heads]
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        qkv_bias: bool = True,
        ln_eps: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size patches projected to D by a strided conv."""

    def __init__(self, patch_size: int, dim: int, padding: int = 0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, 3, H, W] -> [N, L, D]


class VisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, dim, config.patch_padding)
        extra = config.num_extra_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if extra else None
        self.pos_embed = nn.Parameter(torch.zeros(1, extra + config.num_patches, dim))
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_heads,
                config.mlp_dim,
                qkv_bias=config.qkv_bias,
                ln_eps=config.ln_eps,
                drop_path=rate,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=config.ln_eps)
        self.init_weights()

    def init_weights(self) -> None:
        """MAE initialisation: xavier-uniform linears and patch conv, N(0, 0.02) tokens."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_linear_and_norm)

    @property
    def num_layers(self) -> int:
        """Layer ids run 0..num_layers: 0 embeddings, i+1 block i, num_layers the final norm.

        Layer-wise lr decay scales the lr of layer id ``i`` by ``decay ** (num_layers - i)``.
        """
        return self.config.depth + 1

    def layer_id(self, param_name: str) -> int:
        return layer_id(param_name, self.config.depth)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The position table for a patch grid, interpolated when it differs from the config."""
        if grid == self.config.grid:
            return self.pos_embed
        extra = self.config.num_extra_tokens
        return interpolate_pos_embed(self.pos_embed, self.config.grid, grid, extra)

    def forward_features(self, x: Tensor) -> Tensor:
        """Patch tokens after the final norm, class token dropped: [N, 3, H, W] -> [N, L, D]."""
        grid = _grid_of(x, self.config.patch_size)
        extra = self.config.num_extra_tokens
        pos = self.pos_embed_for(grid)  # [1, extra + L, D]
        tokens = self.patch_embed(x) + pos[:, extra:]  # [N, L, D]
        if self.cls_token is not None:
            cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # [N, 1, D]
            tokens = torch.cat([cls, tokens], dim=1)  # [N, 1 + L, D]
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, extra:]

    def forward(self, x: Tensor) -> Tensor:
        """Feature map for dense heads: [N, 3, H, W] -> [N, D, H/16, W/16]."""
        gh, gw = _grid_of(x, self.config.patch_size)
        tokens = self.forward_features(x)  # [N, L, D]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


def init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _grid_of(x: Tensor, patch_size: int) -> tuple[int, int]:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch_size}")
    return h // patch_size, w // patch_size


def layer_id(param_name: str, depth: int) -> int:
    """Layer id of an encoder parameter for layer-wise lr decay (see ``num_layers``).

    Prefixes such as ``backbone.`` or ``encoder.`` are ignored; anything that is not an
    embedding or a block (final norm, heads) gets ``depth + 1``.
    """
    parts = param_name.split(".")
    for i, part in enumerate(parts):
        if part in ("cls_token", "pos_embed", "patch_embed", "mask_token"):
            return 0
        if part == "blocks" and i + 1 < len(parts) and parts[i + 1].isdigit():
            return int(parts[i + 1]) + 1
    return depth + 1


def interpolate_pos_embed(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], extra: int = 1
) -> Tensor:
    """Resize a [1, extra + gh*gw, D] position table to another grid (bicubic); the first
    ``extra`` rows (the class token's, when there is one) are kept as they are."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    expected = extra + old_grid[0] * old_grid[1]
    if pos_embed.ndim != 3 or pos_embed.shape[1] != expected:
        raise ValueError(
            f"pos_embed {tuple(pos_embed.shape)} does not match grid {old_grid} "
            f"(expected [1, {expected}, D])"
        )
    if old_grid == new_grid:
        return pos_embed
    cls, grid = pos_embed[:, :extra], pos_embed[:, extra:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, *old_grid, dim).permute(0, 3, 1, 2).float()  # [1, D, gh, gw]
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([cls, grid.to(pos_embed.dtype)], dim=1)


def load_encoder_state(
    model: VisionTransformer,
    state_dict: Mapping[str, Tensor],
    strict: bool = True,
    grid: tuple[int, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Load an encoder state dict, interpolating ``pos_embed`` when the grids differ.

    Keys may carry an ``encoder.`` prefix (as in MAE checkpoints). A state with a class
    token (``cls_token`` present: its position table has the token's slot first) loads into
    a model without one by dropping the token and its slot, as Sapiens' fine-tuning does.
    ``grid`` is the stored table's patch grid; None takes the model's when the sizes agree,
    else a square one. Returns (missing, unexpected) like ``load_state_dict``; with
    ``strict`` any mismatch raises.
    """
    state = {k.removeprefix("encoder."): v for k, v in state_dict.items()}
    stored_extra = int("cls_token" in state)
    if not model.config.cls_token and "cls_token" in state:
        del state["cls_token"]
    if "pos_embed" in state:
        pos = state["pos_embed"]
        if stored_extra > model.config.num_extra_tokens:
            pos = pos[:, stored_extra:]
        extra = min(stored_extra, model.config.num_extra_tokens)
        old_grid = grid or _square_grid(pos.shape[1] - extra, model.config.grid)
        state["pos_embed"] = interpolate_pos_embed(pos, old_grid, model.config.grid, extra)
    result = model.load_state_dict(state, strict=strict)
    return list(result.missing_keys), list(result.unexpected_keys)


def _square_grid(tokens: int, target: tuple[int, int]) -> tuple[int, int]:
    """The grid of a stored table: the target's when sizes agree, else a square one."""
    if tokens == target[0] * target[1]:
        return target
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(
            f"cannot infer the grid of a position table with {tokens} patch tokens "
            "(not square); interpolate it with interpolate_pos_embed and an explicit grid"
        )
    return side, side
