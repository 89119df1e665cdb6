"""The training entry points' configs, apart from the loops that use them.

Each entry point's config is a keyword-only dataclass: its fields are the entry point's flags
and config-file keys (``runtime.config`` generates them; ``training.cli`` wires them), each
field's ``help`` is the flag's help, and ``aliases`` lists old spellings that still work with a
deprecation warning. ``__post_init__`` checks ranges and names (presets, tasks, strategies,
sizes against the patch size) so that a bad value fails before anything is read or Ray starts;
what needs storage (paths, manifests, checkpoints) is checked by each entry point's ``check``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from models.vit import PRESETS, preset
from runtime import config as cli
from runtime.storage import locate
from schemas.labelled import NUM_CLASSES, TASKS
from training.parallel import STRATEGIES
from training.tasks.depth import DEPTH_OUTPUTS
from training.tasks.heads import HEAD_KINDS
from training.tasks.registry import TASKS_BY_NAME


def _opt(help: str, default: Any = dataclasses.MISSING, *aliases: str) -> Any:
    """A field with its flag help and deprecated spellings (``--old``; config key ``old``)."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": list(aliases)})


def _at_least(config: Any, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(config, name) < minimum:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be at least {minimum}, got {getattr(config, name)}")


def _check_run(config: Any, kind: str) -> None:
    """What pretraining and fine-tuning runs share: their Ray Train workers and log folder."""
    if config.cpus_per_worker <= 0:
        raise ValueError(f"--cpus-per-worker must be positive, got {config.cpus_per_worker}")
    if not config.ray and config.num_workers != 1:
        raise ValueError("--no-ray runs a single worker; set --num-workers 1")
    if config.log_dir is None and config.output:  # "": a model read back, not a run
        config.log_dir = _default_log_dir(config.output, config.name, kind)


def _check_preset(name: str, image_size: int | tuple[int, int], **kw: Any) -> None:
    """The preset exists and ``image_size`` (and patch padding) fit its patch size."""
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; choose from {', '.join(PRESETS)}")
    patch = PRESETS[name]().patch_size
    sides = (image_size,) if isinstance(image_size, int) else image_size
    if any(side <= 0 or side % patch for side in sides):
        raise ValueError(
            f"--image-size {image_size} must be positive multiples of preset {name}'s patch "
            f"size {patch}"
        )
    preset(name, image_size=image_size, **kw)  # the remaining checks (patch padding)


def _default_log_dir(output: str, name: str, kind: str) -> str:
    out = locate(output)
    return f"./{kind}_logs/{name}" if out.is_s3 else f"{out.path}/logs"


@dataclass(kw_only=True)
class PretrainConfig:
    dataset: str = _opt("dataset folder with shards/ and manifests/ (local path or s3://)")
    output: str = _opt("run folder for checkpoints, encoder.pt and summary.json (local or s3://)")
    log_dir: str | None = _opt(
        "local folder for metrics.jsonl, TensorBoard, pictures; default <output>/logs, or "
        "./pretrain_logs/<name> when output is on S3",
        None,
    )
    preset: str = _opt(f"backbone: {', '.join(PRESETS)}", "sapiens_0.3b")
    image_size: int = _opt(
        "square input side in pixels, a multiple of the patch size (1024 in the paper)",
        1024,
        "--img-size",
    )
    mask_ratio: float = _opt("fraction of patches hidden from the encoder, in (0, 0.95]", 0.75)
    norm_pix_loss: bool = _opt("regress per-patch normalised pixels", True)
    decoder_dim: int = _opt("MAE decoder width (paper: 512)", 512)
    decoder_depth: int = _opt("MAE decoder blocks (paper: 8)", 8)
    decoder_heads: int = _opt("MAE decoder attention heads (paper: 16)", 16)
    drop_path: float = _opt("stochastic depth rate of the encoder, in [0, 1)", 0.0)
    batch_size: int = _opt("images per micro-batch per Ray Train worker", 32)
    accum_steps: int = _opt("micro-batches accumulated per optimiser step", 1)
    total_steps: int = _opt("optimiser steps of the whole run", 1000, "--steps")
    warmup_steps: int = _opt("linear warmup steps", 100)
    base_lr: float = _opt("lr per 256 images of global batch (lr = base x global / 256)", 1.5e-4)
    min_lr_ratio: float = _opt("final lr of the cosine as a fraction of the peak", 0.0)
    weight_decay: float = _opt("AdamW decay (not on norms, biases, positions, tokens)", 0.05)
    beta2: float = _opt("AdamW beta2 (beta1 is 0.9)", 0.95)
    clip_grad: float = _opt("gradient norm clipping; 0 disables", 1.0, "--grad-clip")
    num_workers: int = _opt("Ray Train workers (one per GPU)", 1, "--workers")
    use_gpu: bool = _opt("one GPU per Ray Train worker", False, "--gpu")
    cpus_per_worker: float = _opt(
        "CPUs reserved per Ray Train worker (0.5 fits 2 workers on 2 CPUs)", 1.0
    )
    loader_workers: int = _opt("DataLoader processes per Ray Train worker (0: in-process)", 4)
    shuffle_buffer: int = _opt("samples per loader process held for shuffling", 1000)
    where: str | None = _opt(
        'DuckDB predicate on manifest rows selecting samples, e.g. "num_persons >= 2" '
        "(checked against the manifest before training starts)",
        None,
    )
    strategy: str = _opt(f"{', '.join(STRATEGIES)} (auto: FSDP for 1B/2B, DDP below)", "auto")
    activation_checkpointing: bool = _opt("recompute block activations in backward", False)
    bf16: bool = _opt("bf16 autocast on GPU (ignored on CPU)", True)
    compile: bool = _opt("torch.compile each block", False)
    log_every: int = _opt("steps between metric lines", 10)
    checkpoint_every: int = _opt(
        "steps between checkpoints (one is always written at the end)", 500
    )
    picture_every: int = _opt("steps between input/masked/reconstruction PNGs; 0 disables", 500)
    seed: int = _opt("model init, masking and data order", 0)
    ray: bool = _opt("run on Ray Train; --no-ray runs in this process (one worker)", True)
    ray_address: str | None = _opt(
        "Ray cluster to join; default RAY_ADDRESS or an embedded local Ray", None
    )
    name: str = _opt("run name (Ray Train, default log folder)", "pretrain")

    def __post_init__(self) -> None:
        _check_preset(self.preset, self.image_size, drop_path=0.0)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if not 0.0 < self.mask_ratio <= 0.95:
            raise ValueError(f"--mask-ratio must be in (0, 0.95], got {self.mask_ratio}")
        _at_least(self, 1, "batch_size", "accum_steps", "total_steps", "num_workers",
                  "log_every", "checkpoint_every", "decoder_dim", "decoder_depth",
                  "decoder_heads", "shuffle_buffer")  # fmt: skip
        _at_least(self, 0, "loader_workers", "picture_every", "seed")
        if self.decoder_dim % self.decoder_heads:
            raise ValueError("--decoder-dim must be a multiple of --decoder-heads")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("--warmup-steps must be between 0 and --total-steps")
        if self.base_lr <= 0 or self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError("--base-lr > 0, --weight-decay >= 0 and --clip-grad >= 0 required")
        if not (0 <= self.drop_path < 1 and 0 <= self.min_lr_ratio <= 1 and 0 <= self.beta2 < 1):
            raise ValueError(
                "need 0 <= --drop-path < 1, 0 <= --min-lr-ratio <= 1, 0 <= --beta2 < 1"
            )
        _check_run(self, "pretrain")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accum_steps * self.num_workers


@dataclass(kw_only=True)
class FinetuneConfig:
    task: str = _opt(f"the task: {', '.join(TASKS)}")
    dataset: str = _opt(
        "labelled dataset (local folder or s3:// URI)", dataclasses.MISSING, "--data"
    )
    output: str = _opt("run folder: checkpoints/, summary.json (local or s3://)")
    log_dir: str | None = _opt("local metrics.jsonl + TensorBoard; default <output>/logs", None)
    name: str = _opt('Ray Train run name; default "finetune-<task>"', "")
    preset: str = _opt(f"backbone: {', '.join(PRESETS)}", "sapiens_0.3b")
    image_size: tuple[int, int] = _opt(
        "input height and width (H W or H,W), multiples of the patch size",
        (1024, 768),
        "--input-size",
    )
    pretrained: str | None = _opt(
        "encoder file, MAE checkpoint or Sapiens .pth (local or s3://); unset: from scratch", None
    )
    head: str = _opt(f"{' or '.join(HEAD_KINDS)} (sapiens: deconvs + 1x1 convs)", "sapiens")
    head_channels: int | None = _opt(
        "width of the head's layers; unset: Sapiens' (depth 384)", None
    )
    patch_padding: int | None = _opt("patch conv padding; unset: Sapiens' (pose, normal 2)", None)
    depth_output: str = _opt(
        "depth head output: softplus (heads trained here) or linear (Sapiens')", "softplus"
    )
    total_steps: int = _opt("optimiser steps", 10_000, "--steps")
    batch_size: int = _opt("images per Ray Train worker", 8)
    lr: float = _opt("peak lr of the top encoder layer; layer i gets lr * decay^(L - i)", 5e-4)
    head_lr_scale: float = _opt("the head's lr as a multiple of lr (heads start from scratch)", 1.0)
    layer_decay: float = _opt("layer-wise lr decay, in (0, 1]", 0.85)
    weight_decay: float = _opt("AdamW weight decay (not on norms, biases, tokens)", 0.1)
    warmup_steps: int = _opt("linear warmup steps from 0", 500)
    min_lr_ratio: float = _opt("final lr of the cosine as a fraction of the peak", 0.0)
    clip_grad: float = _opt("max gradient norm (0 disables)", 1.0, "--grad-clip")
    class_weights: tuple[float, ...] | None = _opt(
        f"seg: {NUM_CLASSES} cross-entropy weights; unset: Sapiens'", None
    )
    heatmap_sigma: float | None = _opt("pose: Gaussian sigma in heatmap pixels", None)
    num_workers: int = _opt("Ray Train workers (one per GPU)", 1, "--workers")
    cpus_per_worker: float = _opt("CPUs reserved per Ray Train worker", 1.0)
    use_gpu: bool = _opt("one GPU per Ray Train worker; bf16 autocast", False, "--gpu")
    strategy: str = _opt(f"{', '.join(STRATEGIES)} (auto: FSDP for 1B/2B, DDP below)", "auto")
    activation_checkpointing: bool = _opt("recompute block activations in backward", False)
    loader_workers: int = _opt("DataLoader processes per Ray Train worker", 0)
    checkpoint_every: int = _opt("steps between checkpoints (and at the end)", 1000)
    log_every: int = _opt("steps between metric lines", 20)
    seed: int = _opt("sampling and initialisation seed", 0)
    ray: bool = _opt("run on Ray Train; --no-ray runs in this process (one worker)", True)
    ray_address: str | None = _opt(
        "Ray cluster to join; default RAY_ADDRESS or an embedded local Ray", None
    )

    def __post_init__(self) -> None:
        self.image_size = tuple(self.image_size)  # a stored config holds a list
        if self.task not in TASKS:
            raise ValueError(f"unknown --task {self.task!r}; choose from {', '.join(TASKS)}")
        self.name = self.name or f"finetune-{self.task}"
        if len(self.image_size) != 2:
            raise ValueError(f"--image-size takes height and width, got {self.image_size}")
        if self.patch_padding is None:
            self.patch_padding = TASKS_BY_NAME[self.task].patch_padding
        _check_preset(self.preset, self.image_size, patch_padding=self.patch_padding)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if self.head not in HEAD_KINDS:
            raise ValueError(f"--head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        if self.depth_output not in DEPTH_OUTPUTS:
            raise ValueError(f"--depth-output must be one of {', '.join(DEPTH_OUTPUTS)}")
        _at_least(self, 1, "total_steps", "batch_size", "num_workers", "checkpoint_every",
                  "log_every")  # fmt: skip
        _at_least(self, 0, "loader_workers", "seed")
        if self.head_channels is not None:
            _at_least(self, 1, "head_channels")
        if not 0 < self.layer_decay <= 1 or min(self.lr, self.head_lr_scale) <= 0:
            raise ValueError("need 0 < --layer-decay <= 1, --lr > 0 and --head-lr-scale > 0")
        if self.weight_decay < 0 or self.clip_grad < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need --weight-decay >= 0, --clip-grad >= 0, 0 <= --min-lr-ratio <= 1")
        weights = self.class_weights
        if weights is not None and (len(weights) != NUM_CLASSES or min(weights) < 0):
            raise ValueError(f"--class-weights needs {NUM_CLASSES} values, none negative")
        if self.heatmap_sigma is not None and self.heatmap_sigma <= 0:
            raise ValueError(f"--heatmap-sigma must be positive, got {self.heatmap_sigma}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError("--warmup-steps must be between 0 and --total-steps")
        _check_run(self, "finetune")

    @classmethod
    def from_record(cls, stored: dict[str, Any]) -> FinetuneConfig:
        """The config a checkpoint recorded, written under today's or an older field name,
        type-checked as a config file is (ConfigError/ValueError naming the key)."""
        return cli.build(cls, "recorded", _renamed(cls, stored))


def _renamed(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` under today's names (``cli.stored_fields``): checkpoints written before the
    glossary renames hold ``input_size``, ``img_size``, ``steps``, ``no_ray`` and so on; they
    must still load. ``no_ray`` is the one negated on the way."""
    values = dict(stored)
    if "no_ray" in values:
        values.setdefault("ray", not values.pop("no_ray"))
    return cli.stored_fields(cls, values)


def stored_pretrain(stored: dict[str, Any]) -> dict[str, Any]:
    """The PretrainConfig fields a pretraining checkpoint recorded, under today's names."""
    return _renamed(PretrainConfig, stored)


@dataclass(kw_only=True)
class EvaluateConfig:
    checkpoint: str = _opt("fine-tuning run folder, its checkpoints/step_* folder or a task .pt")
    dataset: str = _opt("labelled dataset (local or s3://)", dataclasses.MISSING, "--data")
    output: str | None = _opt("also write the metrics here as JSON (local or s3://)", None)
    batch_size: int = _opt("images per forward pass", 8)
    flip_test: bool = _opt("pose: average each crop's heatmaps with its mirror's", True)

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size")


@dataclass(kw_only=True)
class PredictConfig:
    task: str = _opt(f"the checkpoint's task: {', '.join(TASKS)}")
    checkpoint: str = _opt("fine-tuning run, task model .pt, or a Sapiens task .pth/TorchScript")
    images: tuple[str, ...] = _opt("image files to run on (e.g. photos/*.jpg)")
    output: str = _opt("folder for the overlays ({name}.{task}.png)", "predictions")
    boxes: str | None = _opt("pose: JSON file {file name: [[x, y, w, h], ...]}", None)
    image_size: tuple[int, int] = _opt(
        "a Sapiens file's input height and width (H W or H,W)", (1024, 768), "--input-size"
    )

    def __post_init__(self) -> None:
        self.image_size = tuple(self.image_size)
        if self.task not in TASKS:
            raise ValueError(f"unknown --task {self.task!r}; choose from {', '.join(TASKS)}")
        if not self.images:
            raise ValueError("--images needs at least one image file")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(
                f"--image-size takes a positive height and width, got {self.image_size}"
            )


@dataclass(kw_only=True)
class CocoConvertConfig:
    json: str = _opt("COCO-style keypoint JSON (17 or 308 points per person)")
    images: str = _opt("folder holding the JSON's file_name images")
    output: str = _opt("dataset folder to write (local or s3://)")
    max_shard_samples: int = _opt("samples per shard", 256, "--per-shard")

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_shard_samples")


@dataclass(kw_only=True)
class FoldersConvertConfig:
    images: str = _opt("image folder; labels are matched to images by file stem")
    seg: str | None = _opt("folder of 8-bit PNG class-id maps", None)
    depth: str | None = _opt("folder of depth maps (.npy float or 16-bit PNG)", None)
    normal: str | None = _opt("folder of normal maps (.npy float or 8-bit RGB PNG)", None)
    mask: str | None = _opt("folder of person masks (8-bit PNG); default depth > 0", None)
    output: str = _opt("dataset folder to write (local or s3://)")
    max_shard_samples: int = _opt("samples per shard", 256, "--per-shard")

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_shard_samples")
        if not (self.seg or self.depth or self.normal):
            raise ValueError("give at least one of --seg, --depth, --normal")
        if self.normal and not (self.depth or self.mask):
            raise ValueError("normals without --depth need --mask (the person mask)")

    @property
    def tasks(self) -> list[str]:
        return [t for t in ("seg", "depth", "normal") if getattr(self, t)]


@dataclass(kw_only=True)
class CheckpointConfig:
    source: str = _opt("pretraining run folder (its latest checkpoint) or a step_* folder")
    output: str = _opt("encoder file to write (local or s3://), e.g. encoder.pt")


@dataclass(kw_only=True)
class SyntheticConfig:
    output: str = _opt("dataset folder to write (local or s3://)")
    num: int = _opt("samples to write", 256)
    seed: int = _opt("random seed of the scenes", 0)
    image_size: tuple[int, int] = _opt("image height and width (H W or H,W)", (128, 96), "--size")
    max_shard_samples: int = _opt("samples per shard", 64, "--per-shard")

    def __post_init__(self) -> None:
        self.image_size = tuple(self.image_size)
        _at_least(self, 1, "num", "max_shard_samples")
        _at_least(self, 0, "seed")
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ValueError(
                f"--image-size takes height and width of at least 16, got {self.image_size}"
            )


@dataclass(kw_only=True)
class ImportSapiensConfig:
    source: str = dataclasses.field(
        metadata={"help": "Sapiens .pth or TorchScript .pt2 (local or s3://)", "positional": True}
    )
    output: str = dataclasses.field(
        metadata={"help": "file to write (local or s3://)", "positional": True}
    )
    task: str | None = _opt("expected task (default: the one its head is for)", None)
    preset: str | None = _opt("expected backbone preset (default: from its shapes)", None)
    image_size: tuple[int, int] = _opt(
        "task models: input height and width (H W or H,W)", (1024, 768), "--input-size"
    )

    def __post_init__(self) -> None:
        self.image_size = tuple(self.image_size)
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"unknown --task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.preset is not None:
            _check_preset(self.preset, self.image_size)
        elif len(self.image_size) != 2 or any(s <= 0 or s % 16 for s in self.image_size):
            raise ValueError(f"--image-size {self.image_size} must be positive multiples of 16")
