"""Finding the published shards of a dataset and reading their samples (local or S3).

A shard exists for readers once its manifest exists (schemas.layout): the curation job
publishes the tar first, then the manifest, so listing manifests never names a partial tar;
samples are read from the tar but only those its manifest lists (see ``selected_keys``).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from runtime.storage import Location, list_files, locate
from schemas import layout

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "avif", "heic")


@dataclass(frozen=True)
class ShardSource:
    shard: int  # shard number
    tar: str  # URI of the tar
    manifest: str  # URI of its manifest


def list_shards(dataset: str) -> list[ShardSource]:
    """The dataset's readable shards, in shard order; raises when there are none."""
    root = locate(dataset)
    manifests = list_files(root.join(layout.MANIFESTS_DIR), ".parquet")
    shards = []
    for manifest in manifests:
        name = manifest.path.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue  # a temporary file of an unfinished write
        number = layout.shard_of(name)
        shards.append(ShardSource(number, root.join(layout.shard_file(number)).uri, manifest.uri))
    if not shards:
        raise FileNotFoundError(
            f"no shards under {root.uri}: expected {layout.MANIFESTS_DIR}/*.parquet beside "
            f"{layout.SHARDS_DIR}/*.tar (is this the dataset folder the curation job wrote?)"
        )
    return shards


def selected_keys(manifest_uri: str, where: str | None = None) -> set[str]:
    """Keys of a shard's manifest rows matching a DuckDB SQL predicate over SAMPLE_SCHEMA
    (every row without one).

    The manifest, not the tar, lists a shard's samples: while dedup replaces a shard its new
    manifest is published before its new tar, so the tar may briefly hold dropped samples.
    """
    import duckdb

    loc = locate(manifest_uri)
    if where is None:
        return set(pq.read_table(loc.path, filesystem=loc.fs, columns=["key"])["key"].to_pylist())
    table = pq.read_table(loc.path, filesystem=loc.fs, columns=None)
    con = duckdb.connect()
    try:
        con.register("manifest", table)
        rows = con.execute(f"SELECT key FROM manifest WHERE {where}").fetchall()
    except duckdb.Error as exc:
        raise ValueError(f"manifest predicate {where!r} failed on {manifest_uri}: {exc}") from exc
    finally:
        con.close()
    return {row[0] for row in rows}


def check_predicate(manifest_uri: str, where: str) -> int:
    """Run ``where`` on one manifest at start-up, so that a typo or an unknown column fails
    before any worker starts (ValueError, one line); returns the rows it selects there."""
    import duckdb

    try:
        statements = duckdb.extract_statements(f"SELECT key FROM manifest WHERE {where}")
    except duckdb.Error as exc:
        raise ValueError(f"--where {where!r} is not a SQL predicate: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise ValueError(f"--where {where!r} must be one SQL expression, not several statements")
    try:
        return len(selected_keys(manifest_uri, where))
    except ValueError as exc:
        cause = exc.__cause__ or exc
        raise ValueError(
            f"--where {where!r} does not run on the manifest {manifest_uri}: {_first_line(cause)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _open(loc: Location):
    return loc.fs.open_input_stream(loc.path)


def iter_samples(tar_uri: str, errors: dict[str, int]) -> Iterator[tuple[str, bytes]]:
    """(key, image bytes) of each sample of a tar, in order.

    A truncated or unreadable tar ends its shard early; members without an image are
    skipped. Both are counted in ``errors`` and never raised.
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    loc = locate(tar_uri)
    try:
        with _open(loc) as stream:
            members = ({**m, "__url__": tar_uri} for m in tar_file_iterator(stream))
            for sample in group_by_keys(members):
                image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
                if image is None:
                    errors["no_image"] = errors.get("no_image", 0) + 1
                    continue
                yield sample["__key__"], image
    except (tarfile.TarError, OSError, ValueError, pa.ArrowException) as exc:
        errors["bad_shard"] = errors.get("bad_shard", 0) + 1
        log.warning("shard %s unreadable past this point, skipping the rest: %s", tar_uri, exc)
