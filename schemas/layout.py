"""Where things live inside a dataset folder (local or S3): one place for every path.

    <dataset>/shards/{shard:06d}.tar          WebDataset shard: {key}.{ext} + {key}.json
    <dataset>/manifests/{shard:06d}.parquet   the shard's rows, same order (SAMPLE_SCHEMA)
    <dataset>/rejections/{name}.parquet       inputs that did not make it (REJECTION_SCHEMA)
    <dataset>/summary.json                    the run's summary (schemas.summary)
    <dataset>/_work/                          the job's bookkeeping (resume state)
    <dataset>/_work/lock.json                 the job writing the dataset now, if any
    <dataset>/_work/embeddings/{fp}/{shard:06d}.parquet   semantic dedup's cached embeddings
    <dataset>/_work/dedup_commit/{shard:06d}/  a dedup rewrite of one shard, staged to publish

A shard exists for readers once its manifest exists: the tar is published first, then the
manifest, so a manifest never names a missing tar. A dedup rewrite replaces a published shard
the other way round (manifest, its dedup rejections, then the tar; curation.dedup.apply): the
manifest is the list of a shard's samples, and its tar may briefly hold more of them.
"""

SHARDS_DIR = "shards"
MANIFESTS_DIR = "manifests"
REJECTIONS_DIR = "rejections"
SUMMARY_FILE = "summary.json"
WORK_DIR = "_work"
EMBEDDINGS_DIR = f"{WORK_DIR}/embeddings"  # one folder per model fingerprint
LOCK_FILE = f"{WORK_DIR}/lock.json"  # the job writing this dataset (pipeline.lock)
DEDUP_COMMIT_DIR = f"{WORK_DIR}/dedup_commit"  # staged shard rewrites (curation.dedup.apply)


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
