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

import torch

from models.vit import VisionTransformer, preset
from runtime.storage import locate
from training.config import FinetuneConfig
from training.tasks.heads import TaskModel, load_pretrained
from training.tasks.losses import depth_loss, normal_loss, pose_loss, seg_loss


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
