"""Fine-tune a (pretrained) Sapiens backbone on labelled shards for one task, on Ray Train.

    ray job submit --working-dir . -- python -m training.finetune --task pose \
        --data s3://b/labelled --output s3://b/runs/pose --pretrained encoder.pt \
        --preset sapiens_0.3b --workers 8 --gpu true

Recipe (Sapiens): AdamW, weight decay 0.1 (none on norms, biases, position table, class
token), layer-wise lr decay 0.85 over the encoder, linear warmup then cosine decay;
gradient clipping 1.0; bf16 autocast on GPU; FSDP2 for the 1B and 2B backbones. The
pieces are the pretraining ones (training.optim, training.checkpoint, training.parallel,
training.ray_train, training.metrics_log, the loop runner training.loop); the task's data,
head, loss and metrics are its ``Task`` (training.tasks.registry). A rerun with the same
--output resumes from its latest checkpoint; ``--no-ray true`` runs the same loop in this
process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from runtime.storage import locate
from training.config import FinetuneConfig


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
