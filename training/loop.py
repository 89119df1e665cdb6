"""The training loop of one worker, shared by pretraining and fine-tuning.

A job (``training.pretrain_loop``, ``training.finetune_loop``) builds its model, optimiser,
schedule and data, says how a batch becomes a loss, and fills a ``Job``; ``resume`` and
``run`` do the rest the same way for both: resume from the latest checkpoint, optimiser
steps over ``accum_steps`` micro-batches (bf16 autocast on GPU, gradient clipping, a stop on
a non-finite loss), a metrics row (metrics.jsonl, TensorBoard) and a progress line on stdout
every ``log_every`` steps, a checkpoint every ``checkpoint_every`` steps and at the end, and
the run's summary.json.

Progress lines (rank 0) go through the logger ``training.progress`` to stdout, e.g.::

    step 40/1000  loss 0.8123  lr 1.2e-04  38.2 img/s  eta 4m12s

Images/s counts the steps after this run's first one: the first step carries the start-up
(torch.compile, loader processes filling their buffers), which would otherwise drag the rate
of short runs; the last line and the summary's ``seconds_first_step`` say so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.flops import peak_flops
from runtime.progress import duration
from runtime.storage import locate, write_bytes_atomic
from training import checkpoint
from training.metrics_log import MetricsLog, device_name, throughput
from training.ray_train import WorkerContext

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite; training stopped."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The loop's settings, taken from a run's config by its job."""

    kind: str  # "pretraining" or "fine-tuning", for messages
    output: str  # run folder: checkpoints/, summary.json
    log_dir: str  # metrics.jsonl and TensorBoard (rank 0)
    total_steps: int  # optimiser steps of the whole run, resumed runs included
    log_every: int
    checkpoint_every: int
    accum_steps: int = 1  # micro-batches per optimiser step
    clip_grad: float = 1.0  # gradient norm clipping; 0 disables
    bf16: bool = False  # bf16 autocast (on CUDA only)
    lr_flag: str = "--lr"  # the flag that sets the learning rate, for the divergence message
    config: dict = dataclasses.field(default_factory=dict)  # stored in every checkpoint


@dataclasses.dataclass(kw_only=True)
class Job:
    """One worker's run as the loop sees it. Callables marked collective are called on every
    rank in the same order (they may all-reduce)."""

    loop: LoopConfig
    ctx: WorkerContext
    model: nn.Module  # as trained (wrapped for DDP / FSDP)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Iterator[Any]  # this rank's micro-batches, endless
    forward: Callable[[Any], tuple[Tensor, Any]]  # micro-batch -> (loss, outputs for after_step)
    images_per_step: int  # images of one optimiser step over all ranks
    flops_per_image: float | None = None  # training FLOPs per image, for TFLOP/s and MFU
    data_position: Callable[[], dict] = dict  # this rank's place in its data, for resuming
    lineage: Callable[[int], dict] = lambda step: {}  # collective; stored in checkpoints
    log_extra: Callable[[], dict] = dict  # more columns of a metrics row (this rank's)
    after_step: Callable[[int, Any], None] | None = None  # (step, last outputs)
    finish: Callable[[LoopState], dict] = lambda state: {}  # collective; the summary's own fields


@dataclasses.dataclass
class LoopState:
    """Where the run is: its step, where it started and what it has measured."""

    start_step: int  # the step this run started from (a resumed checkpoint's, else 0)
    resume_from: str | None  # the checkpoint folder resumed, if any
    step: int = -1  # optimiser steps done (set to start_step)
    losses: list[float] = dataclasses.field(default_factory=list)  # this rank's, this run's
    grad_norm: float = float("nan")  # of the last step
    started: float = 0.0  # perf_counter when this run's first step began
    first_step_done: float | None = None  # perf_counter when it ended (start-up included)
    ended: float = 0.0  # perf_counter when the last step so far ended
    window_start: float = 0.0  # perf_counter when the current logging window began
    window_steps: int = 0

    def __post_init__(self) -> None:
        if self.step < 0:
            self.step = self.start_step

    @property
    def steps_this_run(self) -> int:
        return self.step - self.start_step


def resume(
    output: str, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    ctx: WorkerContext,
) -> tuple[LoopState, dict]:  # fmt: skip
    """Restore the latest checkpoint under ``output`` into model, optimiser and schedule, if
    there is one; returns the loop's state and the checkpoint's saved state ({} if none:
    ``data_positions`` of every rank, ``extra`` with config and lineage)."""
    folder = checkpoint.latest(output)
    if not folder:
        return LoopState(start_step=0, resume_from=None), {}
    saved = checkpoint.restore(folder, model=model, optimizer=optimizer, scheduler=scheduler)
    log.info("rank %d resumed from %s at step %d", ctx.rank, folder, saved["step"])
    return LoopState(start_step=saved["step"], resume_from=folder), saved


def _no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on micro-batches that are not the last one."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    elif not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def optimizer_step(job: Job, step: int) -> tuple[float, float, Any]:
    """Optimiser step ``step + 1`` over ``accum_steps`` micro-batches; returns (loss, gradient
    norm before clipping, the last micro-batch's outputs). NonFiniteLossError if the loss
    or the norm is not finite (the norm is global, so every rank stops at the same step)."""
    loop, device = job.loop, job.ctx.device
    on_gpu = loop.bf16 and device.type == "cuda"
    total = torch.zeros((), device=device)
    for micro in range(loop.accum_steps):
        with _no_sync(job.model, micro == loop.accum_steps - 1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                loss, outputs = job.forward(next(job.batches))
            (loss / loop.accum_steps).backward()
        total += loss.detach() / loop.accum_steps
    params = [p for p in job.model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, loop.clip_grad or float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    loss_value, norm_value = total.item(), norm.item()
    if not (torch.isfinite(norm) and torch.isfinite(total)):
        raise NonFiniteLossError(
            f"non-finite loss {loss_value} / gradient norm {norm_value} at step {step + 1} "
            f"(lr {job.scheduler.get_last_lr()[0]:.3g}); lower {loop.lr_flag}, raise "
            "--warmup-steps, or resume from an earlier checkpoint"
        )
    job.optimizer.step()
    job.optimizer.zero_grad(set_to_none=True)
    job.scheduler.step()
    return loss_value, norm_value, outputs


def run(job: Job, state: LoopState) -> None:
    """Train from ``state.step`` to ``loop.total_steps``, then write the summary (rank 0)."""
    loop, ctx = job.loop, job.ctx
    metrics = MetricsLog(loop.log_dir, enabled=ctx.is_main)
    peak = peak_flops(device_name(ctx.device)) if job.flops_per_image else None
    state.started = state.window_start = time.perf_counter()
    while state.step < loop.total_steps:
        loss, state.grad_norm, outputs = optimizer_step(job, state.step)
        state.step += 1
        state.window_steps += 1
        state.losses.append(loss)
        state.ended = time.perf_counter()
        if state.first_step_done is None:
            state.first_step_done = state.ended
        if state.step % loop.log_every == 0 or state.step == loop.total_steps:
            _log(job, state, metrics, peak)
        if job.after_step is not None:
            job.after_step(state.step, outputs)
        if state.step % loop.checkpoint_every == 0 or state.step == loop.total_steps:
            checkpoint.save(
                loop.output, step=state.step, model=job.model, optimizer=job.optimizer,
                scheduler=job.scheduler, data_position=job.data_position(),
                extra={"config": loop.config, "lineage": job.lineage(state.step)},
            )  # fmt: skip
    metrics.close()
    _finish(job, state, peak)


def _log(job: Job, state: LoopState, metrics: MetricsLog, peak: float | None) -> None:
    """The window's metrics row (every rank joins the loss mean) and rank 0's progress line."""
    now = time.perf_counter()
    loss = _mean_over_ranks(state.losses[-state.window_steps :], job.ctx)
    lr = job.scheduler.get_last_lr()[0]
    rates = _rates(job, state.window_steps * job.images_per_step, now - state.window_start, peak)
    row = {"loss": loss, "grad_norm": state.grad_norm, "lr": lr, **rates, **job.log_extra()}
    metrics.log(state.step, row)
    state.window_start, state.window_steps = time.perf_counter(), 0
    if job.ctx.is_main:
        steady = _steady_rate(job, state, now)
        eta = (job.loop.total_steps - state.step) * job.images_per_step / steady if steady else None
        speed = f"{steady:.1f} img/s" if steady else "- img/s"
        progress(f"step {state.step}/{job.loop.total_steps}  loss {loss:.4f}  lr {lr:.1e}  "
                 f"{speed}  eta {duration(eta) if eta is not None else '-'}")  # fmt: skip


def _rates(job: Job, images: int, seconds: float, peak: float | None) -> dict[str, float]:
    if job.flops_per_image is None:
        return {"images_per_s": images / max(seconds, 1e-9)}
    return throughput(images=images, seconds=seconds, flops_per_image=job.flops_per_image,
                      world_size=job.ctx.world_size, peak=peak)  # fmt: skip


def _steady_rate(job: Job, state: LoopState, now: float) -> float | None:
    """Images/s over this run's steps after its first (None before a second step ends)."""
    steps = state.steps_this_run - 1
    if steps < 1 or state.first_step_done is None:
        return None
    return steps * job.images_per_step / max(now - state.first_step_done, 1e-9)


def _mean_over_ranks(values: list[float], ctx: WorkerContext) -> float:
    """Mean loss of a logging window over all ranks (a collective at every log step)."""
    mean = torch.tensor(sum(values) / max(len(values), 1), dtype=torch.float64)
    if dist.is_initialized():
        mean = mean.to(ctx.device)
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
    return float(mean)


def _finish(job: Job, state: LoopState, peak: float | None) -> None:
    """The job's own summary fields (every rank), then summary.json and the last progress
    line (rank 0)."""
    loop, ctx = job.loop, job.ctx
    own = job.finish(state)
    if not ctx.is_main:
        return
    seconds = state.ended - state.started
    images = state.steps_this_run * job.images_per_step
    steady = _steady_rate(job, state, state.ended)
    first = (state.first_step_done - state.started) if state.first_step_done else None
    if steady is None:  # one step or none: nothing to leave out
        rates = _rates(job, images, seconds, peak)
    else:
        rates = _rates(job, images - job.images_per_step, state.ended - state.first_step_done, peak)
    quarter = max(1, len(state.losses) // 4)  # this rank's first and last quarter
    summary = {
        **own, "workers": ctx.world_size, "device": device_name(ctx.device),
        "resumed_from": state.resume_from, "start_step": state.start_step,
        "final_step": state.step, "global_batch": job.images_per_step,
        "images_this_run": images, "seconds_this_run": seconds, "seconds_first_step": first,
        **rates,
        "loss_first": sum(state.losses[:quarter]) / quarter if state.losses else None,
        "loss_last": sum(state.losses[-quarter:]) / quarter if state.losses else None,
        "checkpoint": checkpoint.latest(loop.output), "log_dir": loop.log_dir,
    }  # fmt: skip
    write_bytes_atomic(
        locate(loop.output).join("summary.json"), json.dumps(summary, indent=2).encode()
    )
    log.info("%s finished: %s", loop.kind, json.dumps(summary))
    if steady is None:
        speed = f"{rates['images_per_s']:.1f} img/s (start-up included: one step this run)"
    else:
        speed = f"{steady:.1f} img/s excluding start-up (the first step, {first:.1f} s)"
    loss = f"  loss {summary['loss_last']:.4f}" if state.losses else ""
    progress(f"done {state.step}/{loop.total_steps} steps in {duration(seconds)}{loss}  {speed}")


class _Stdout(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the time (Ray's worker log redirection,
    pytest's capture), with the message only."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


PROGRESS_LOGGER = "training.progress"


def progress(line: str) -> None:
    """One progress line on stdout, through the logger ``training.progress`` (handlers can
    be added to it; it does not propagate, so a root handler on the terminal does not
    repeat it)."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        logger.addHandler(_Stdout())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logger.info(line)
