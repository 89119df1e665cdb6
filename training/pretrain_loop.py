"""The pretraining loop of one worker: a plain function, with or without Ray around it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time

import torch
import torch.distributed as dist
from torch import nn

from models.flops import mae_train_flops, peak_flops
from models.mae import MAE, MAEConfig
from models.vit import preset
from runtime.storage import locate, write_bytes_atomic
from training import checkpoint
from training.config import PretrainConfig
from training.data import DataPosition, PretrainDataConfig, make_loader, normalize
from training.data.augment import denormalize
from training.lineage import dataset_lineage
from training.metrics_log import MetricsLog, device_name, save_reconstruction, throughput
from training.optim import adamw, param_groups, scaled_lr, warmup_cosine
from training.parallel import parallelize, resolve_strategy
from training.ray_train import WorkerContext, worker_context

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite; training stopped."""


def build_model(cfg: PretrainConfig, ctx: WorkerContext) -> tuple[MAE, nn.Module, MAEConfig]:
    mae_cfg = MAEConfig(
        encoder=preset(cfg.preset, img_size=cfg.img_size, drop_path=cfg.drop_path),
        mask_ratio=cfg.mask_ratio,
        norm_pix_loss=cfg.norm_pix_loss,
        decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth,
        decoder_heads=cfg.decoder_heads,
        decoder_mlp_dim=4 * cfg.decoder_dim,
    )
    torch.manual_seed(
        cfg.seed
    )  # identical initial weights on every rank (FSDP2 does not broadcast)
    model = MAE(mae_cfg).to(ctx.device)
    strategy = resolve_strategy(cfg.strategy, mae_cfg.encoder.depth)
    wrapped = parallelize(
        model,
        blocks=[model.encoder.blocks, model.decoder_blocks],
        strategy=strategy,
        device=ctx.device,
        bf16=cfg.bf16 and ctx.device.type == "cuda",
        activation_checkpointing=cfg.activation_checkpointing,
        compile=cfg.compile,
    )
    log.info("rank %d: %s, strategy %s, device %s", ctx.rank, cfg.preset, strategy, ctx.device)
    return model, wrapped, mae_cfg


def _no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on micro-batches that are not the last one."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return contextlib.nullcontext()


def train_step(
    cfg, ctx, model, optimizer, scheduler, stream, step: int
) -> tuple[float, float, tuple]:
    """One optimiser step over ``accum_steps`` micro-batches; returns (loss, grad norm, last outputs)."""
    autocast = torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and ctx.device.type == "cuda"
    )
    total = torch.zeros((), device=ctx.device)
    for micro in range(cfg.accum_steps):
        last = micro == cfg.accum_steps - 1
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(last)
        imgs = normalize(next(stream).to(ctx.device, non_blocking=True))
        with _no_sync(model, last), autocast:
            loss, pred, mask = model(imgs)
            (loss / cfg.accum_steps).backward()
        total += loss.detach() / cfg.accum_steps
    params = [p for p in model.parameters() if p.grad is not None]
    max_norm = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    loss_value, norm_value = total.item(), norm.item()
    # the norm is global (gradients are all-reduced), so every rank stops at the same step
    if not (torch.isfinite(norm) and torch.isfinite(total)):
        raise NonFiniteLossError(
            f"non-finite loss {loss_value} / gradient norm {norm_value} at step {step + 1} "
            f"(lr {scheduler.get_last_lr()[0]:.3g}); lower --base-lr, raise --warmup-steps, "
            "or resume from an earlier checkpoint"
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return loss_value, norm_value, (imgs.detach(), pred.detach(), mask.detach())


def write_picture(path: str, mae: MAE, outputs: tuple, count: int = 4) -> None:
    imgs, pred, mask = (t[:count].float() for t in outputs)
    p = mae.config.encoder.patch_size
    pixel_mask = mae.unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * 3))  # 1 = hidden
    recon = mae.reconstruct(pred, imgs)
    shown = denormalize(imgs)
    masked = shown * (1 - pixel_mask) + 0.5 * pixel_mask
    pasted = shown * (1 - pixel_mask) + denormalize(recon) * pixel_mask
    save_reconstruction(path, shown, masked, denormalize(recon), pasted)


def train_loop(values: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer (also called directly with --no-ray)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = PretrainConfig(**values)
    ctx = worker_context()
    mae, model, mae_cfg = build_model(cfg, ctx)
    lr = scaled_lr(cfg.base_lr, cfg.global_batch)
    groups = param_groups(model, lr=lr, weight_decay=cfg.weight_decay)
    optimizer = adamw(groups, lr=lr, betas=(0.9, cfg.beta2))
    scheduler = warmup_cosine(
        optimizer,
        warmup_steps=cfg.warmup_steps,
        total_steps=cfg.total_steps,
        min_ratio=cfg.min_lr_ratio,
    )
    step, position, prior = 0, None, {}
    resume_from = checkpoint.latest(cfg.output)
    if resume_from:
        state = checkpoint.restore(
            resume_from, model=model, optimizer=optimizer, scheduler=scheduler
        )
        step = state["step"]
        prior = state["extra"].get("lineage") or {}
        positions = state["data_positions"]
        if len(positions) == ctx.world_size:
            position = DataPosition.from_dict(positions[ctx.rank])
        else:  # another world size: make_loader restarts the furthest epoch, with a warning
            epoch = max(e for p in positions for e in p["epochs"])
            position = DataPosition(len(positions), 0, [epoch], [0])
        log.info("rank %d resumed from %s at step %d", ctx.rank, resume_from, step)
    torch.manual_seed(cfg.seed * 7919 + ctx.rank * 104729 + step)  # masks differ across ranks
    data_cfg = PretrainDataConfig(
        dataset=cfg.dataset,
        img_size=(cfg.img_size, cfg.img_size),
        batch_size=cfg.batch_size,
        num_workers=cfg.loader_workers,
        shuffle_buffer=cfg.shuffle_buffer,
        where=cfg.where,
        seed=cfg.seed,
    )
    batches = make_loader(data_cfg, rank=ctx.rank, world_size=ctx.world_size, position=position)
    lineage = Lineage(dataset_lineage(cfg.dataset, cfg.where), prior.get("samples_skipped"))
    run_loop(cfg, ctx, mae, model, mae_cfg, optimizer, scheduler, batches, step, resume_from,
             lineage)  # fmt: skip


@dataclasses.dataclass
class Lineage:
    """What the run is made from (training.lineage); skipped counts add up across resumes."""

    dataset: dict
    prior_skipped: dict | None = None  # samples skipped by the runs before a resume

    def at(self, step: int, global_batch: int, skipped: dict[str, int]) -> dict:
        total = {k: skipped.get(k, 0) + (self.prior_skipped or {}).get(k, 0)
                 for k in {*skipped, *(self.prior_skipped or {})}}  # fmt: skip
        return {**self.dataset, "samples_seen": step * global_batch,
                "samples_skipped": dict(sorted(total.items()))}  # fmt: skip


def run_loop(
    cfg, ctx, mae, model, mae_cfg, optimizer, scheduler, batches, step, resume_from, lineage
) -> None:
    metrics = MetricsLog(cfg.log_dir, enabled=ctx.is_main)
    flops = mae_train_flops(mae_cfg)
    peak = peak_flops(device_name(ctx.device))
    stream = iter(batches)
    start_step, started = step, time.perf_counter()
    window_start, window_steps, losses = time.perf_counter(), 0, []
    while step < cfg.total_steps:
        loss, norm, outputs = train_step(cfg, ctx, model, optimizer, scheduler, stream, step)
        step += 1
        window_steps += 1
        losses.append(loss)
        if step % cfg.log_every == 0 or step == cfg.total_steps:
            seconds = time.perf_counter() - window_start
            rates = throughput(
                images=window_steps * cfg.global_batch,
                seconds=seconds,
                flops_per_image=flops,
                world_size=ctx.world_size,
                peak=peak,
            )
            row = {
                "loss": _mean_over_ranks(losses[-window_steps:], ctx),
                "grad_norm": norm,
                "lr": scheduler.get_last_lr()[0],
                **rates,
            }
            row.update({f"skipped_{k}": v for k, v in batches.errors().items()})
            metrics.log(step, row)
            window_start, window_steps = time.perf_counter(), 0
        if ctx.is_main and cfg.picture_every and step % cfg.picture_every == 0:
            write_picture(f"{cfg.log_dir}/pictures/step_{step:08d}.png", mae, outputs)
        if step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
            made_of = lineage.at(step, cfg.global_batch, _skipped(batches, ctx.device))
            checkpoint.save(
                cfg.output, step=step, model=model, optimizer=optimizer, scheduler=scheduler,
                data_position=batches.position.to_dict(),
                extra={"config": dataclasses.asdict(cfg), "lineage": made_of},
            )  # fmt: skip
    metrics.close()
    finish(cfg, ctx, mae_cfg, losses, start_step, step, time.perf_counter() - started,
           resume_from, batches, lineage)  # fmt: skip


def _mean_over_ranks(values: list[float], ctx: WorkerContext) -> float:
    """Mean loss of a logging window over all ranks (a collective at every log step)."""
    mean = torch.tensor(sum(values) / len(values), dtype=torch.float64)
    if dist.is_initialized():
        mean = mean.to(ctx.device)
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
    return float(mean)


def _skipped(batches, device: torch.device) -> dict[str, int]:
    """Samples skipped so far by every rank's loader, by kind (a collective when distributed)."""
    errors = batches.errors()
    if dist.is_initialized():
        totals = torch.tensor(list(errors.values()), dtype=torch.long, device=device)  # NCCL
        dist.all_reduce(totals)
        errors = dict(zip(errors, totals.tolist(), strict=True))
    return errors


def finish(
    cfg, ctx, mae_cfg, losses, start_step, step, seconds, resume_from, batches, lineage
) -> None:
    """Export the encoder and write the run summary (rank 0)."""
    errors = _skipped(batches, ctx.device)
    if not ctx.is_main:
        return
    out = locate(cfg.output)
    latest = checkpoint.latest(cfg.output)
    checkpoint.export_encoder(latest, out.join("encoder.pt").uri)
    images = (step - start_step) * cfg.global_batch
    rates = throughput(
        images=images, seconds=seconds, flops_per_image=mae_train_flops(mae_cfg),
        world_size=ctx.world_size, peak=peak_flops(device_name(ctx.device)),
    )  # fmt: skip
    head = losses[: max(1, len(losses) // 4)]  # this rank's first and last quarter
    tail = losses[-max(1, len(losses) // 4) :]
    summary = {
        "preset": cfg.preset, "img_size": cfg.img_size, "workers": ctx.world_size,
        "device": device_name(ctx.device), "resumed_from": resume_from,
        "start_step": start_step, "final_step": step, "global_batch": cfg.global_batch,
        "images_this_run": images, "seconds_this_run": seconds, **rates,
        "loss_first": sum(head) / len(head) if losses else None,
        "loss_last": sum(tail) / len(tail) if losses else None,
        "skipped_samples": errors, "checkpoint": latest, "encoder": out.join("encoder.pt").uri,
        "log_dir": cfg.log_dir, "lineage": lineage.at(step, cfg.global_batch, errors),
    }  # fmt: skip
    write_bytes_atomic(out.join("summary.json"), json.dumps(summary, indent=2).encode())
    log.info("pretraining finished: %s", json.dumps(summary))
