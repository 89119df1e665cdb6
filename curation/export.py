"""Export a dataset to img2dataset's output layout, for tools built for it.

    python -m curation.export --dataset ./out --output ./out-img2dataset
    humans300m export --dataset s3://bucket/humans/v1 --output s3://bucket/humans/v1-i2d

Beside each other, per shard, as img2dataset writes them::

    00000.tar            {key}.{jpg|png|webp...} (original bytes), {key}.txt (caption, when
                         there is one), {key}.json (the row below)
    00000.parquet        one row per sample: url, caption, key, status, error_message, width,
                         height, original_width, original_height, exif, sha256, then this
                         project's columns (humans300m_key, license, attribution, page_url,
                         format, num_persons, persons), then the kept input columns
                         (--keep-columns), typed; one whose name img2dataset's layout
                         already uses is written as input_<name> (LAION's original_width)
    00000_stats.json     count, successes, failed_to_download, failed_to_resize, status_dict...

Keys follow img2dataset's form, the shard number then the sample's index in it
(``000000012``); ``humans300m_key`` keeps this dataset's key. Images are not re-encoded: a
PNG stays a ``.png`` member. Only kept samples are exported: the rejections stay in the
dataset (img2dataset's parquet also lists failed downloads; here there are none to list).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.manifest import DatasetError, check_dataset, manifest_files, samples_schema
from curation.writer import iter_shard, sample_image, table_to_parquet_bytes, webdataset
from runtime import config as cli
from runtime.storage import Location, list_files, locate, publish_file_atomic, write_bytes_atomic
from schemas import SAMPLE_SCHEMA, SchemaError, kept_columns
from schemas.layout import shard_file, shard_of

OWN_COLUMNS = ("license", "attribution", "page_url", "format", "num_persons", "persons")
# img2dataset's columns, then this project's: typed, so a shard whose values are all null
# still has the same schema as the others
EXPORT_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("url", "caption", "key", "status", "error_message")]
    + [(name, pa.int32()) for name in ("width", "height", "original_width", "original_height")]
    + [("exif", pa.string()), ("sha256", pa.string()), ("humans300m_key", pa.string())]
    + [SAMPLE_SCHEMA.field(name) for name in OWN_COLUMNS]
)


def export_img2dataset(dataset_uri: str, output_uri: str) -> dict[str, int]:
    """Write the img2dataset layout of ``dataset_uri`` into ``output_uri``; returns counts."""
    dataset = check_dataset(dataset_uri)
    output = locate(output_uri)
    if output.uri == dataset.uri:
        raise ValueError("the output must differ from the dataset")
    if list_files(output, ".tar") or list_files(output, ".parquet"):
        raise ValueError(
            f"{output.uri} already holds tars or parquet files; choose an empty folder"
        )
    manifests = manifest_files(dataset.uri)
    sizes = [pq.ParquetFile(m.path, filesystem=m.fs).metadata.num_rows for m in manifests]
    digits = max(4, len(str(max(sizes, default=1) - 1)))  # img2dataset: samples per shard, >= 4
    kept = kept_columns(samples_schema(manifests))
    names = {f.name: f"input_{f.name}" if f.name in EXPORT_SCHEMA.names else f.name for f in kept}
    schema = pa.schema([*EXPORT_SCHEMA, *(f.with_name(names[f.name]) for f in kept)])
    samples = 0
    for index, manifest in enumerate(manifests):
        samples += _export_shard(dataset, manifest, output, index, digits, (schema, names))
    return {"shards": len(manifests), "samples": samples}


def _export_shard(
    dataset: Location,
    manifest: Location,
    output: Location,
    index: int,
    digits: int,
    kept: tuple[pa.Schema, dict[str, str]],
) -> int:
    """One shard; ``kept``: the export's schema and the kept columns' names in it."""
    schema, names = kept
    started = time.time()
    rows = pq.read_table(manifest.path, filesystem=manifest.fs).to_pylist()
    shard = shard_of(manifest.path.rsplit("/", 1)[-1])
    by_key = {row["key"]: (i, row) for i, row in enumerate(rows)}
    local = tempfile.gettempdir() if output.is_s3 else output.path
    os.makedirs(local, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=".tar", dir=local)
    records: list[dict[str, Any]] = [{}] * len(rows)
    try:
        with os.fdopen(fd, "wb") as stream:
            tar = webdataset().TarWriter(stream, encoder=False)
            for sample in iter_shard(dataset.join(shard_file(shard))):
                position, row = by_key[sample["__key__"]]
                record = _record(row, f"{index:05d}{position:0{digits}d}", names)
                records[position] = record
                ext = row["image_member"].rsplit(".", 1)[1]
                members = {"__key__": record["key"], ext: sample_image(sample),
                           "json": json.dumps(record).encode()}  # fmt: skip
                if record["caption"] is not None:
                    members["txt"] = record["caption"].encode("utf-8")
                tar.write(members)
            tar.close()
        if any(not r for r in records):
            raise DatasetError(f"{manifest.uri}: rows missing from the shard's tar")
        publish_file_atomic(tmp, output.join(f"{index:05d}.tar"))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    write_bytes_atomic(output.join(f"{index:05d}.parquet"),
                       table_to_parquet_bytes(pa.Table.from_pylist(records, schema)))  # fmt: skip
    stats = {"count": len(rows), "successes": len(rows), "failed_to_download": 0,
             "failed_to_resize": 0, "duration": round(time.time() - started, 3),
             "start_time": started, "end_time": time.time(),
             "status_dict": {"success": len(rows)} if rows else {}}  # fmt: skip
    write_bytes_atomic(output.join(f"{index:05d}_stats.json"), json.dumps(stats).encode())
    return len(rows)


def _record(row: dict[str, Any], key: str, kept: dict[str, str]) -> dict[str, Any]:
    """One sample's img2dataset row (also its ``.json`` member)."""
    record = {
        "url": row["source_uri"], "caption": row["caption"], "key": key, "status": "success",
        "error_message": None, "width": row["width"], "height": row["height"],
        "original_width": row["width"], "original_height": row["height"], "exif": None,
        "sha256": row["sha256"], "humans300m_key": row["key"],
    }  # fmt: skip
    record.update({name: row[name] for name in OWN_COLUMNS})
    record.update({name: row[column] for column, name in kept.items()})
    return record


@dataclass(kw_only=True)
class ExportConfig:
    dataset: str = field(metadata={"help": "dataset folder or s3://bucket/prefix"})
    output: str = field(metadata={"help": "an empty folder or s3:// prefix"})


@cli.entry_point(DatasetError, SchemaError, OSError)
def main(argv: list[str] | None = None) -> int:
    parser = cli.command(
        ExportConfig,
        prog="python -m curation.export",
        description="Export a dataset to img2dataset's layout: {shard:05d}.tar, .parquet and "
        "_stats.json side by side, with url and caption columns.",
    )
    config = cli.parse(ExportConfig, parser, argv)
    counts = export_img2dataset(config.dataset, config.output)
    print(f"exported {counts['samples']:,} samples in {counts['shards']} shards to "
          f"{config.output}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
