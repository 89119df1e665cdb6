"""Where things live inside a dataset folder (local or S3): one place for every path.

    <dataset>/shards/{shard:06d}.tar          WebDataset shard: {key}.{ext} + {key}.json
    <dataset>/manifests/{shard:06d}.parquet   the shard's rows, same order (SAMPLE_SCHEMA)
    <dataset>/rejections/{name}.parquet       inputs that did not make it (REJECTION_SCHEMA)
    <dataset>/rejections/dedup-{shard:06d}.parquet   the dedup pass's rejections of one shard
    <dataset>/dedup_index/*.parquet           signatures of the kept samples (--dedup-against)
    <dataset>/summary.json                    the run's summary (schemas.summary)
    <dataset>/_work/                          the job's bookkeeping (resume state)
    <dataset>/_work/lock.json                 the job writing the dataset now, if any
    <dataset>/_work/tmp/                      files being written, renamed into place when done
    <dataset>/_work/plan-{id}/                the plan: staged rows, partitions, finished keys
    <dataset>/_work/embeddings/{fp}/{shard:06d}.parquet   semantic dedup's cached embeddings
    <dataset>/_work/embeddings/{fp}/model.json   which model and settings made them
    <dataset>/_work/dedup_commit/{shard:06d}/  a dedup rewrite of one shard, staged to publish
    <dataset>/_work/dedup/{pass}/shard={shard}/   the Ray dedup path's plan, one folder a pass

A shard exists for readers once its manifest exists: the tar is published first, then the
manifest, so a manifest never names a missing tar. A dedup rewrite replaces a published shard
the other way round (manifest, its dedup rejections, then the tar; curation.dedup.apply): the
manifest is the list of a shard's samples, and its tar may briefly hold more of them.
"""

import re

SHARDS_DIR = "shards"
MANIFESTS_DIR = "manifests"
REJECTIONS_DIR = "rejections"
SUMMARY_FILE = "summary.json"
WORK_DIR = "_work"
EMBEDDINGS_DIR = f"{WORK_DIR}/embeddings"  # one folder per model fingerprint
STAGING_DIR = f"{WORK_DIR}/tmp"  # a local dataset's files being written (curation.writer)
LOCK_FILE = f"{WORK_DIR}/lock.json"  # the job writing this dataset (pipeline.lock)
DEDUP_COMMIT_DIR = f"{WORK_DIR}/dedup_commit"  # staged shard rewrites (curation.dedup.apply)
DEDUP_PLAN_DIR = f"{WORK_DIR}/dedup"  # the Ray dedup path's plan: cleared at a run's start and end
DEDUP_INDEX_DIR = "dedup_index"  # read by a later release's dedup (--dedup-against)
_DEDUP_REJECTIONS = re.compile(r"dedup-\d{6,}\.parquet")  # {shard:06d}: 7 digits from 10^6


def plan_dir(plan_id: str) -> str:
    """The plan's folder (pipeline.plan writes it, pipeline.resume reads it): one per inputs
    and settings, so a rerun with the same ones finds it done."""
    return f"{WORK_DIR}/plan-{plan_id}"


def shard_file(shard: int) -> str:
    return f"{SHARDS_DIR}/{shard:06d}.tar"


def manifest_file(shard: int) -> str:
    return f"{MANIFESTS_DIR}/{shard:06d}.parquet"


def rejection_file(name: str) -> str:
    return f"{REJECTIONS_DIR}/{name}.parquet"


def shard_of(file_name: str) -> int:
    """Shard number of ``000123.tar`` or ``000123.parquet`` (a base name)."""
    return int(file_name.split(".", 1)[0])


def embedding_file(fingerprint: str, shard: int) -> str:
    return f"{EMBEDDINGS_DIR}/{fingerprint}/{shard:06d}.parquet"


def embedding_dir(fingerprint: str) -> str:
    return f"{EMBEDDINGS_DIR}/{fingerprint}"


def embedding_card(fingerprint: str) -> str:
    return f"{EMBEDDINGS_DIR}/{fingerprint}/model.json"


def dedup_rejection_name(shard: int) -> str:
    """The ``rejection_file`` name of the dedup pass's rejections of shard ``shard``."""
    return f"dedup-{shard:06d}"


def is_dedup_rejection_file(file_name: str) -> bool:
    """Whether a base name under rejections/ is a dedup rejections file (not the crawl's)."""
    return _DEDUP_REJECTIONS.fullmatch(file_name) is not None


def dedup_index_file(name: str) -> str:
    return f"{DEDUP_INDEX_DIR}/{name}.parquet"


def dedup_plan_dir(name: str) -> str:
    """One pass's (or step's) folder of the Ray dedup path's plan."""
    return f"{DEDUP_PLAN_DIR}/{name}"


def plan_partition(shard: int) -> str:
    """A plan folder's part for shard ``shard`` (Hive partitioning, as Ray Data writes it):
    each shard rewrite reads its own."""
    return f"shard={shard}"


def partition_shard(folder_name: str) -> int | None:
    """Shard number of a ``plan_partition`` folder name, None for other names."""
    name, _, value = folder_name.partition("=")
    return int(value) if name == "shard" and value.isdigit() else None
