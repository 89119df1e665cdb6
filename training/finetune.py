"""Fine-tune a (pretrained) Sapiens backbone on labelled shards for one task, on Ray Train.

    ray job submit -- python -m training.finetune --task pose --data s3://b/labelled \
        --output s3://b/runs --pretrained mae.pt --preset sapiens_0.3b --workers 8 --gpu

Recipe (Sapiens): AdamW, weight decay 0.1 (none on norms, biases, position table, class
token), layer-wise lr decay 0.85 over the encoder (the head at the full lr), linear warmup
then cosine decay; gradient clipping 1.0; bf16 autocast on GPU. Each report carries a
checkpoint; a rerun with the same --output and --name resumes from the latest one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass

import torch

from schemas.labelled import NUM_CLASSES, TASKS
from training.models.vit import PRESETS, VisionTransformer, preset
from training.tasks.heads import TaskModel, load_pretrained
from training.tasks.losses import depth_loss, normal_loss, pose_loss, seg_loss


@dataclass(kw_only=True)
class FinetuneConfig:
    task: str  # pose | seg | depth | normal
    data: str  # labelled dataset (local folder or s3:// URI)
    output: str  # Ray Train storage path (local or s3://): checkpoints and results
    name: str = ""  # run name under output; default "finetune-<task>"
    preset: str = "sapiens_0.3b"  # backbone preset (training.models.vit.PRESETS)
    input_size: tuple[int, int] = (1024, 768)  # (height, width); multiples of 16
    pretrained: str | None = None  # MAE / encoder checkpoint (.pt); None trains from scratch
    head_channels: int = 768  # width of the deconvolution layers
    steps: int = 10_000  # optimiser steps
    batch_size: int = 8  # per worker
    lr: float = 5e-4  # peak lr of the head; encoder layer i gets lr * decay^(L - i)
    layer_decay: float = 0.85  # layer-wise lr decay
    weight_decay: float = 0.1  # AdamW weight decay (not on norms, biases, tokens)
    warmup_steps: int = 500  # linear warmup from 0
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    class_weights: list[float] | None = None  # seg: per-class CE weights (28); None = equal
    heatmap_sigma: float | None = None  # pose: Gaussian sigma in heatmap pixels
    workers: int = 1  # Ray Train workers
    cpus_per_worker: float = 1.0  # CPU share of each worker
    gpu: bool = False  # one GPU per worker; bf16 autocast
    loader_workers: int = 0  # DataLoader processes per worker
    checkpoint_every: int = 1000  # steps between checkpoints (and at the end)
    log_every: int = 20  # steps between metric reports
    seed: int = 0  # sampling and initialisation seed

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.name = self.name or f"finetune-{self.task}"
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if any(s <= 0 or s % 16 for s in self.input_size):
            raise ValueError(f"input_size {self.input_size} must be positive multiples of 16")
        if min(self.steps, self.batch_size, self.workers, self.head_channels) <= 0:
            raise ValueError("steps, batch_size, workers and head_channels must be positive")
        if not 0 < self.layer_decay <= 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("need 0 < layer_decay <= 1, lr > 0, weight_decay >= 0")
        if self.class_weights is not None and len(self.class_weights) != NUM_CLASSES:
            raise ValueError(f"class_weights needs {NUM_CLASSES} values")
        if self.warmup_steps < 0 or self.checkpoint_every <= 0 or self.log_every <= 0:
            raise ValueError("warmup_steps >= 0, checkpoint_every > 0 and log_every > 0")


def build_model(cfg: FinetuneConfig) -> TaskModel:
    encoder = VisionTransformer(preset(cfg.preset, img_size=cfg.input_size))
    if cfg.pretrained:
        import io

        from curation import storage

        state = torch.load(io.BytesIO(storage.read_bytes(storage.locate(cfg.pretrained))),
                           map_location="cpu", weights_only=True)  # fmt: skip
        load_pretrained(encoder, state)
    return TaskModel(encoder, cfg.task, cfg.head_channels)


def param_groups(model: TaskModel, cfg: FinetuneConfig) -> list[dict]:
    """AdamW groups: (lr scale by layer) x (decay or not)."""
    depth_plus_one = model.encoder.num_layers  # final norm's layer id
    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("encoder."):
            scale = cfg.layer_decay ** (depth_plus_one - model.encoder.layer_id(name))
        else:
            scale = 1.0  # the head learns at the full rate
        no_decay = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        groups.setdefault((scale, no_decay), []).append(p)
    return [
        {"params": ps, "lr_scale": s, "weight_decay": 0.0 if nd else cfg.weight_decay}
        for (s, nd), ps in groups.items()
    ]


def lr_at(step: int, cfg: FinetuneConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))


def compute_loss(model: torch.nn.Module, batch: dict, cfg: FinetuneConfig) -> torch.Tensor:
    out = model(batch["image"])
    if cfg.task == "pose":
        return pose_loss(out.float(), batch["heatmap"], batch["weight"])
    if cfg.task == "seg":
        weights = torch.tensor(cfg.class_weights, device=out.device) if cfg.class_weights else None
        return seg_loss(out.float(), batch["label"], weights)
    if cfg.task == "depth":
        return depth_loss(out.float(), batch["depth"], batch["mask"])
    return normal_loss(out.float(), batch["normal"], batch["mask"])


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: data stream for this rank, DDP model, AdamW, checkpoints."""
    import ray.train
    import ray.train.torch

    from training.tasks.data import PrepareConfig, TaskStream

    cfg = FinetuneConfig(**config)
    ctx = ray.train.get_context()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999))
    start = _resume(model, optimizer)
    model = ray.train.torch.prepare_model(model)
    stream = TaskStream(cfg.data, PrepareConfig(task=cfg.task, input_hw=cfg.input_size, train=True,
                        heatmap_sigma=cfg.heatmap_sigma), rank=ctx.get_world_rank(),
                        world=ctx.get_world_size(), seed=cfg.seed + start)  # fmt: skip
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size,
                                         num_workers=cfg.loader_workers)  # fmt: skip
    device = ray.train.torch.get_device()
    batches, running = iter(loader), []
    for step in range(start, cfg.steps):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg) * group["lr_scale"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.gpu):
            loss = compute_loss(model, batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        running.append(loss.item())
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _report(model, optimizer, cfg, done, running, checkpoint=True)
            running = []
        elif done % cfg.log_every == 0:
            _report(model, optimizer, cfg, done, running, checkpoint=False)
            running = []


def _report(model, optimizer, cfg: FinetuneConfig, step: int, losses: list, checkpoint: bool):
    import ray.train

    metrics = {"step": step, "loss": sum(losses) / max(len(losses), 1), "lr": lr_at(step - 1, cfg)}
    if not checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if ray.train.get_context().get_world_rank() == 0:
            inner = model.module if hasattr(model, "module") else model
            torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                        "step": step, "config": dataclasses.asdict(cfg)},
                       os.path.join(tmp, "checkpoint.pt"))  # fmt: skip
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def _resume(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as folder:
        state = torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu",
                           weights_only=False)  # fmt: skip
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def run(cfg: FinetuneConfig):
    """Fit on Ray (the current cluster, or a local one); returns the Ray Train Result."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dataclasses.asdict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=_storage_path(cfg.output),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=0)),
    )  # fmt: skip
    return trainer.fit()


def _storage_path(uri: str) -> str:
    return uri if uri.startswith("s3://") else os.path.abspath(uri)


def main(argv: list[str] | None = None) -> None:
    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, f in fields.items():
        flag = "--" + name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        elif name in ("input_size",):
            parser.add_argument(flag, type=int, nargs=2, default=f.default)
        elif name == "class_weights":
            parser.add_argument(flag, type=float, nargs="+", default=None)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            required = f.default is dataclasses.MISSING
            parser.add_argument(flag, type=kind, required=required,
                                default=None if required else f.default)  # fmt: skip
    cfg = FinetuneConfig(**vars(parser.parse_args(argv)))
    result = run(cfg)
    print(f"finished: {result.metrics}; checkpoint {result.checkpoint}")


if __name__ == "__main__":
    main()
