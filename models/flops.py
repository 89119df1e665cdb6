"""Analytic FLOP counts (1 multiply-add = 2 FLOPs) for throughput and MFU reporting.

Counted: every linear layer, the patch projection and the two attention products
(QK^T and AV). Not counted: norms, softmax, GELU, additions (a few % at most). Training
costs 3x the forward (backward = 2x forward), plus one more forward of each block when
activations are recomputed (reported separately so MFU stays comparable across runs).
"""

from __future__ import annotations

from models.mae import MAEConfig, num_visible
from models.vit import ViTConfig


def block_flops(tokens: int, dim: int, mlp_dim: int) -> int:
    """Forward FLOPs of one transformer block over ``tokens`` tokens."""
    linear = 2 * tokens * (4 * dim * dim + 2 * dim * mlp_dim)  # qkv + proj + fc1 + fc2
    attention = 2 * 2 * tokens * tokens * dim  # QK^T and AV
    return linear + attention


def vit_forward_flops(config: ViTConfig, tokens: int | None = None) -> int:
    """Forward FLOPs of the encoder on one image (all patches + class token by default)."""
    patches = config.num_patches
    tokens = 1 + patches if tokens is None else tokens
    embed = 2 * patches * 3 * config.patch_size**2 * config.embed_dim
    blocks = config.depth * block_flops(tokens, config.embed_dim, config.mlp_dim)
    return embed + blocks


def mae_forward_flops(config: MAEConfig, mask_ratio: float | None = None) -> int:
    """Forward FLOPs of the MAE on one image: encoder on visible tokens, decoder on all."""
    enc = config.encoder
    ratio = config.mask_ratio if mask_ratio is None else mask_ratio
    visible = 1 + num_visible(enc.num_patches, ratio)
    everything = 1 + enc.num_patches
    encoder = vit_forward_flops(enc, tokens=visible)
    decoder_embed = 2 * visible * enc.embed_dim * config.decoder_dim
    decoder = config.decoder_depth * block_flops(
        everything, config.decoder_dim, config.decoder_mlp_dim
    )
    pred = 2 * everything * config.decoder_dim * 3 * enc.patch_size**2
    return encoder + decoder_embed + decoder + pred


def mae_train_flops(config: MAEConfig, mask_ratio: float | None = None) -> int:
    """Model FLOPs of one training step per image (forward + backward = 3x forward)."""
    return 3 * mae_forward_flops(config, mask_ratio)


# Dense bf16 peak FLOP/s per device (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12 (matched first below)
    "H100 PCIe": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
}


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s of a device from its name, or None when unknown (e.g. CPUs)."""
    name = device_name.upper()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key.upper() in name:
            return PEAK_BF16_FLOPS[key]
    return None
