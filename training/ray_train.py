"""Ray Train wiring shared by pretraining and fine-tuning.

``launch`` runs a plain ``train_loop(config: dict)`` on a ``TorchTrainer``: on the cluster
named by ``address`` / ``RAY_ADDRESS`` (as under ``ray job submit``), else on an embedded
local Ray. ``worker_context`` tells the loop its rank, world size and device with or without
Ray, so the same loop also runs in-process (``--no-ray``) for debugging and benchmarks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from runtime.ray_env import start_ray

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RayScaling:
    num_workers: int  # Ray Train workers (one per GPU)
    use_gpu: bool  # one GPU per worker
    cpus_per_worker: float  # CPUs reserved per worker (its loader processes run inside it)
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS or an embedded local Ray
    start_timeout_s: float = 120.0  # give up when workers cannot be placed in this time
    storage_path: str | None = None  # Ray Train's own run folder (local or s3://)
    name: str = "pretrain"  # Ray Train run name

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0:
            raise ValueError("num_workers >= 1 and cpus_per_worker > 0 are required")


@dataclass(frozen=True)
class WorkerContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def worker_context() -> WorkerContext:
    """Rank, world size and device of this process (Ray Train worker or plain process)."""
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        try:
            import ray.train
            import ray.train.torch

            local = ray.train.get_context().get_local_rank()
            device = ray.train.torch.get_device()
        except Exception:  # a process group set up outside Ray (torchrun)
            local = int(os.environ.get("LOCAL_RANK", 0))
            device = (
                torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
            )
        return WorkerContext(rank, world, local, device)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return WorkerContext(0, 1, 0, device)


def launch(train_loop: Callable[[dict], None], config: dict, scaling: RayScaling) -> None:
    """Run ``train_loop(config)`` on ``scaling.num_workers`` Ray Train workers and wait."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # bounded start: with too few resources Ray Train would otherwise retry for ever
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(scaling.start_timeout_s))
    start_ray(scaling.address, include_dashboard=False)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={
                "CPU": scaling.cpus_per_worker,
                **({"GPU": 1} if scaling.use_gpu else {}),
            },
        ),
        run_config=RunConfig(name=scaling.name, storage_path=scaling.storage_path),
    )
    trainer.fit()
