"""MAE pretraining of a Sapiens backbone on curated shards, on Ray Train.

    python -m training.pretrain --dataset s3://bucket/humans300m --output s3://bucket/runs/a \
        --preset sapiens_0.3b --num-workers 8 --use-gpu true
    ray job submit --working-dir . -- python -m training.pretrain --config pretrain.yaml

Without a cluster address (``--ray-address`` or RAY_ADDRESS) it starts an embedded local Ray;
``--no-ray true`` runs the same loop in this process. Rerunning with the same ``--output``
resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass

from models.vit import PRESETS
from runtime.storage import locate
from training.parallel import STRATEGIES


@dataclass(kw_only=True)
class PretrainConfig:
    dataset: str  # dataset folder with shards/ and manifests/ (local path or s3://)
    output: str  # run folder for checkpoints, encoder.pt and summary.json (local or s3://)
    log_dir: str | None = (
        None  # local folder for metrics.jsonl, TensorBoard, pictures; default <output>/logs, or ./pretrain_logs/<name> when output is on S3
    )
    preset: str = "sapiens_0.3b"  # backbone: sapiens_0.3b/0.6b/1b/2b, vit_tiny, vit_test
    img_size: int = 1024  # square input side in pixels (1024 in the paper)
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder (up to 0.95)
    norm_pix_loss: bool = True  # regress per-patch normalised pixels
    decoder_dim: int = 512  # MAE decoder width (paper: 512)
    decoder_depth: int = 8  # MAE decoder blocks (paper: 8)
    decoder_heads: int = 16  # MAE decoder attention heads (paper: 16)
    drop_path: float = 0.0  # stochastic depth of the encoder
    batch_size: int = 32  # images per micro-batch per Ray Train worker
    accum_steps: int = 1  # micro-batches accumulated per optimiser step
    total_steps: int = 1000  # optimiser steps of the whole run
    warmup_steps: int = 100  # linear warmup steps
    base_lr: float = 1.5e-4  # lr per 256 images of global batch (lr = base x global / 256)
    min_lr_ratio: float = 0.0  # final lr of the cosine as a fraction of the peak
    weight_decay: float = 0.05  # AdamW decay (not on norms, biases, positions, tokens)
    beta2: float = 0.95  # AdamW beta2 (beta1 is 0.9)
    clip_grad: float = 1.0  # gradient norm clipping; 0 disables
    num_workers: int = 1  # Ray Train workers (one per GPU)
    use_gpu: bool = False  # one GPU per Ray Train worker
    cpus_per_worker: float = (
        1.0  # CPUs reserved per Ray Train worker (0.5 fits 2 workers on 2 CPUs)
    )
    loader_workers: int = 4  # DataLoader processes per Ray Train worker (0: in-process)
    shuffle_buffer: int = 1000  # samples per loader process held for shuffling
    where: str | None = (
        None  # DuckDB predicate on manifest rows selecting samples, e.g. "num_persons >= 2"
    )
    strategy: str = "auto"  # auto (FSDP for 1B/2B, DDP below), ddp, fsdp, none
    activation_checkpointing: bool = False  # recompute block activations in backward
    bf16: bool = True  # bf16 autocast on GPU (ignored on CPU)
    compile: bool = False  # torch.compile each block
    log_every: int = 10  # steps between metric lines
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    picture_every: int = 500  # steps between input/masked/reconstruction PNGs; 0 disables
    seed: int = 0  # model init, masking and data order
    no_ray: bool = False  # run in this process without Ray (debugging, single device)
    ray_address: str | None = None  # Ray cluster; default RAY_ADDRESS or an embedded local Ray
    name: str = "pretrain"  # run name (Ray Train, default log folder)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        if not 0.0 < self.mask_ratio <= 0.95:
            raise ValueError(f"mask_ratio must be in (0, 0.95], got {self.mask_ratio}")
        positive = ("img_size", "batch_size", "accum_steps", "total_steps", "num_workers")
        for name in (*positive, "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("warmup_steps must be between 0 and total_steps")
        if self.base_lr <= 0 or self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError("base_lr > 0, weight_decay >= 0 and clip_grad >= 0 are required")
        if self.no_ray and self.num_workers != 1:
            raise ValueError("--no-ray runs a single worker; set --num-workers 1")
        if self.log_dir is None:
            out = locate(self.output)
            self.log_dir = f"./pretrain_logs/{self.name}" if out.is_s3 else f"{out.path}/logs"

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accum_steps * self.num_workers


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    from training.config_cli import add_flags, build, read_file

    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--config", help="YAML or JSON file of PretrainConfig fields (flags win)")
    add_flags(parser, PretrainConfig)
    args = parser.parse_args(argv)
    return build(PretrainConfig, args, read_file(args.config) if args.config else None)


def check_job_paths(config: PretrainConfig) -> None:
    """Under ``ray job submit --working-dir``, refuse relative local paths (see
    ``runtime.ray_env.check_submitted_job``)."""
    from runtime.ray_env import check_submitted_job, submitted_job_runtime_env

    log_dir = config.log_dir
    relative_log_dir = log_dir and not locate(log_dir).is_s3 and not os.path.isabs(log_dir)
    in_working_dir = "working_dir" in (submitted_job_runtime_env() or {})
    if in_working_dir and relative_log_dir and locate(config.output).is_s3:
        # the default beside an S3 output (./pretrain_logs/<name>): checkpoints are safe
        logging.getLogger(__name__).warning(
            "--log-dir %r is relative: the job's metrics and pictures will stay in its "
            "temporary working dir on the cluster (%s); give an absolute --log-dir",
            log_dir,
            os.getcwd(),
        )
        log_dir = None
    check_submitted_job(
        {"--dataset": config.dataset, "--output": config.output, "--log-dir": log_dir}
    )


def run(config: PretrainConfig) -> dict:
    """Train to ``total_steps`` (resuming if a checkpoint exists); returns the summary."""
    from runtime.storage import read_bytes
    from training.pretrain_loop import train_loop
    from training.ray_train import RayScaling, launch

    check_job_paths(config)
    values = dataclasses.asdict(config)
    if config.no_ray:
        train_loop(values)
    else:
        scaling = RayScaling(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            cpus_per_worker=config.cpus_per_worker,
            address=config.ray_address,
            name=config.name,
        )
        launch(train_loop, values, scaling)
    return json.loads(read_bytes(locate(config.output).join("summary.json")))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = parse_args(argv)
    summary = run(config)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
