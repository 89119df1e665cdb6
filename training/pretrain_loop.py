"""The pretraining job of one worker: the MAE, its optimiser, data, pictures and encoder export,
run by the shared loop (``training.loop``); a plain function, with or without Ray around it."""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.distributed as dist
from torch import nn

from models.flops import mae_train_flops
from models.mae import MAE, MAEConfig
from models.vit import preset
from runtime.storage import locate
from training import checkpoint
from training.config import PretrainConfig
from training.data import DataPosition, PretrainDataConfig, make_loader, normalize
from training.data.augment import denormalize
from training.lineage import dataset_lineage
from training.loop import Job, LoopConfig, LoopState, resume, run
from training.metrics_log import save_reconstruction
from training.optim import adamw, param_groups, scaled_lr, warmup_cosine
from training.parallel import parallelize, resolve_strategy
from training.ray_train import WorkerContext, worker_context

log = logging.getLogger(__name__)


def build_model(cfg: PretrainConfig, ctx: WorkerContext) -> tuple[MAE, nn.Module, MAEConfig]:
    mae_cfg = MAEConfig(
        encoder=preset(cfg.preset, image_size=cfg.image_size, drop_path=cfg.drop_path),
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


def mae_forward(model: nn.Module, device: torch.device):
    """The job's forward: a uint8 micro-batch -> (MAE loss, detached (images, prediction,
    mask) for pictures)."""

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        imgs = normalize(batch.to(device, non_blocking=True))
        loss, pred, mask = model(imgs)
        return loss, (imgs, pred.detach(), mask.detach())

    return forward


def loop_config(cfg: PretrainConfig) -> LoopConfig:
    return LoopConfig(kind="pretraining", output=cfg.output, log_dir=cfg.log_dir,
                      total_steps=cfg.total_steps, log_every=cfg.log_every,
                      checkpoint_every=cfg.checkpoint_every, accum_steps=cfg.accum_steps,
                      clip_grad=cfg.clip_grad, bf16=cfg.bf16, lr_flag="--base-lr",
                      config=dataclasses.asdict(cfg))  # fmt: skip


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
    state, saved = resume(cfg.output, model=model, optimizer=optimizer, scheduler=scheduler,
                          ctx=ctx)  # fmt: skip
    torch.manual_seed(cfg.seed * 7919 + ctx.rank * 104729 + state.step)  # masks differ by rank
    batches = _loader(cfg, ctx, _position(saved.get("data_positions"), ctx))
    prior = saved.get("extra", {}).get("lineage") or {}
    lineage = Lineage(dataset_lineage(cfg.dataset, cfg.where), prior.get("samples_skipped"))

    def picture(step: int, outputs: tuple) -> None:
        if ctx.is_main and cfg.picture_every and step % cfg.picture_every == 0:
            write_picture(f"{cfg.log_dir}/pictures/step_{step:08d}.png", mae, outputs)

    def finish(state: LoopState) -> dict:
        """Export the encoder (rank 0); the summary's pretraining fields."""
        errors = _skipped(batches, ctx.device)  # a collective: every rank
        out = locate(cfg.output)
        if ctx.is_main:
            checkpoint.export_encoder(checkpoint.latest(cfg.output), out.join("encoder.pt").uri)
        return {"preset": cfg.preset, "image_size": cfg.image_size, "skipped_samples": errors,
                "encoder": out.join("encoder.pt").uri,
                "lineage": lineage.at(state.step, cfg.global_batch, errors)}  # fmt: skip

    job = Job(
        loop=loop_config(cfg), ctx=ctx, model=model, optimizer=optimizer, scheduler=scheduler,
        batches=iter(batches), forward=mae_forward(model, ctx.device),
        images_per_step=cfg.global_batch, flops_per_image=mae_train_flops(mae_cfg),
        data_position=lambda: batches.position.to_dict(),
        lineage=lambda step: lineage.at(step, cfg.global_batch, _skipped(batches, ctx.device)),
        log_extra=lambda: {f"skipped_{k}": v for k, v in batches.errors().items()},
        after_step=picture, finish=finish,
    )  # fmt: skip
    run(job, state)


def _loader(cfg: PretrainConfig, ctx: WorkerContext, position: DataPosition | None):
    data_cfg = PretrainDataConfig(
        dataset=cfg.dataset,
        image_size=(cfg.image_size, cfg.image_size),
        batch_size=cfg.batch_size,
        num_workers=cfg.loader_workers,
        shuffle_buffer=cfg.shuffle_buffer,
        where=cfg.where,
        seed=cfg.seed,
    )
    return make_loader(data_cfg, rank=ctx.rank, world_size=ctx.world_size, position=position)


def _position(positions: list[dict] | None, ctx: WorkerContext) -> DataPosition | None:
    """This rank's place in the data of a resumed run (None for a fresh one)."""
    if not positions:
        return None
    if len(positions) == ctx.world_size:
        return DataPosition.from_dict(positions[ctx.rank])
    # another world size: make_loader restarts the furthest epoch, with a warning
    epoch = max(e for p in positions for e in p["epochs"])
    return DataPosition(len(positions), 0, [epoch], [0])


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


def _skipped(batches, device: torch.device) -> dict[str, int]:
    """Samples skipped so far by every rank's loader, by kind (a collective when distributed)."""
    errors = batches.errors()
    if dist.is_initialized():
        totals = torch.tensor(list(errors.values()), dtype=torch.long, device=device)  # NCCL
        dist.all_reduce(totals)
        errors = dict(zip(errors, totals.tolist(), strict=True))
    return errors
