"""What a rerun finds: finished samples, leftovers of a killed run, the next shard number.

A sample is finished once its key is in a published manifest or in a rejections file (other
than the plan's ``duplicate_input`` rows, whose key belongs to the first listing). Everything
else a killed run left behind (a tar whose manifest never appeared, temporary files) is removed,
and its samples are processed again; a dedup rewrite it had decided is published first.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from curation.dedup.apply import finish_commits
from curation.storage import Location, delete, list_files
from schemas import Reason
from schemas.layout import MANIFESTS_DIR, REJECTIONS_DIR, SHARDS_DIR, WORK_DIR, shard_of


def remove_leftovers(dataset: Location) -> list[str]:
    """Finish the dedup rewrites a killed run had decided (before anything reads the shards),
    delete unpublished shards and temporary files; returns what was removed."""
    finish_commits(dataset)
    removed = []
    manifests = {
        shard_of(f.path.rsplit("/", 1)[-1])
        for f in list_files(dataset.join(MANIFESTS_DIR), ".parquet")
    }
    for tar in list_files(dataset.join(SHARDS_DIR), ".tar"):
        if shard_of(tar.path.rsplit("/", 1)[-1]) not in manifests:
            delete(tar)
            removed.append(tar.uri)
    if not dataset.is_s3:
        for folder in (SHARDS_DIR, MANIFESTS_DIR, REJECTIONS_DIR, f"{WORK_DIR}/tmp"):
            for leftover in _hidden_or_temporary(dataset.join(folder)):
                delete(leftover)
                removed.append(leftover.uri)
    return removed


def _hidden_or_temporary(folder: Location) -> list[Location]:
    try:
        infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
    except FileNotFoundError:
        return []
    return [
        folder.join(info.base_name)
        for info in infos
        if info.type == pafs.FileType.File
        and (info.base_name.startswith(".") or folder.path.endswith("tmp"))
    ]


def next_shard_number(dataset: Location) -> int:
    shards = [
        shard_of(f.path.rsplit("/", 1)[-1])
        for f in list_files(dataset.join(MANIFESTS_DIR), ".parquet")
    ]
    return max(shards, default=-1) + 1


def finished_keys(dataset: Location) -> pa.Array:
    """Keys of every sample already kept or rejected (unique, as a string array)."""
    keys = [_column(dataset.join(MANIFESTS_DIR), None)]
    keys.append(
        _column(dataset.join(REJECTIONS_DIR), pc.field("reason") != str(Reason.DUPLICATE_INPUT))
    )
    merged = pa.chunked_array([k for k in keys if len(k)], pa.string()).combine_chunks()
    return pc.unique(pc.drop_null(merged))


def _column(folder: Location, where) -> pa.Array:
    files = list_files(folder, ".parquet")
    if not files:
        return pa.array([], pa.string())
    ds = pads.dataset([f.path for f in files], filesystem=folder.fs, format="parquet")
    return ds.to_table(columns=["key"], filter=where)["key"].combine_chunks()
