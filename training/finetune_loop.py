"""The fine-tuning job of one worker: the task model, its optimiser and the task's batches,
run by the shared loop (``training.loop``); a plain function, with or without Ray around it."""

from __future__ import annotations

import dataclasses
import logging

import torch

from training.config import FinetuneConfig
from training.lineage import dataset_lineage
from training.loop import Job, LoopConfig, LoopState, resume, run
from training.optim import adamw, warmup_cosine
from training.parallel import parallelize, resolve_strategy, unwrap
from training.ray_train import WorkerContext, worker_context
from training.tasks.data import TaskStream
from training.tasks.model import build_model, param_groups
from training.tasks.registry import TASKS_BY_NAME
from training.tasks.task import PrepareConfig

log = logging.getLogger(__name__)


def train_loop(values: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer (also called directly with --no-ray)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg, ctx = FinetuneConfig(**values), worker_context()
    torch.manual_seed(cfg.seed)  # identical initial heads on every rank (FSDP2 does not broadcast)
    model = build_model(cfg).to(ctx.device)
    strategy = resolve_strategy(cfg.strategy, model.encoder.config.depth)
    wrapped = parallelize(model, blocks=[model.encoder.blocks], strategy=strategy,
                          device=ctx.device, bf16=cfg.use_gpu,
                          activation_checkpointing=cfg.activation_checkpointing, compile=False)  # fmt: skip
    # Fine-tuning keeps Adam's usual beta2 (0.999); pretraining's 0.95 suits its huge batches.
    optimizer = adamw(param_groups(unwrap(wrapped), cfg), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = warmup_cosine(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.total_steps,
                              min_ratio=cfg.min_lr_ratio)  # fmt: skip
    state, saved = resume(cfg.output, model=wrapped, optimizer=optimizer, scheduler=scheduler,
                          ctx=ctx)  # fmt: skip
    log.info("rank %d: %s %s, strategy %s, device %s", ctx.rank, cfg.task, cfg.preset, strategy,
             ctx.device)  # fmt: skip
    stored = saved.get("extra", {}).get("lineage")
    # the first run's record of the pretrained weights, kept across resumes
    pretrained = stored.get("pretrained") if stored is not None else model.pretrained_lineage
    made_of = {**dataset_lineage(cfg.dataset), "pretrained": pretrained} if ctx.is_main else {}
    images_per_step = cfg.batch_size * ctx.world_size

    def lineage(step: int) -> dict:
        """The run's lineage after ``step`` steps. TaskStream counts no skipped samples."""
        return {**made_of, "samples_seen": step * images_per_step, "samples_skipped": None}

    def finish(state: LoopState) -> dict:
        return {"task": cfg.task, "preset": cfg.preset, "image_size": list(cfg.image_size),
                "lineage": lineage(state.step)}  # fmt: skip

    job = Job(
        loop=LoopConfig(kind="fine-tuning", output=cfg.output, log_dir=cfg.log_dir,
                        total_steps=cfg.total_steps, log_every=cfg.log_every,
                        checkpoint_every=cfg.checkpoint_every, clip_grad=cfg.clip_grad,
                        bf16=cfg.use_gpu, lr_flag="--lr", config=dataclasses.asdict(cfg)),
        ctx=ctx, model=wrapped, optimizer=optimizer, scheduler=scheduler,
        batches=batches(cfg, ctx, state.start_step), forward=task_forward(wrapped, cfg, ctx),
        images_per_step=images_per_step,
        data_position=lambda: {"seed": cfg.seed + state.start_step},
        lineage=lineage, finish=finish,
    )  # fmt: skip
    run(job, state)


def batches(cfg: FinetuneConfig, ctx: WorkerContext, step: int):
    """Training batches of this rank; a resumed run reseeds the stream with its step."""
    prep = PrepareConfig(task=cfg.task, input_hw=cfg.image_size, train=True,
                         heatmap_sigma=cfg.heatmap_sigma)  # fmt: skip
    stream = TaskStream(
        cfg.dataset, prep, rank=ctx.rank, world=ctx.world_size, seed=cfg.seed + step
    )
    yield from torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size,
                                           num_workers=cfg.loader_workers)  # fmt: skip


def task_forward(model: torch.nn.Module, cfg: FinetuneConfig, ctx: WorkerContext):
    """The job's forward: a batch -> (the task's loss, nothing for after_step)."""
    task = TASKS_BY_NAME[cfg.task]

    def forward(batch: dict) -> tuple[torch.Tensor, None]:
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        return task.loss(model(batch["image"]), batch, cfg), None

    return forward
