r"""Fine-tune a (pretrained) Sapiens backbone on labelled shards for one task, on Ray Train.

    ray job submit --working-dir . -- python -m training.finetune --task pose \
        --dataset s3://b/labelled --output s3://b/runs/pose --pretrained encoder.pt \
        --preset sapiens_0.3b --num-workers 8 --use-gpu

Recipe (Sapiens): AdamW, weight decay 0.1 (none on norms, biases, position table, class
token), layer-wise lr decay 0.85 over the encoder, linear warmup then cosine decay;
gradient clipping 1.0; bf16 autocast on GPU; FSDP2 for the 1B and 2B backbones. The
pieces are the pretraining ones (training.optim, training.checkpoint, training.parallel,
training.ray_train, training.metrics_log, the loop runner training.loop); the task's data,
head, loss and metrics are its ``Task`` (training.tasks.registry). A rerun with the same
--output resumes from its latest checkpoint; ``--no-ray`` runs the same loop in this
process. The dataset (labelled for the task), the pretrained weights and the paths are checked
before Ray starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import warnings
import zipfile

from runtime.storage import locate
from training import cli
from training.config import FinetuneConfig


def run(cfg: FinetuneConfig) -> dict:
    """Train to ``total_steps`` (resuming if a checkpoint exists); returns the run summary."""
    from runtime.storage import read_bytes
    from training.finetune_loop import train_loop
    from training.ray_train import RayScaling, launch

    values = dataclasses.asdict(cfg)
    if not cfg.ray:
        train_loop(values)
    else:
        scaling = RayScaling(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                             cpus_per_worker=cfg.cpus_per_worker, address=cfg.ray_address,
                             name=cfg.name)  # fmt: skip
        launch(train_loop, values, scaling)
    return json.loads(read_bytes(locate(cfg.output).join("summary.json")))


def parse_args(argv: list[str] | None = None) -> FinetuneConfig:
    """The run's config from flags and ``--config``; ConfigError/ValueError (one line)."""
    parser = cli.parser(FinetuneConfig, "python -m training.finetune", __doc__)
    return cli.config(parser.parse_args(argv))


def check(cfg: FinetuneConfig) -> None:
    """Refuse, before Ray starts, what would fail inside it: a dataset that is missing, not
    labelled or not labelled for the task, pretrained weights that are missing or unreadable,
    a file where the run folder goes."""
    cli.require_labelled(cfg.dataset, cfg.task, cfg.image_size)
    if cfg.pretrained:
        check_pretrained(cfg)
    cli.refuse_file(cfg.output, "--output")
    cli.refuse_file(cfg.log_dir, "--log-dir")
    if cfg.ray:
        from runtime.ray_env import check_address

        check_address(cfg.ray_address)


def check_pretrained(cfg: FinetuneConfig) -> None:
    """Load ``--pretrained`` into the encoder as the workers will, with the encoder on the
    meta device and a local file memory-mapped: a damaged, foreign or wrong-preset file is
    refused in seconds, without holding the weights in memory."""
    import torch

    from models.vit import VisionTransformer, preset
    from training.tasks.model import load_pretrained

    loc = cli.require(cfg.pretrained, "--pretrained", "file")
    if loc.is_s3:
        return  # read whole by the workers; checking it here would download it twice
    if not zipfile.is_zipfile(loc.path):
        raise cli.InputError(
            f"--pretrained {cfg.pretrained}: not a torch checkpoint (no zip archive)"
        )
    with zipfile.ZipFile(loc.path) as archive:
        if any(n.endswith("/constants.pkl") for n in archive.namelist()):
            return  # TorchScript (sapiens_format.is_torchscript): loading it runs the module
    try:
        state = torch.load(loc.path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several kinds for a damaged or foreign file
        raise cli.InputError(
            f"--pretrained {cfg.pretrained}: not readable ({_first(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise cli.InputError(f"--pretrained {cfg.pretrained}: holds a {type(state).__name__}, "
                             "not a state dict")  # fmt: skip
    config = preset(cfg.preset, image_size=cfg.image_size, cls_token=False,
                    patch_padding=cfg.patch_padding)  # fmt: skip
    with torch.device("meta"):
        encoder = VisionTransformer(config)
    try:
        with warnings.catch_warnings():  # copying into a meta tensor is a no-op, as meant here
            warnings.simplefilter("ignore", UserWarning)
            load_pretrained(encoder, state)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise cli.InputError(f"--pretrained {cfg.pretrained}: {_first(exc)}") from None


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def body() -> None:
        cfg = parse_args(argv)
        check(cfg)
        print(json.dumps(run(cfg), indent=2))

    return cli.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
