"""The training entry points' configs, apart from the loops that use them.

Each run's config is a keyword-only dataclass whose ``__post_init__`` checks ranges and names
(presets, tasks, strategies) so that a bad value fails before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.vit import PRESETS
from runtime.storage import locate
from schemas.labelled import NUM_CLASSES, TASKS
from training.parallel import STRATEGIES
from training.tasks.heads import HEAD_KINDS
from training.tasks.registry import TASKS_BY_NAME


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
            self.patch_padding = TASKS_BY_NAME[self.task].patch_padding
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
