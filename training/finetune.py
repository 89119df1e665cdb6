"""Fine-tune a (pretrained) Sapiens backbone on labelled shards for one task, on Ray Train.

    ray job submit --working-dir . -- python -m training.finetune --task pose \
        --data s3://b/labelled --output s3://b/runs/pose --pretrained encoder.pt \
        --preset sapiens_0.3b --workers 8 --gpu true

Recipe (Sapiens): AdamW, weight decay 0.1 (none on norms, biases, position table, class
token), layer-wise lr decay 0.85 over the encoder, linear warmup then cosine decay;
gradient clipping 1.0; bf16 autocast on GPU; FSDP2 for the 1B and 2B backbones. The
pieces are the pretraining ones (training.optim, training.checkpoint, training.parallel,
training.ray_train, training.metrics_log). A rerun with the same --output resumes from its
latest checkpoint; ``--no-ray true`` runs the same loop in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
from dataclasses import dataclass

import torch

from models.vit import PRESETS, VisionTransformer, preset
from runtime.storage import locate
from schemas.labelled import NUM_CLASSES, TASKS
from training.parallel import STRATEGIES
from training.tasks.heads import HEAD_KINDS, SAPIENS_PATCH_PADDING, TaskModel, load_pretrained
from training.tasks.losses import depth_loss, normal_loss, pose_loss, seg_loss


@dataclass(kw_only=True)
class FinetuneConfig:
    task: str  # pose | seg | depth | normal
    data: str  # labelled dataset (local folder or s3:// URI)
    output: str  # run folder: checkpoints/, summary.json (local or s3://)
    log_dir: str | None = None  # local metrics.jsonl + TensorBoard; default <output>/logs
    name: str = ""  # Ray Train run name; default "finetune-<task>"
    preset: str = "sapiens_0.3b"  # backbone preset (models.vit.PRESETS)
    input_size: tuple[int, int] = (1024, 768)  # (height, width); multiples of 16
    pretrained: str | None = None  # encoder file, MAE checkpoint or Sapiens .pth; None: scratch
    head: str = "sapiens"  # sapiens (deconvs + 1x1 convs) or light (smaller, for small runs)
    head_channels: int | None = None  # width of the head's layers; None: Sapiens' (depth 384)
    patch_padding: int | None = None  # patch conv padding; None: Sapiens' (pose, normal 2)
    depth_output: str = (
        "softplus"  # depth head output: softplus (heads trained here) or linear (Sapiens')
    )
    steps: int = 10_000  # optimiser steps
    batch_size: int = 8  # per worker
    lr: float = 5e-4  # peak lr of the top encoder layer; layer i gets lr * decay^(L - i)
    head_lr_scale: float = 1.0  # the head's lr as a multiple of lr (heads start from scratch)
    layer_decay: float = 0.85  # layer-wise lr decay
    weight_decay: float = 0.1  # AdamW weight decay (not on norms, biases, tokens)
    warmup_steps: int = 500  # linear warmup from 0
    min_lr_ratio: float = 0.0  # final lr of the cosine as a fraction of the peak
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    class_weights: tuple[float, ...] | None = None  # seg: 28 CE weights; None: Sapiens'
    heatmap_sigma: float | None = None  # pose: Gaussian sigma in heatmap pixels
    workers: int = 1  # Ray Train workers
    cpus_per_worker: float = 1.0  # CPU share of each worker
    gpu: bool = False  # one GPU per worker; bf16 autocast
    strategy: str = "auto"  # auto (FSDP for 1B/2B, DDP below), ddp, fsdp, none
    activation_checkpointing: bool = False  # recompute block activations in backward
    loader_workers: int = 0  # DataLoader processes per worker
    checkpoint_every: int = 1000  # steps between checkpoints (and at the end)
    log_every: int = 20  # steps between metric lines
    seed: int = 0  # sampling and initialisation seed
    no_ray: bool = False  # run in this process without Ray (debugging, benchmarks)
    ray_address: str | None = None  # Ray cluster; default RAY_ADDRESS or an embedded local Ray

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.name = self.name or f"finetune-{self.task}"
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        if any(s <= 0 or s % 16 for s in self.input_size):
            raise ValueError(f"input_size {self.input_size} must be positive multiples of 16")
        channels = 1 if self.head_channels is None else self.head_channels  # None: the task's
        if min(self.steps, self.batch_size, self.workers, channels) <= 0:
            raise ValueError("steps, batch_size, workers and head_channels must be positive")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {self.head!r}")
        if self.patch_padding is None:
            self.patch_padding = SAPIENS_PATCH_PADDING[self.task]
        if not 0 < self.layer_decay <= 1 or min(self.lr, self.head_lr_scale) <= 0:
            raise ValueError("need 0 < layer_decay <= 1, lr > 0 and head_lr_scale > 0")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay >= 0 and grad_clip >= 0 are required")
        if self.class_weights is not None and len(self.class_weights) != NUM_CLASSES:
            raise ValueError(f"class_weights needs {NUM_CLASSES} values")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError("warmup_steps must be between 0 and steps")
        if self.checkpoint_every <= 0 or self.log_every <= 0:
            raise ValueError("checkpoint_every > 0 and log_every > 0 are required")
        if self.no_ray and self.workers != 1:
            raise ValueError("--no-ray runs a single worker; set --workers 1")
        if self.log_dir is None:
            out = locate(self.output)
            self.log_dir = f"./finetune_logs/{self.name}" if out.is_s3 else f"{out.path}/logs"


def build_model(cfg: FinetuneConfig) -> TaskModel:
    """The task model: a backbone on the patch tokens only (no class token, as Sapiens
    fine-tunes), loaded from ``cfg.pretrained`` when given, and a fresh head. Its
    ``pretrained_lineage`` says what the pretrained weights were made from (None from
    scratch), for the run's lineage."""
    config = preset(cfg.preset, img_size=cfg.input_size, cls_token=False,
                    patch_padding=cfg.patch_padding)  # fmt: skip
    encoder = VisionTransformer(config)
    lineage = None
    if cfg.pretrained:
        from models import encoder_file

        state = read_pretrained(cfg.pretrained)
        load_pretrained(encoder, state)
        stored = state.get("lineage") if isinstance(state, dict) else None
        if encoder_file.is_encoder_file(state):
            stored = encoder_file.parse(state, cfg.pretrained).lineage
        lineage = {"uri": cfg.pretrained, "lineage": dict(stored or {})}
    model = TaskModel(encoder, cfg.task, cfg.head_channels, cfg.head, cfg.depth_output)
    model.pretrained_lineage = lineage
    return model


def read_pretrained(uri: str) -> dict:
    """What ``torch.load`` (weights only) makes of ``uri``, or the state dict of a
    TorchScript export: for ``heads.load_pretrained``. ValueError (one line) otherwise."""
    from runtime import storage
    from training.import_sapiens import is_torchscript, read_state_dict

    data = storage.read_bytes(storage.locate(uri))
    if is_torchscript(data):
        return read_state_dict(data, uri)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a damaged or foreign pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"--pretrained {uri}: cannot be read with weights_only ({first})") from exc


def param_groups(model: TaskModel, cfg: FinetuneConfig) -> list[dict]:
    """AdamW groups (training.optim): the encoder with layer-wise lr decay, the head at
    ``lr x head_lr_scale``. ``model`` is the unwrapped TaskModel (after FSDP sharding, if any)."""
    from training.optim import param_groups as groups_of

    enc = model.encoder
    encoder = groups_of(enc, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_id=enc.layer_id,
                        num_layers=enc.num_layers, layer_decay=cfg.layer_decay)  # fmt: skip
    head = groups_of(model.head, lr=cfg.lr * cfg.head_lr_scale, weight_decay=cfg.weight_decay)
    for group in head:
        group["lr_scale"] = cfg.head_lr_scale
    return encoder + head


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


def run(cfg: FinetuneConfig) -> dict:
    """Train to ``steps`` (resuming if a checkpoint exists); returns the run summary."""
    from runtime.storage import read_bytes
    from training.finetune_loop import train_loop
    from training.ray_train import RayScaling, launch

    values = dataclasses.asdict(cfg)
    if cfg.no_ray:
        train_loop(values)
    else:
        scaling = RayScaling(num_workers=cfg.workers, use_gpu=cfg.gpu,
                             cpus_per_worker=cfg.cpus_per_worker, address=cfg.ray_address,
                             name=cfg.name)  # fmt: skip
        launch(train_loop, values, scaling)
    return json.loads(read_bytes(locate(cfg.output).join("summary.json")))


def parse_args(argv: list[str] | None = None) -> FinetuneConfig:
    from training.config_cli import add_flags, build, read_file

    parser = argparse.ArgumentParser(
        prog="python -m training.finetune", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", help="YAML or JSON file of FinetuneConfig fields (flags win)")
    add_flags(parser, FinetuneConfig)
    args = parser.parse_args(argv)
    return build(FinetuneConfig, args, read_file(args.config) if args.config else None)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    summary = run(parse_args(argv))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
