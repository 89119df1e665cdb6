"""Parallelism applied to a model from outside: activation checkpointing, DDP or FSDP2,
torch.compile. The models themselves know nothing of it (torchtitan's parallelize pattern).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("auto", "ddp", "fsdp", "none")


def resolve_strategy(strategy: str, depth: int) -> str:
    """``auto``: FSDP for the 1B and 2B backbones (40+ blocks), DDP below; none alone."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return "none" if strategy == "auto" else strategy
    if strategy == "auto":
        return "fsdp" if depth >= 40 else "ddp"
    return strategy


def checkpoint_blocks(block_lists: Iterable[nn.ModuleList]) -> None:
    """Recompute each block's activations in the backward pass (saves memory, ~1/3 more compute)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks in block_lists:
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def parallelize(
    model: nn.Module,
    *,
    blocks: list[nn.ModuleList],
    strategy: str,
    device: torch.device,
    bf16: bool,
    activation_checkpointing: bool,
    compile: bool,
) -> nn.Module:
    """Wrap ``model`` (already on ``device``) for training; ``blocks`` are its block lists."""
    if activation_checkpointing:
        checkpoint_blocks(blocks)
    if compile:
        for block_list in blocks:
            for block in block_list:
                block.compile()  # per block: fast compiles, works under FSDP2
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kw = {"mp_policy": mp} if bf16 else {}
        for block_list in blocks:
            for block in block_list:
                fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying model of a DDP wrapper (FSDP2 keeps the module itself)."""
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel)
        else model
    )
