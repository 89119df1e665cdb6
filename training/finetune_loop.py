"""The fine-tuning loop of one worker: a plain function, with or without Ray around it."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import torch
import torch.distributed as dist

from runtime.storage import locate, write_bytes_atomic
from training import checkpoint
from training.config import FinetuneConfig
from training.lineage import dataset_lineage
from training.metrics_log import MetricsLog, device_name
from training.optim import adamw, warmup_cosine
from training.parallel import parallelize, resolve_strategy, unwrap
from training.ray_train import WorkerContext, worker_context
from training.tasks.model import build_model, param_groups
from training.tasks.registry import TASKS_BY_NAME

log = logging.getLogger(__name__)


def setup(cfg: FinetuneConfig, ctx: WorkerContext):
    """Model (parallelised), optimiser, schedule and the step to start from."""
    torch.manual_seed(cfg.seed)  # identical initial heads on every rank (FSDP2 does not broadcast)
    model = build_model(cfg).to(ctx.device)
    strategy = resolve_strategy(cfg.strategy, model.encoder.config.depth)
    wrapped = parallelize(model, blocks=[model.encoder.blocks], strategy=strategy,
                          device=ctx.device, bf16=cfg.gpu,
                          activation_checkpointing=cfg.activation_checkpointing, compile=False)  # fmt: skip
    # Fine-tuning keeps Adam's usual beta2 (0.999); pretraining's 0.95 suits its huge batches.
    optimizer = adamw(param_groups(unwrap(wrapped), cfg), lr=cfg.lr, betas=(0.9, 0.999))
    scheduler = warmup_cosine(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                              min_ratio=cfg.min_lr_ratio)  # fmt: skip
    step, resume_from = 0, checkpoint.latest(cfg.output)
    if resume_from:
        state = checkpoint.restore(resume_from, model=wrapped, optimizer=optimizer,
                                   scheduler=scheduler)  # fmt: skip
        step = state["step"]
        log.info("rank %d resumed from %s at step %d", ctx.rank, resume_from, step)
    log.info("rank %d: %s %s, strategy %s, device %s", ctx.rank, cfg.task, cfg.preset, strategy,
             ctx.device)  # fmt: skip
    if resume_from and "lineage" in state["extra"]:  # the first run's record of the weights
        pretrained = state["extra"]["lineage"].get("pretrained")
    else:
        pretrained = model.pretrained_lineage
    lineage = {**dataset_lineage(cfg.data), "pretrained": pretrained} if ctx.is_main else {}
    return wrapped, optimizer, scheduler, step, resume_from, lineage


def lineage_at(lineage: dict, step: int, cfg: FinetuneConfig, ctx: WorkerContext) -> dict:
    """The run's lineage after ``step`` steps. TaskStream counts no skipped samples."""
    seen = step * cfg.batch_size * ctx.world_size
    return {**lineage, "samples_seen": seen, "samples_skipped": None}


def batches(cfg: FinetuneConfig, ctx: WorkerContext, step: int):
    """Training batches of this rank; a resumed run reseeds the stream with its step."""
    from training.tasks.data import TaskStream
    from training.tasks.task import PrepareConfig

    prep = PrepareConfig(task=cfg.task, input_hw=cfg.input_size, train=True,
                         heatmap_sigma=cfg.heatmap_sigma)  # fmt: skip
    stream = TaskStream(cfg.data, prep, rank=ctx.rank, world=ctx.world_size, seed=cfg.seed + step)
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size,
                                         num_workers=cfg.loader_workers)  # fmt: skip
    for batch in loader:
        yield {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}


def train_step(cfg, ctx, model, optimizer, scheduler, batch) -> tuple[float, float]:
    """One optimiser step; returns (loss, gradient norm before clipping)."""
    on_gpu = cfg.gpu and ctx.device.type == "cuda"
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=on_gpu):
        loss = TASKS_BY_NAME[cfg.task].loss(model(batch["image"]), batch, cfg)
    loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                          max_norm)  # fmt: skip
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    if not (torch.isfinite(norm) and torch.isfinite(loss)):
        raise FloatingPointError(f"non-finite loss {loss.item()} / gradient norm {norm.item()}; "
                                 "lower --lr or raise --warmup-steps")  # fmt: skip
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss.item(), norm.item()


def train_loop(values: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer (also called directly with --no-ray)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg, ctx = FinetuneConfig(**values), worker_context()
    model, optimizer, scheduler, step, resume_from, lineage = setup(cfg, ctx)
    metrics = MetricsLog(cfg.log_dir, enabled=ctx.is_main)
    stream, losses, start = batches(cfg, ctx, step), [], step
    started = window = time.perf_counter()
    while step < cfg.steps:
        loss, norm = train_step(cfg, ctx, model, optimizer, scheduler, next(stream))
        step += 1
        losses.append(loss)
        if step % cfg.log_every == 0 or step == cfg.steps:
            seconds, window = time.perf_counter() - window, time.perf_counter()
            count = (step - start) % cfg.log_every or cfg.log_every
            metrics.log(step, {"loss": _mean_over_ranks(losses[-count:], ctx), "grad_norm": norm,
                               "lr": scheduler.get_last_lr()[0],
                               "images_per_s": count * cfg.batch_size * ctx.world_size / seconds})  # fmt: skip
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint.save(cfg.output, step=step, model=model, optimizer=optimizer,
                            scheduler=scheduler, data_position={"seed": cfg.seed + start},
                            extra={"config": dataclasses.asdict(cfg),
                                   "lineage": lineage_at(lineage, step, cfg, ctx)})  # fmt: skip
    metrics.close()
    if ctx.is_main:
        _write_summary(cfg, ctx, losses, start, step, time.perf_counter() - started, resume_from,
                       lineage_at(lineage, step, cfg, ctx))  # fmt: skip


def _mean_over_ranks(values: list[float], ctx: WorkerContext) -> float:
    mean = torch.tensor(sum(values) / max(len(values), 1), dtype=torch.float64)
    if dist.is_initialized():
        mean = mean.to(ctx.device)
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
    return float(mean)


def _write_summary(cfg, ctx, losses, start, step, seconds, resume_from, lineage) -> None:
    quarter = max(1, len(losses) // 4)
    summary = {
        "task": cfg.task, "preset": cfg.preset, "input_size": list(cfg.input_size),
        "workers": ctx.world_size, "device": device_name(ctx.device),
        "resumed_from": resume_from, "start_step": start, "final_step": step,
        "seconds_this_run": seconds,
        "images_per_s": (step - start) * cfg.batch_size * ctx.world_size / max(seconds, 1e-9),
        "loss_first": sum(losses[:quarter]) / quarter if losses else None,  # this rank's
        "loss_last": sum(losses[-quarter:]) / quarter if losses else None,
        "checkpoint": checkpoint.latest(cfg.output), "log_dir": cfg.log_dir, "lineage": lineage,
    }  # fmt: skip
    write_bytes_atomic(
        locate(cfg.output).join("summary.json"), json.dumps(summary, indent=2).encode()
    )
    log.info("fine-tuning finished: %s", json.dumps(summary))
