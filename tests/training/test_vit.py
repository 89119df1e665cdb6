"""The ViT backbone: shapes, presets, layer ids, position-table interpolation and loading."""

from __future__ import annotations

import pytest
import torch

from models.vit import (
    PRESETS,
    VisionTransformer,
    ViTConfig,
    interpolate_pos_embed,
    layer_id,
    load_encoder_state,
    vit_test,
)


def test_forward_shapes() -> None:
    model = VisionTransformer(vit_test(image_size=(48, 32)))
    x = torch.randn(2, 3, 48, 32)
    assert model.config.grid == (3, 2)
    assert model.pos_embed.shape == (1, 1 + 6, 64)
    assert model.forward_features(x).shape == (2, 6, 64)
    assert model(x).shape == (2, 64, 3, 2)


def test_feature_map_matches_tokens() -> None:
    model = VisionTransformer(vit_test(image_size=32)).eval()
    x = torch.randn(1, 3, 32, 32)
    tokens = model.forward_features(x)
    fmap = model(x)
    # token t = row * gw + col
    torch.testing.assert_close(fmap[0, :, 1, 0], tokens[0, 2])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="multiples"):
        vit_test(image_size=30)
    with pytest.raises(ValueError, match="divide"):
        ViTConfig(image_size=(32, 32), embed_dim=64, depth=1, num_heads=5, mlp_dim=8)
    with pytest.raises(ValueError, match="expected images"):
        VisionTransformer(vit_test())(torch.randn(1, 1, 32, 32))


def test_presets_registry() -> None:
    assert set(PRESETS) == {
        "sapiens_0.3b",
        "sapiens_0.6b",
        "sapiens_1b",
        "sapiens_2b",
        "vit_tiny",
        "vit_test",
    }
    cfg = PRESETS["sapiens_1b"](image_size=(1024, 768))
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_dim) == (40, 1536, 24, 6144)
    assert cfg.grid == (64, 48)


def test_layer_ids() -> None:
    model = VisionTransformer(vit_test())
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids["pos_embed"] == ids["cls_token"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1
    assert ids["blocks.1.mlp.fc2.bias"] == 2
    assert ids["norm.weight"] == model.num_layers == 3
    assert layer_id("backbone.blocks.1.norm1.weight", 2) == 2
    assert layer_id("head.conv.weight", 2) == 3


def test_interpolate_pos_embed_keeps_cls_and_is_identity_on_same_grid() -> None:
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos
    out = interpolate_pos_embed(pos, (4, 4), (4, 3))
    assert out.shape == (1, 1 + 12, 8)
    torch.testing.assert_close(out[:, 0], pos[:, 0])
    # a constant table stays constant under bicubic resizing
    const = torch.ones(1, 17, 8)
    torch.testing.assert_close(interpolate_pos_embed(const, (4, 4), (8, 6)), torch.ones(1, 49, 8))
    with pytest.raises(ValueError, match="does not match"):
        interpolate_pos_embed(pos, (3, 3), (4, 4))


def test_load_encoder_state_interpolates() -> None:
    source = VisionTransformer(vit_test(image_size=64))  # 4x4 grid
    target = VisionTransformer(vit_test(image_size=(64, 48)))  # 4x3 grid
    state = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    missing, unexpected = load_encoder_state(target, state)
    assert missing == [] and unexpected == []
    torch.testing.assert_close(target.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert target.pos_embed.shape == (1, 13, 64)
    torch.testing.assert_close(target.pos_embed[:, 0], source.pos_embed[:, 0])


def test_input_of_another_size_uses_interpolated_positions() -> None:
    model = VisionTransformer(vit_test(image_size=32))
    assert model.forward_features(torch.randn(1, 3, 64, 48)).shape == (1, 12, 64)


def test_drop_path_only_in_training() -> None:
    model = VisionTransformer(vit_test(drop_path=0.5))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
