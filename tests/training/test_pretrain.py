"""Pretraining end to end: through a real local Ray, killed and resumed, on S3, its pieces."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models import encoder_file
from models.mae import MAE, MAEConfig
from models.vit import VisionTransformer, load_encoder_state, vit_test
from tests.training.pretrain_shards import write_dataset
from tests.training.progress import progress_lines
from training import checkpoint
from training.config import PretrainConfig
from training.loop import Job, NonFiniteLossError, optimizer_step
from training.optim import adamw, param_groups, warmup_cosine
from training.pretrain import parse_args, run
from training.pretrain_loop import loop_config, mae_forward
from training.ray_train import worker_context

ROOT = Path(__file__).resolve().parents[2]

SMALL = {
    "preset": "vit_test", "image_size": 32, "decoder_dim": 32, "decoder_depth": 1,
    "decoder_heads": 4, "batch_size": 8, "warmup_steps": 4, "base_lr": 0.1,
    "loader_workers": 0, "shuffle_buffer": 16, "log_every": 2, "picture_every": 0,
}  # fmt: skip


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process training runs with one thread: two threads on two busy cores thrash."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def metrics(log_dir: str) -> list[dict]:
    return [json.loads(line) for line in open(f"{log_dir}/metrics.jsonl", encoding="utf-8")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("humans")
    write_dataset(str(root), shards=4, per_shard=16, size=(40, 40), corrupt={(1, 3)})
    # the parts of the curation job's summary.json that a model's lineage records
    summary = {"run_id": "20261201T000000-abc123", "code_version": "b69db1c",
               "finished_at": "2026-12-01T01:00:00+00:00"}  # fmt: skip
    (root / "summary.json").write_text(json.dumps(summary))
    return str(root)


def test_pretrains_on_ray_with_two_workers(ray_cluster, dataset, tmp_path) -> None:
    values = dict(SMALL, dataset=dataset, output=str(tmp_path / "run"), num_workers=2,
                  cpus_per_worker=0.5, total_steps=40, checkpoint_every=20, picture_every=20)  # fmt: skip
    summary = run(PretrainConfig(**values))
    assert summary["workers"] == 2 and summary["final_step"] == 40
    assert summary["global_batch"] == 16
    rows = metrics(summary["log_dir"])
    first, last = rows[:4], rows[-4:]  # window means over 8 steps of both ranks
    assert sum(r["loss"] for r in last) < 0.85 * sum(r["loss"] for r in first)
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["skipped_samples"]["decode"] >= 1  # the corrupt sample, counted not fatal
    assert [r["step"] for r in rows] == list(range(2, 41, 2))
    assert all(r["images_per_s"] > 0 and r["tflops_per_device"] > 0 for r in rows)
    assert os.path.exists(f"{summary['log_dir']}/pictures/step_00000020.png")
    assert list(Path(summary["log_dir"], "tensorboard").iterdir())
    stored = encoder_file.load(summary["encoder"])  # tensors, config and lineage
    assert (stored.preset, stored.config.image_size, stored.config.patch_size) == (
        "vit_test", (32, 32), 16)  # fmt: skip
    encoder = VisionTransformer(stored.config)
    assert load_encoder_state(encoder, stored.state) == ([], [])
    made_of = stored.lineage
    assert made_of == summary["lineage"] and made_of["dataset"] == dataset
    assert (made_of["dataset_run_id"], made_of["dataset_code_version"]) == (
        "20261201T000000-abc123", "b69db1c")  # fmt: skip
    assert made_of["files"]["folder"] == "manifests" and made_of["files"]["count"] == 4
    assert made_of["samples_seen"] == 40 * 16 and made_of["samples_skipped"]["decode"] >= 1
    assert made_of["where"] is None
    exported = tmp_path / "again.pt"
    assert checkpoint.main([str(tmp_path / "run"), str(exported)]) == 0
    assert encoder_file.load(str(exported)).state.keys() == stored.state.keys()


def test_killed_run_resumes_from_its_checkpoint(dataset, tmp_path, capsys) -> None:
    out, logs = tmp_path / "run", tmp_path / "logs"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    cmd = [sys.executable, "-m", "training.pretrain", *flags, "--dataset", dataset,
           "--output", str(out), "--log-dir", str(logs), "--no-ray",
           "--total-steps", "400", "--checkpoint-every", "3"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while checkpoint.latest(str(out)) is None or _step(out) < 6:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _step(out)
    saved = torch.load(f"{checkpoint.latest(str(out))}/optim.pt")
    before = len(metrics(str(logs)))
    # rerun the same command (in this process, to spare a second interpreter start)
    values = dict(SMALL, dataset=dataset, output=str(out), log_dir=str(logs), ray=False,
                  total_steps=killed_at + 4, checkpoint_every=100)  # fmt: skip
    capsys.readouterr()
    run(PretrainConfig(**values))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["start_step"] == killed_at and summary["final_step"] == killed_at + 4
    assert summary["image_size"] == SMALL["image_size"] and "img_size" not in summary
    # a progress line at every logged step, counting on from the checkpoint, then the last one
    lines, done = progress_lines(capsys.readouterr().out)
    assert [line["step"] for line in lines] == [r["step"] for r in metrics(str(logs))[before:]]
    assert all(line["total"] == killed_at + 4 for line in lines)
    for line, row in zip(lines, metrics(str(logs))[before:], strict=True):
        assert line["loss"] == pytest.approx(row["loss"], abs=6e-5)
        assert line["lr"] == pytest.approx(row["lr"], rel=0.06, abs=1e-12)
        # a rate and an ETA once a step after the run's first one has been timed
        assert (line["rate"] is None) == (line["step"] == killed_at + 1) == (line["eta"] == "-")
    assert lines[-1]["eta"] == "0s"
    assert done["step"] == killed_at + 4 and done["excludes_startup"]
    # the rate leaves out the first step (start-up): the steps after it over their time
    steady = (4 - 1) * 8 / (summary["seconds_this_run"] - summary["seconds_first_step"])
    assert summary["images_per_s"] == pytest.approx(steady, rel=1e-6)
    assert done["rate"] == pytest.approx(summary["images_per_s"], abs=0.051)
    # the lineage counts every sample the model saw, over both runs
    assert summary["lineage"]["samples_seen"] == (killed_at + 4) * 8
    new_rows = metrics(str(logs))[before:]
    # the step count continued from the checkpoint (logged every 2 steps), no restart at 0
    steps = [r["step"] for r in new_rows]
    assert steps == [
        s for s in range(killed_at + 1, killed_at + 5) if s % 2 == 0 or s == killed_at + 4
    ]
    # the restored optimiser carries the saved moments forward (AdamW's step counter too)
    resumed = torch.load(f"{checkpoint.latest(str(out))}/optim.pt")
    name = "encoder.blocks.0.attn.qkv.weight"
    assert saved["state"][name]["step"] + 4 == resumed["state"][name]["step"]


def _step(out: Path) -> int:
    return json.loads((out / "checkpoints" / "latest.json").read_text())["step"]


def _small_model() -> tuple[MAE, torch.optim.Optimizer, object]:
    cfg = MAEConfig(
        encoder=vit_test(image_size=32), decoder_dim=32, decoder_depth=1, decoder_heads=4
    )
    model = MAE(cfg)
    opt = adamw(param_groups(model, lr=1e-3, weight_decay=0.05), lr=1e-3)
    return model, opt, warmup_cosine(opt, warmup_steps=2, total_steps=10)


def test_checkpoint_round_trip_restores_optimiser_and_schedule(tmp_path) -> None:
    model, opt, sched = _small_model()
    for _ in range(3):
        loss, _, _ = model(torch.randn(2, 3, 32, 32))
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    position = {"world_size": 1, "num_workers": 1, "epochs": [2], "done": [1]}
    checkpoint.save(str(tmp_path), step=3, model=model, optimizer=opt, scheduler=sched,
                    data_position=position)  # fmt: skip
    fresh, fresh_opt, fresh_sched = _small_model()
    state = checkpoint.restore(checkpoint.latest(str(tmp_path)), model=fresh,
                               optimizer=fresh_opt, scheduler=fresh_sched)  # fmt: skip
    assert state["step"] == 3 and state["data_positions"] == [position]
    assert fresh_sched.get_last_lr() == sched.get_last_lr()
    for group, fresh_group in zip(opt.param_groups, fresh_opt.param_groups, strict=True):
        assert group["lr"] == fresh_group["lr"]
        for p, q in zip(group["params"], fresh_group["params"], strict=True):
            torch.testing.assert_close(p, q)
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], fresh_opt.state[q]["exp_avg_sq"])


def test_non_finite_loss_stops_with_a_clear_error() -> None:
    model, opt, sched = _small_model()
    with torch.no_grad():
        model.encoder.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    cfg = PretrainConfig(dataset="unused", output="/tmp/unused", **dict(SMALL, bf16=False))
    ctx = worker_context()
    job = Job(loop=loop_config(cfg), ctx=ctx, model=model, optimizer=opt, scheduler=sched,
              batches=iter([torch.zeros(2, 3, 32, 32, dtype=torch.uint8)]),
              forward=mae_forward(model, ctx.device), images_per_step=2)  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 5.*--base-lr"):
        optimizer_step(job, step=4)


def test_pretrains_from_and_to_s3(s3_bucket, tmp_path) -> None:
    data, out = f"s3://{s3_bucket}/humans", f"s3://{s3_bucket}/runs/a"
    write_dataset(data, shards=2, per_shard=6, size=(40, 40))
    values = dict(SMALL, dataset=data, output=out, log_dir=str(tmp_path), ray=False,
                  total_steps=4, checkpoint_every=2)  # fmt: skip
    summary = run(PretrainConfig(**values))
    assert (
        summary["final_step"] == 4 and summary["checkpoint"] == f"{out}/checkpoints/step_00000004"
    )
    assert checkpoint.latest(out) == summary["checkpoint"]


def test_config_file_and_flags(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dataset: /d\noutput: /o\npreset: vit_tiny\nbatch_size: 4\n")
    cfg = parse_args(["--config", str(path), "--batch-size", "6", "--no-bf16"])
    assert (cfg.preset, cfg.batch_size, cfg.bf16, cfg.dataset) == ("vit_tiny", 6, False, "/d")
    assert cfg.log_dir == "/o/logs" and cfg.global_batch == 6
    with pytest.raises(ValueError, match="unknown --preset"):
        dataclasses.replace(cfg, preset="sapiens_3b")
    path.write_text("dataset: /d\noutput: /o\nbatchsize: 4\n")
    with pytest.raises(ValueError, match=r"unknown keys \['batchsize'\]"):
        parse_args(["--config", str(path)])


def test_help_documents_every_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for field in dataclasses.fields(PretrainConfig):
        flag = f"--{field.name.replace('_', '-')}"
        assert flag in out
    assert "mask_ratio" not in out and "fraction of patches hidden" in out
