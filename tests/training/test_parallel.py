"""FSDP2 with activation checkpointing and gradient accumulation on 2 CPU processes (gloo):
a training step, a full-state checkpoint with clean names, and a restore."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import free_port


def _worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from models.mae import MAE, MAEConfig
    from models.vit import vit_test
    from training import checkpoint
    from training.config import PretrainConfig
    from training.loop import Job, optimizer_step
    from training.optim import adamw, param_groups, warmup_cosine
    from training.parallel import parallelize, resolve_strategy
    from training.pretrain_loop import loop_config, mae_forward
    from training.ray_train import worker_context

    assert resolve_strategy("auto", depth=40) == "fsdp" and resolve_strategy("auto", 24) == "ddp"
    torch.manual_seed(0)
    model = MAE(MAEConfig(encoder=vit_test(), decoder_dim=32, decoder_depth=1, decoder_heads=4))
    cpu = torch.device("cpu")
    wrapped = parallelize(model, blocks=[model.encoder.blocks, model.decoder_blocks],
                          strategy="fsdp", device=cpu, bf16=False,
                          activation_checkpointing=True, compile=False)  # fmt: skip
    opt = adamw(param_groups(wrapped, lr=1e-3, weight_decay=0.05), lr=1e-3)
    sched = warmup_cosine(opt, warmup_steps=1, total_steps=10)
    cfg = PretrainConfig(dataset="-", output=out, preset="vit_test", image_size=32, bf16=False,
                         accum_steps=2)  # fmt: skip
    torch.manual_seed(rank)  # different data per rank
    stream = iter([torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8) for _ in range(4)])
    ctx = worker_context()
    job = Job(loop=loop_config(cfg), ctx=ctx, model=wrapped, optimizer=opt, scheduler=sched,
              batches=stream, forward=mae_forward(wrapped, ctx.device), images_per_step=8)  # fmt: skip
    losses = [optimizer_step(job, s)[0] for s in range(2)]
    checkpoint.save(out, step=2, model=wrapped, optimizer=opt, scheduler=sched,
                    data_position={"rank": rank})  # fmt: skip
    state = checkpoint.restore(
        checkpoint.latest(out), model=wrapped, optimizer=opt, scheduler=sched
    )
    assert state["step"] == 2 and state["data_positions"] == [{"rank": 0}, {"rank": 1}]
    assert all(torch.isfinite(torch.tensor(losses)))
    dist.destroy_process_group()


def test_fsdp_with_activation_checkpointing_trains_saves_and_restores(tmp_path) -> None:
    mp.spawn(_worker, args=(str(tmp_path), free_port()), nprocs=2)
    saved = torch.load(tmp_path / "checkpoints" / "step_00000002" / "model.pt")
    # full, unsharded tensors under the plain model's names
    assert "encoder.blocks.0.attn.qkv.weight" in saved
    assert not any("_checkpoint_wrapped_module" in k or "_fsdp" in k for k in saved)
    assert saved["encoder.blocks.1.mlp.fc1.weight"].shape == (256, 64)
    optim = torch.load(tmp_path / "checkpoints" / "step_00000002" / "optim.pt")
    assert optim["state"]["encoder.blocks.0.attn.qkv.weight"]["step"] == 2
