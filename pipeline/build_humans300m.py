"""Build a Humans-300M-style dataset: ``python -m pipeline.build_humans300m --help``.

    python -m pipeline.build_humans300m --input urls.parquet --output ./out      # local Ray
    ray job submit --working-dir . -- python -m pipeline.build_humans300m \\
        --input s3://bucket/urls/ --output s3://bucket/humans/v1                  # a cluster
    python -m pipeline.build_humans300m --demo                                   # sample corpus

Run the same command again after a crash (or kill -9): finished work is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from curation.classify import ClassifierConfig
from curation.dedup.config import DedupConfig
from curation.detect import DetectorConfig
from curation.fetch import FetchConfig
from curation.sources import SourceConfig, input_kind
from curation.validate import ValidateConfig
from curation.weights import WeightsError
from pipeline.crawl import StreamFailed
from pipeline.job import (
    JobConfig,
    OutputConfig,
    RunConfig,
    init_ray,
    new_run_id,
    write_summary,
)
from pipeline.lock import OutputBusy, OutputLock
from pipeline.plan import Plan, forget_secrets, load_or_build_plan, plan_is_done, planned_columns
from pipeline.resume import (
    Finished,
    check_kept_columns,
    finished_by_partition,
    next_shard_number,
    remove_leftovers,
    unfinished_inputs,
)
from pipeline.sink import Output
from pipeline.stages import StageConfig, fetch_and_validate
from runtime import config as cli
from runtime.ray_env import beside_driver, check_address, check_submitted_job
from runtime.storage import Location, locate
from schemas.version import version_line

log = logging.getLogger("humans300m")

# (section in config files, flag prefix, dataclass, help title, extra flag names)
SECTIONS = [
    ("source", "", SourceConfig, "inputs", {"inputs": ["--input", "-i"]}),
    ("fetch", "fetch", FetchConfig, "fetching", {}),
    ("validate", "validate", ValidateConfig, "validation", {}),
    ("detector", "detector", DetectorConfig, "person detector", {"weights": ["--detector"]}),
    ("dedup", "dedup", DedupConfig, "deduplication", {}),
    ("output", "", OutputConfig, "output", {"output": ["-o"]}),
    ("run", "", RunConfig, "execution", {}),
]


def parser() -> argparse.ArgumentParser:
    p = cli.Parser(
        prog="python -m pipeline.build_humans300m",
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=version_line())
    p.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file (local or s3://) with one mapping per section "
        "(source, fetch, validate, detector, classifiers, dedup, output, run); flags given win",
    )
    p.add_argument(
        "--classifier",
        action="append",
        default=[],
        metavar="JSON",
        help="a pre-filter classifier as JSON (fields of ClassifierConfig); repeatable",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="generate a sample corpus, serve it on 127.0.0.1 and build it into "
        "--output (default ./demo_out/dataset)",
    )
    for section, prefix, cls, title, aliases in SECTIONS:
        cli.add_flags(p, cls, section, prefix, title, aliases)
    return p


def config_from_args(args: argparse.Namespace) -> JobConfig:
    file = cli.load_file(args.config)
    cli.check_sections(file, [s[0] for s in SECTIONS] + ["classifiers"], args.config)
    built = {
        section: cli.build(cls, section, file.get(section), args, prefix=prefix)
        for section, prefix, cls, _, _ in SECTIONS
    }
    return JobConfig(
        classifiers=classifiers_from(file.get("classifiers"), args.classifier), **built
    )


def classifiers_from(listed: object, flags: list[str]) -> list[ClassifierConfig]:
    """Classifiers of the config file's ``classifiers`` list, then of ``--classifier`` JSONs."""
    if listed is not None and not isinstance(listed, list):
        raise cli.ConfigError(f"config classifiers: expected a list of mappings, got {listed!r}")
    entries = [(f"classifiers[{i}]", entry) for i, entry in enumerate(listed or [])]
    for i, text in enumerate(flags):
        try:
            entries.append((f"--classifier #{i + 1}", json.loads(text)))
        except json.JSONDecodeError as exc:
            raise cli.ConfigError(f"config --classifier #{i + 1}: not valid JSON: {exc}") from None
    return [cli.build(ClassifierConfig, where, entry) for where, entry in entries]


def run(config: JobConfig) -> dict:
    """Run the whole job; returns the summary that was written to ``summary.json``."""
    from pipeline.dedup import check_dedup_ready
    from pipeline.detect_stage import check_filters_ready

    started = time.time()
    if not config.source.inputs:
        raise ValueError("no inputs: pass --inputs (a URL list, folder, s3:// prefix or .tar)")
    # inputs may be relative: --working-dir ships them with the job; the output must not be
    check_submitted_job({"--output": config.output.output})
    dataset = locate(config.output.output)
    check_output(dataset)
    if not plan_is_done(dataset, config.source):  # before Ray: a typo fails in a second
        for spec in config.source.inputs:
            input_kind(spec)
    # before Ray too: a kept column missing from an input, or not the dataset's, fails at once
    columns = planned_columns(dataset, config.source)
    check_kept_columns(dataset, columns)
    check_address(config.run.ray_address)  # ray.init would wait minutes for a wrong one
    phases = Phases()
    with phases("check filters"):
        check_filters_ready(config.detector, config.classifiers)  # weights fail here, not mid-run
        if config.run.dedup:
            check_dedup_ready(config.dedup)
    run_id = new_run_id()
    lock = OutputLock(dataset, run_id)
    lock.claim()  # before Ray starts: a busy output fails at once
    try:
        with phases("start Ray"):
            init_ray(config.run)
        lock.confirm()  # its settle time has passed while Ray started
        processed, dedup_counts = _run_locked(dataset, config, run_id, phases, columns)
        extra = {
            "run_id": run_id,  # the release a model's lineage names (training.lineage)
            "detector": detector_note(config),
            "dedup": dedup_counts,
            "phases_s": phases.seconds,
        }
        stream_s = phases.seconds.get("stream", 0.0)
        return write_summary(dataset, config, started, processed, extra, stream_s)
    finally:
        lock.release()


def check_output(dataset: Location) -> None:
    """Refuse an output that is a file, or that cannot be looked at (S3: no such bucket,
    refused credentials, unreachable endpoint), before anything starts."""
    try:
        info = dataset.fs.get_file_info(dataset.path)
    except OSError as exc:
        raise ValueError(f"cannot use --output {dataset.uri}: {str(exc).splitlines()[0]}") from None
    if info.type == pafs.FileType.File:
        raise ValueError(f"--output {dataset.uri} is a file, not a dataset folder")


def _run_locked(
    dataset: Location, config: JobConfig, run_id: str, phases: Phases, columns: pa.Schema
) -> tuple[int, dict]:
    """Everything that writes the dataset: only ever one job at a time (pipeline.lock).
    ``columns``: the kept input columns' types (``planned_columns``)."""
    with phases("plan"):
        plan = load_or_build_plan(
            dataset,
            config.source,
            config.run.plan_partitions,
            ray_above=config.run.plan_ray_above,
            columns=columns,
        )
        removed = remove_leftovers(dataset)
        if removed:
            log.warning("removed %d unfinished files of an earlier run", len(removed))
        done = finished_by_partition(dataset, plan)
    log.info("plan: %d unique inputs, %d already finished", plan.rows, done.keys)
    processed = stream(dataset, plan, done, config, run_id, phases)
    if forget_secrets(dataset, plan):
        log.info("deleted the plan: its URLs held secrets and every input is accounted for")
    dedup_counts: dict = {}
    if config.run.dedup:
        from pipeline.dedup import run_dedup

        with phases("dedup"):
            dedup_counts = run_dedup(dataset.uri, config.dedup)
    return processed, dedup_counts


class Phases:
    """Wall seconds per phase of the job, logged as each ends and kept for the summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        log.info("%s: %.1f s", name, self.seconds[name])


def detector_note(config: JobConfig) -> str:
    if not config.detector.enabled:
        return "none: run without the person detector; every valid image was kept"
    return config.detector.weights


def stream(
    dataset: Location, plan: Plan, done: Finished, config: JobConfig, run_id: str, phases: Phases
) -> int:
    """The streaming pass over unfinished inputs; returns how many inputs it processed.

    Without filter stages, crawl tasks fetch and write (``pipeline.crawl``); with them, a Ray
    Data stream carries images through the filter actors to the sink. Two phases: "stream
    setup" (the job's actors; for Ray Data also the Parquet sampling it does when the reads
    are built: seconds on a busy node whatever the input) and "stream", the execution itself,
    over which the run's images/s is reported.
    """
    import ray

    from pipeline.crawl import crawl
    from pipeline.detect_stage import has_filters
    from pipeline.politeness import job_limits
    from pipeline.progress import ProgressCounter, ProgressDisplay

    filters = has_filters(config.detector, config.classifiers)
    output = Output(
        dataset.uri,
        config.output.max_shard_samples,
        config.output.max_shard_bytes,
        run_id,
        plan.columns,
    )
    with phases("stream setup"):
        fetch, limiters = job_limits(config.fetch)
        progress = ProgressCounter.options(**beside_driver()).remote(next_shard_number(dataset))
        stage = _stage_config(config, fetch, limiters, None if filters else progress)
        if filters:
            ds, sink = _build_stream(dataset, plan, done, config, stage, progress, output)
    todo = max(plan.rows - done.keys, 0)
    try:
        with phases("stream"), ProgressDisplay(progress, todo, config.run.progress_interval):
            if filters:
                # no task retries for writes: a retried write would publish the same samples
                ds.write_datasink(sink, ray_remote_args={"max_retries": 0})
                stats = sink.stats
            else:
                stats = crawl(plan, done, todo, stage, output, config.run.batch_size)
    finally:
        # Ray Data keeps a reference to the sink, so the actor would outlive the job: one
        # idle process (~70 MB) per job run from the same driver
        for actor in (progress, *limiters):
            ray.kill(actor)
    return sum(s.kept + s.rejected for s in stats)


def _stage_config(
    config: JobConfig, fetch: FetchConfig, limiters: tuple, progress: object
) -> StageConfig:
    from pipeline.detect_stage import filter_input_size

    return StageConfig(
        fetch=fetch,
        validate=config.validate,
        det_size=filter_input_size(config.detector, config.classifiers),
        detector_identity=None if config.detector.enabled else json.dumps({"model": "none"}),
        limiters=limiters,
        progress=progress,
    )


def _build_stream(
    dataset: Location,
    plan: Plan,
    done: Finished,
    config: JobConfig,
    stage: StageConfig,
    progress: object,
    output: Output,
):
    """The Ray Data stream through the filter stages, and its sink."""
    import ray

    from pipeline.datasink import ShardDatasink
    from pipeline.detect_stage import add_filter_stages

    # Ray Data reserves half of the CPUs for its operators in equal shares: on a 2-CPU node the
    # fetch operator then got one task at a time and one core idled (seen in `top` and in the
    # progress log: "backpressured: tasks(ResourceBudget)"). Fetch is where the CPU goes;
    # downstream operators still get resources first when their input queues up.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    ds = unfinished_inputs(dataset, plan, done)
    # one block per fetch batch: blocks are the unit of parallelism across workers
    ds = ds.repartition(target_num_rows_per_block=config.run.batch_size)
    ds = ds.map_batches(
        fetch_and_validate,
        fn_kwargs={"config": stage},
        batch_size=config.run.batch_size,
        batch_format="numpy",
    )
    ds = add_filter_stages(ds, config.detector, config.classifiers, progress)
    sink = ShardDatasink(output, progress)
    return ds, sink


def print_summary(summary: dict, output: str) -> None:
    counts = summary["counts"]
    print(f"\nDataset: {output}")
    print(
        f"  inputs {counts['inputs']:,}   kept {counts['kept']:,}   rejected {counts['rejected']:,}"
        f"   shards {summary['shards']}   {summary['bytes'] / 1e6:,.1f} MB"
    )
    print(run_line(summary))
    print(f"  detector: {summary['detector']}")
    for stage, reasons in sorted(counts["by_stage"].items()):
        listed = ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
        print(f"  rejected at {stage}: {listed}")


def run_line(summary: dict) -> str:
    """This run's rate over the streaming pass, which is what grows with the input; Ray start-up,
    planning and dedup are fixed costs that would make a small run look slow."""
    phases = summary.get("phases_s", {})
    fixed = ", ".join(f"{name} {s:.1f} s" for name, s in phases.items() if name != "stream")
    return (
        f"  this run: {summary['processed_this_run']:,} inputs, "
        f"{summary['stream_images_per_s']:.1f} images/s over the {phases.get('stream', 0):.1f} s "
        f"stream (Ray start-up and the other phases not counted: {fixed}); "
        f"{summary['wall_s']:.1f} s in all"
    )


@cli.entry_point(FileNotFoundError, PermissionError, WeightsError, OutputBusy, StreamFailed)
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # lists CPU variants it skips
    args = parser().parse_args(argv)
    if args.demo:
        return run_demo(args)
    config = config_from_args(args)
    summary = run(config)
    print_summary(summary, config.output.output)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """The job over the demo corpus (pipeline.demo prepares its arguments and config)."""
    from pipeline import demo

    with demo.served_corpus() as corpus:
        demo.fill_arguments(args, corpus)
        config = demo.without_missing_detector(config_from_args(args))
        summary = run(config)
    print_summary(summary, config.output.output)
    demo.print_outcomes(config.output.output, corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
