"""The MAE model: patches, masking, loss, position tables, parameter and FLOP counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.flops import mae_forward_flops, peak_flops, vit_forward_flops
from models.mae import MAE, MAEConfig, count_parameters, sincos_pos_embed
from models.vit import PRESETS, vit_test


def small_mae(mask_ratio: float = 0.75, **kw) -> MAE:
    cfg = MAEConfig(
        encoder=vit_test(image_size=(32, 48)),
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=4,
        decoder_mlp_dim=64,
        mask_ratio=mask_ratio,
        **kw,
    )
    return MAE(cfg)


def test_patchify_unpatchify_invert() -> None:
    model = small_mae()
    imgs = torch.randn(2, 3, 32, 48)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 6, 16 * 16 * 3)
    # patch 4 = row 1, column 1; pixel (p, q, c) layout
    torch.testing.assert_close(patches[1, 4, :3], imgs[1, :, 16, 16])
    torch.testing.assert_close(model.unpatchify(patches), imgs)


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.95])
def test_visible_token_count_is_exact(ratio: float) -> None:
    cfg = vit_test(image_size=(160, 160))  # 100 patches
    model = MAE(MAEConfig(encoder=cfg, decoder_dim=32, decoder_depth=1, decoder_heads=4))
    x = torch.randn(3, 100, 8)
    visible, mask, ids_restore = model.random_masking(x, ratio)
    keep = int(100 * (1 - ratio))
    assert visible.shape == (3, keep, 8)
    assert mask.sum(dim=1).tolist() == [100 - keep] * 3
    # the visible tokens are exactly the unmasked ones, and samples get different masks
    for i in range(3):
        kept = x[i][mask[i] == 0]
        assert sorted(kept[:, 0].tolist()) == sorted(visible[i, :, 0].tolist())
    assert not torch.equal(mask[0], mask[1])
    assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(100).expand(3, -1))
    latent, _, _ = model.forward_encoder(torch.randn(3, 3, 160, 160), ratio)
    assert latent.shape == (3, 1 + keep, 64)


def test_loss_counts_only_masked_patches() -> None:
    model = small_mae(norm_pix_loss=False)
    imgs = torch.randn(2, 3, 32, 48)
    target = model.patchify(imgs)
    mask = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]])
    pred = target.clone()
    pred[mask == 0] += 100.0  # huge error on visible patches must not matter
    assert model.forward_loss(imgs, pred, mask).item() == 0.0
    pred = target.clone()
    pred[mask == 1] += 2.0  # error 4 per pixel on masked patches
    assert model.forward_loss(imgs, pred, mask).item() == pytest.approx(4.0)


def test_norm_pix_target() -> None:
    model = small_mae(norm_pix_loss=True)
    imgs = torch.rand(1, 3, 32, 48) * 5 + 3
    target = model.patchify(imgs)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    mask = torch.ones(1, 6)
    assert model.forward_loss(imgs, normed, mask).item() == pytest.approx(0.0, abs=1e-8)
    torch.testing.assert_close(model.reconstruct(normed, imgs), imgs, rtol=1e-4, atol=1e-4)


def test_forward_and_backward() -> None:
    model = small_mae()
    loss, pred, mask = model(torch.randn(2, 3, 32, 48))
    assert pred.shape == (2, 6, 768) and mask.shape == (2, 6)
    loss.backward()
    assert model.encoder.pos_embed.grad is None  # fixed sin-cos
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.mask_token.grad is not None
    with pytest.raises(ValueError, match="expects images"):
        model(torch.randn(1, 3, 32, 32))


def test_sincos_closed_form() -> None:
    dim, grid = 16, (3, 5)
    table = sincos_pos_embed(dim, grid)
    assert table.shape == (1 + 15, dim)
    assert np.all(table[0] == 0)
    quarter = dim // 4
    for row in range(3):
        for col in range(5):
            emb = table[1 + row * 5 + col]
            for k in range(quarter):
                w = 1.0 / 10000 ** (k / quarter)
                assert emb[k] == pytest.approx(math.sin(col * w), abs=1e-6)
                assert emb[quarter + k] == pytest.approx(math.cos(col * w), abs=1e-6)
                assert emb[2 * quarter + k] == pytest.approx(math.sin(row * w), abs=1e-6)
                assert emb[3 * quarter + k] == pytest.approx(math.cos(row * w), abs=1e-6)
    model = small_mae()
    expected = torch.from_numpy(sincos_pos_embed(64, (2, 3)))[None]
    torch.testing.assert_close(model.encoder.pos_embed.data, expected)


@pytest.mark.parametrize(
    ("name", "published_total", "published_encoder"),
    [
        ("sapiens_0.3b", 0.336e9, 0.3073e9),
        ("sapiens_0.6b", 0.664e9, 0.6359e9),
        ("sapiens_1b", 1.169e9, 1.1407e9),
        ("sapiens_2b", 2.163e9, 2.1339e9),
    ],
)
def test_parameter_counts_match_published(
    name: str, published_total: float, published_encoder: float
) -> None:
    total, encoder = count_parameters(MAEConfig(encoder=PRESETS[name](image_size=1024)))
    assert abs(total - published_total) / published_total < 0.01
    assert abs(encoder - published_encoder) / published_encoder < 0.002


def test_flops_match_published_figures() -> None:
    # SAPIENS.md: 1.242T multiply-adds of the linears at 4096 tokens, ~4.1 TFLOP full forward
    cfg = PRESETS["sapiens_0.3b"](image_size=1024)
    full = vit_forward_flops(cfg, tokens=4096)
    linear_macs = 24 * 4096 * (4 * 1024**2 + 2 * 1024 * 4096) + 4096 * 768 * 1024
    assert linear_macs / 1e12 == pytest.approx(1.242, rel=0.01)
    assert full / 1e12 == pytest.approx(4.1, rel=0.02)
    masked = mae_forward_flops(MAEConfig(encoder=cfg))
    assert 0.2 * full < masked < 0.5 * full  # the encoder sees 25% of the patches
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("cpu") is None
