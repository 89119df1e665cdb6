"""Parameter groups (decay rules, layer-wise lr decay), the lr rule and the schedule."""

from __future__ import annotations

import pytest
import torch

from models.mae import MAE, MAEConfig
from models.vit import VisionTransformer, vit_test
from training.optim import adamw, param_groups, scaled_lr, warmup_cosine


def test_no_weight_decay_on_norms_biases_positions_and_tokens() -> None:
    model = MAE(MAEConfig(encoder=vit_test(), decoder_dim=32, decoder_depth=1, decoder_heads=4))
    groups = param_groups(model, lr=1e-3, weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert "encoder.blocks.0.attn.qkv.weight" in decayed
    assert "encoder.patch_embed.proj.weight" in decayed and "decoder_pred.weight" in decayed
    for name in ("encoder.cls_token", "mask_token", "encoder.norm.weight",
                 "encoder.blocks.1.norm2.bias", "decoder_embed.bias"):  # fmt: skip
        assert name in plain
    # the fixed sin-cos tables are not trained at all
    assert "encoder.pos_embed" not in decayed | plain
    assert "decoder_pos_embed" not in decayed | plain
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable


def test_layer_wise_lr_decay() -> None:
    model = VisionTransformer(vit_test())  # depth 2: ids 0..3
    groups = param_groups(model, lr=1.0, weight_decay=0.1, layer_id=model.layer_id,
                          num_layers=model.num_layers, layer_decay=0.5)  # fmt: skip
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr_of["norm.weight"] == 1.0
    assert lr_of["blocks.1.mlp.fc1.weight"] == 0.5
    assert lr_of["blocks.0.mlp.fc1.weight"] == 0.25
    assert lr_of["cls_token"] == lr_of["patch_embed.proj.weight"] == 0.125


def test_lr_rule_and_warmup_cosine() -> None:
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    param = torch.nn.Parameter(torch.zeros(2, 2))
    opt = adamw([{"params": [param], "lr": 1.0, "weight_decay": 0.0}], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lrs[-1] > 0.1 and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(opt, warmup_steps=20, total_steps=10)
