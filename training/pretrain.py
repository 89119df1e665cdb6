r"""MAE pretraining of a Sapiens backbone on curated shards, on Ray Train.

    python -m training.pretrain --dataset s3://bucket/humans300m --output s3://bucket/runs/a \
        --preset sapiens_0.3b --num-workers 8 --use-gpu
    ray job submit --working-dir . -- python -m training.pretrain --config pretrain.yaml

Without a cluster address (``--ray-address`` or RAY_ADDRESS) it starts an embedded local Ray;
``--no-ray`` runs the same loop in this process. Rerunning with the same ``--output``
resumes from its latest checkpoint. The dataset, the ``--where`` predicate and the paths are
checked before Ray starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

from runtime.storage import locate
from training import cli
from training.config import PretrainConfig


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    """The run's config from flags and ``--config``; ConfigError/ValueError (one line)."""
    parser = cli.parser(PretrainConfig, "python -m training.pretrain", __doc__)
    return cli.config(parser.parse_args(argv))


def check(config: PretrainConfig) -> None:
    """Refuse, before Ray starts, what would fail inside it: no dataset (or not one the
    curation job wrote), a ``--where`` that does not parse or names no manifest column, a
    file where the run folder goes, relative paths under ``ray job submit``."""
    from runtime.ray_env import check_address
    from training.data.shards import check_predicate, list_shards

    cli.require(config.dataset, "--dataset", "folder")
    shards = list_shards(config.dataset)
    if config.where is not None:
        check_predicate(shards[0].manifest, config.where)
    cli.refuse_file(config.output, "--output")
    cli.refuse_file(config.log_dir, "--log-dir")
    check_job_paths(config)
    if config.ray:
        check_address(config.ray_address)


def check_job_paths(config: PretrainConfig) -> None:
    """Under ``ray job submit --working-dir``, refuse relative local paths (see
    ``runtime.ray_env.check_submitted_job``)."""
    from runtime.ray_env import check_submitted_job, submitted_job_runtime_env

    log_dir = config.log_dir
    relative_log_dir = log_dir and not locate(log_dir).is_s3 and not os.path.isabs(log_dir)
    in_working_dir = "working_dir" in (submitted_job_runtime_env() or {})
    if in_working_dir and relative_log_dir and locate(config.output).is_s3:
        # the default beside an S3 output (./pretrain_logs/<name>): checkpoints are safe
        logging.getLogger(__name__).warning(
            "--log-dir %r is relative: the job's metrics and pictures will stay in its "
            "temporary working dir on the cluster (%s); give an absolute --log-dir",
            log_dir,
            os.getcwd(),
        )
        log_dir = None
    check_submitted_job(
        {"--dataset": config.dataset, "--output": config.output, "--log-dir": log_dir}
    )


def run(config: PretrainConfig) -> dict:
    """Train to ``total_steps`` (resuming if a checkpoint exists); returns the summary."""
    from runtime.storage import read_bytes
    from training.pretrain_loop import train_loop
    from training.ray_train import RayScaling, launch

    values = dataclasses.asdict(config)
    if not config.ray:
        train_loop(values)
    else:
        scaling = RayScaling(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            cpus_per_worker=config.cpus_per_worker,
            address=config.ray_address,
            name=config.name,
        )
        launch(train_loop, values, scaling)
    return json.loads(read_bytes(locate(config.output).join("summary.json")))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def body() -> None:
        config = parse_args(argv)
        check(config)
        print(json.dumps(run(config), indent=2))

    return cli.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
