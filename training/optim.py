"""AdamW parameter groups, the lr scaling rule and the warmup + cosine schedule.

Shared by pretraining and fine-tuning: no weight decay on norms, biases, position
embeddings and tokens; optional layer-wise lr decay driven by a ``layer_id`` function.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "decoder_pos_embed")


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The MAE rule: lr = base lr x global batch / 256."""
    return base_lr * global_batch / 256


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay applies to matrices and convolution kernels only."""
    if param.ndim <= 1 or name.endswith(".bias"):
        return False
    return name.rsplit(".", 1)[-1] not in NO_DECAY_NAMES


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    layer_id: Callable[[str], int] | None = None,
    num_layers: int = 0,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Trainable parameters grouped by (decay or not, layer); frozen ones are left out.

    With ``layer_id`` and ``layer_decay < 1`` a parameter of layer i gets
    ``lr x layer_decay ** (num_layers - i)`` (see VisionTransformer.num_layers).
    """
    groups: dict[tuple[bool, int], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
        decay = decays(clean, param)
        layer = layer_id(clean) if layer_id is not None else num_layers
        scale = layer_decay ** (num_layers - layer)
        group = groups.setdefault(
            (decay, layer),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr": lr * scale,
                "lr_scale": scale,
            },
        )
        group["params"].append(param)
        group["names"].append(clean)
    return list(groups.values())


def adamw(
    groups: list[dict], *, lr: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    # names stay out of the optimiser: its state dict should hold tensors and numbers only
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    fused = all(p.is_cuda for g in clean for p in g["params"])
    return torch.optim.AdamW(clean, lr=lr, betas=betas, fused=fused or None)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to each group's lr, then cosine down to ``min_ratio`` of it."""
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
