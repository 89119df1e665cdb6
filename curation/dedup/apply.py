"""The "filter" step: apply dedup decisions to one shard, crash-safely and idempotently.

A shard's rewrite changes three files: its manifest, its tar and its dedup rejections file.
Readers must see the old shard or the new one, never a mix (a manifest naming a sample its
tar lost, a key both kept and rejected), even after a crash. So the rewrite is a commit:

1. stage: the new tar, manifest and rejections file are written under
   ``_work/dedup_commit/<shard>/``, where no reader looks; a crash here changes nothing.
2. mark: ``ready.json`` is written there (atomically): from now on the rewrite is decided.
3. publish: each staged file is moved over its published name, manifest first (the old tar
   still holds every sample the new manifest names, and readers follow the manifest), the
   rejections right after it (a dropped key leaves the manifests and enters the rejections
   within two renames), the tar last; then the commit folder is removed.

``finish_commits`` completes the publish step of every marked commit a crash left behind
(and deletes unmarked ones): the job and ``run_dedup`` call it before they read the dataset,
so a rerun never plans from a half-published shard. Renames are idempotent: a staged file
that is gone was published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.writer import iter_shard, sample_image, write_rejections, write_shard
from runtime.storage import Location, exists, list_files, write_bytes_atomic
from schemas import Stage, kept_columns, sample_schema
from schemas.layout import (
    DEDUP_COMMIT_DIR,
    REJECTIONS_DIR,
    dedup_rejection_name,
    is_dedup_rejection_file,
    manifest_file,
    plan_partition,
    rejection_file,
    shard_file,
)

READY = "ready.json"
_STAGED = ("manifest.parquet", "rejections.parquet", "shard.tar")  # in publish order
# Where ``stop_after`` can stop a rewrite, as a crash there would (tests): after staging,
# after the ready mark, or after publishing one of the staged files.
STEPS = ("stage", "ready", *_STAGED)


@dataclass(frozen=True, kw_only=True)
class Drop:
    key: str
    source_uri: str
    reason: str  # schemas.Reason value
    duplicate_of: str  # the kept canonical (or the earlier release's key)
    detail: str


def dedup_rejection_files(dataset: Location) -> list[Location]:
    """The dedup rejections files (one per shard) that earlier runs published."""
    files = list_files(dataset.join(REJECTIONS_DIR), ".parquet")
    return [f for f in files if is_dedup_rejection_file(f.uri.rsplit("/", 1)[1])]


def _targets(shard: int) -> dict[str, str]:
    return {
        "manifest.parquet": manifest_file(shard),
        "rejections.parquet": rejection_file(dedup_rejection_name(shard)),
        "shard.tar": shard_file(shard),
    }


def _merged_rejections(dataset: Location, shard: int, drops: list[Drop]) -> list[dict] | None:
    """The shard's dedup rejection rows with ``drops`` added; None when nothing is new."""
    rows: dict[str, dict] = {}
    target = dataset.join(rejection_file(dedup_rejection_name(shard)))
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
    if not fresh and exists(target):
        return None
    return [rows[k] for k in sorted(rows)]


def apply_shard(
    dataset: Location,
    shard: int,
    drops: list[Drop],
    clusters: dict[str, tuple[str, int]],
    *,
    stop_after: str | None = None,
) -> bool:
    """Drop ``drops`` from shard ``shard`` and set dup_cluster / dup_cluster_size of the kept
    samples named in ``clusters`` (key -> (canonical, size)). Returns whether it rewrote.

    ``stop_after`` (one of STEPS) stops there: what a crash at that point leaves behind.
    """
    commit = dataset.join(DEDUP_COMMIT_DIR, f"{shard:06d}")
    _finish(dataset, commit, shard)  # a crashed run's rewrite of this shard: its outcome first
    table = pq.read_table(dataset.join(manifest_file(shard)).path, filesystem=dataset.fs)
    rows = table.to_pylist()
    dropped = {d.key for d in drops}
    kept = [row for row in rows if row["key"] not in dropped]
    changed = len(kept) != len(rows)
    for row in kept:
        want = clusters.get(row["key"], (None, None))
        if (row["dup_cluster"], row["dup_cluster_size"]) != want and row["key"] in clusters:
            row["dup_cluster"], row["dup_cluster_size"] = want
            changed = True
    rejections = _merged_rejections(dataset, shard, drops) if drops else None
    if not changed and rejections is None:
        return False
    if rejections is not None:
        name = dedup_rejection_name(shard)
        write_rejections(dataset, name, rejections, to=commit.join("rejections.parquet"))
    if changed:
        images = _images_by_key(dataset.join(shard_file(shard)), {row["key"] for row in kept})
        write_shard(
            dataset,
            shard,
            kept,
            [images[row["key"]] for row in kept],
            tar=commit.join("shard.tar"),
            manifest=commit.join("manifest.parquet"),
            schema=sample_schema(kept_columns(table.schema)),  # the kept input columns stay
        )
    if stop_after == "stage":
        return changed
    write_bytes_atomic(commit.join(READY), json.dumps({"shard": shard}).encode())
    if stop_after != "ready":
        _publish(dataset, commit, shard, stop_after)
    return changed


def finish_commits(dataset: Location) -> list[int]:
    """Publish the rewrites a crash left marked ready, delete unmarked ones; returns the
    shards published."""
    folder = dataset.join(DEDUP_COMMIT_DIR)
    try:
        infos = dataset.fs.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
    except FileNotFoundError:
        return []
    finished = []
    for info in sorted(infos, key=lambda i: i.base_name):
        if info.type == pafs.FileType.Directory and info.base_name.isdigit():
            shard = int(info.base_name)
            if _finish(dataset, folder.join(info.base_name), shard):
                finished.append(shard)
    return finished


def _finish(dataset: Location, commit: Location, shard: int) -> bool:
    """Publish ``commit`` if it was marked ready (returns True), else delete what it staged."""
    if exists(commit.join(READY)):
        _publish(dataset, commit, shard)
        return True
    _remove(commit)
    return False


def _publish(
    dataset: Location, commit: Location, shard: int, stop_after: str | None = None
) -> None:
    targets = _targets(shard)
    for name in _STAGED:
        staged = commit.join(name)
        if exists(staged):
            _move(staged, dataset.join(targets[name]))
        if name == stop_after:
            return
    _remove(commit)


def _move(source: Location, target: Location) -> None:
    """Replace ``target`` by ``source``: one rename locally; on S3 a copy (visible whole, once
    complete) then the delete of the staged object."""
    if target.is_s3:
        target.fs.copy_file(source.path, target.path)
        target.fs.delete_file(source.path)
    else:
        target.fs.create_dir(target.path.rsplit("/", 1)[0], recursive=True)
        target.fs.move(source.path, target.path)


def _remove(folder: Location) -> None:
    if exists(folder):
        folder.fs.delete_dir(folder.path)


def apply_shard_rows(
    dataset: Location,
    shard: int,
    drops: list[dict],
    clusters: list[dict],
    *,
    stop_after: str | None = None,
) -> bool:
    """``apply_shard`` with the shard's decisions as rows, as both dedup paths plan them:
    drop rows (curation.dedup.drops.DROP_SCHEMA) and cluster rows (key, shard, size) of its
    kept canonicals."""
    fields = Drop.__dataclass_fields__
    chosen = [Drop(**{k: row[k] for k in fields}) for row in drops]
    sizes = {row["key"]: (row["key"], row["size"]) for row in clusters}
    return apply_shard(dataset, shard, chosen, sizes, stop_after=stop_after)


def apply_planned_shard(
    dataset: Location,
    shard: int,
    drops_dirs: list[Location],
    clusters_dir: Location,
    *,
    stop_after: str | None = None,
) -> bool:
    """``apply_shard_rows`` with the shard's rows read from the plan's Parquet folders,
    partitioned by shard (``schemas.layout.plan_partition``): a task reads its own rows only."""
    drops = [row for folder in drops_dirs for row in _partition_rows(folder, shard)]
    clusters = _partition_rows(clusters_dir, shard)
    return apply_shard_rows(dataset, shard, drops, clusters, stop_after=stop_after)


def _partition_rows(folder: Location, shard: int) -> list[dict]:
    rows: list[dict] = []
    for file in list_files(folder.join(plan_partition(shard)), ".parquet"):
        with file.fs.open_input_file(file.path) as handle:  # the file alone: no hive columns
            rows.extend(pq.ParquetFile(handle).read().to_pylist())
    return rows


def _images_by_key(tar: Location, keys: set[str]) -> dict[str, bytes]:
    images = {}
    for sample in iter_shard(tar):
        if sample["__key__"] in keys:
            images[sample["__key__"]] = sample_image(sample)
    return images
