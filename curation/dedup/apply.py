"""The "filter" step: apply dedup decisions to one shard, crash-safely and idempotently.

Order per shard: publish the shard's dedup rejections file first (the union of what it already
held and the new decisions), then rewrite the shard without the dropped samples. A crash
between the two leaves the samples in the shard and their rejection rows on disk; a rerun
recomputes the same decisions, rewrites the same rejections and finishes the shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.parquet as pq

from curation.storage import Location, exists, list_files
from curation.writer import iter_shard, sample_image, write_rejections, write_shard
from schemas import Stage
from schemas.layout import manifest_file, rejection_file, shard_file


def dedup_rejections_name(shard: int) -> str:
    return f"dedup-{shard:06d}"


@dataclass(frozen=True, kw_only=True)
class Drop:
    key: str
    source_uri: str
    reason: str  # schemas.Reason value
    duplicate_of: str  # the kept canonical (or the earlier release's key)
    detail: str


def _merge_rejections(dataset: Location, shard: int, drops: list[Drop]) -> None:
    name = dedup_rejections_name(shard)
    rows: dict[str, dict] = {}
    target = dataset.join(rejection_file(name))
    if exists(target):
        for row in pq.read_table(target.path, filesystem=dataset.fs).to_pylist():
            rows[row["key"]] = row
    now = datetime.now(UTC)
    fresh = [d for d in drops if d.key not in rows]  # keep earlier rows as written: idempotent
    for drop in fresh:
        rows[drop.key] = dict(
            key=drop.key,
            source_uri=drop.source_uri,
            stage=str(Stage.DEDUP),
            reason=drop.reason,
            detail=drop.detail,
            duplicate_of=drop.duplicate_of,
            rejected_at=now,
        )
    if fresh or not exists(target):
        write_rejections(dataset, name, [rows[k] for k in sorted(rows)])


def apply_shard(
    dataset: Location,
    shard: int,
    drops: list[Drop],
    clusters: dict[str, tuple[str, int]],
    *,
    rejections_only: bool = False,
) -> bool:
    """Drop ``drops`` from shard ``shard`` and set dup_cluster / dup_cluster_size of the kept
    samples named in ``clusters`` (key -> (canonical, size)). Returns whether it rewrote.

    ``rejections_only`` stops after the rejections file: what a crash there leaves behind.
    """
    if drops:
        _merge_rejections(dataset, shard, drops)
    if rejections_only:
        return False
    rows = pq.read_table(dataset.join(manifest_file(shard)).path, filesystem=dataset.fs)
    rows = rows.to_pylist()
    dropped = {d.key for d in drops}
    kept = [row for row in rows if row["key"] not in dropped]
    changed = len(kept) != len(rows)
    for row in kept:
        want = clusters.get(row["key"], (None, None))
        if (row["dup_cluster"], row["dup_cluster_size"]) != want and row["key"] in clusters:
            row["dup_cluster"], row["dup_cluster_size"] = want
            changed = True
    if not changed:
        return False
    images = _images_by_key(dataset.join(shard_file(shard)), {row["key"] for row in kept})
    write_shard(dataset, shard, kept, [images[row["key"]] for row in kept])
    return True


def apply_planned_shard(
    dataset: Location,
    shard: int,
    drops_dirs: list[Location],
    clusters_dir: Location,
    *,
    rejections_only: bool = False,
) -> bool:
    """``apply_shard`` with the shard's decisions read from the plan's Parquet folders,
    partitioned by shard (``<dir>/shard=N/``): a task reads its own shard's rows only."""
    drops = [
        Drop(**{k: row[k] for k in Drop.__dataclass_fields__})
        for folder in drops_dirs
        for row in _partition_rows(folder, shard)
    ]
    clusters = {
        row["key"]: (row["key"], row["size"]) for row in _partition_rows(clusters_dir, shard)
    }
    return apply_shard(dataset, shard, drops, clusters, rejections_only=rejections_only)


def _partition_rows(folder: Location, shard: int) -> list[dict]:
    rows: list[dict] = []
    for file in list_files(folder.join(f"shard={shard}"), ".parquet"):
        with file.fs.open_input_file(file.path) as handle:  # the file alone: no hive columns
            rows.extend(pq.ParquetFile(handle).read().to_pylist())
    return rows


def _images_by_key(tar: Location, keys: set[str]) -> dict[str, bytes]:
    images = {}
    for sample in iter_shard(tar):
        if sample["__key__"] in keys:
            images[sample["__key__"]] = sample_image(sample)
    return images
