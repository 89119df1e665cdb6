"""Writing and reading shards: a WebDataset tar plus its Parquet manifest, published atomically.

A shard is written to a local temporary file with the webdataset library's TarWriter, then
published (renamed locally, uploaded on S3) before its manifest; the manifest's appearance is
what makes the shard exist (see schemas.layout).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.storage import Location, publish_file_atomic, write_bytes_atomic
from schemas import REJECTION_SCHEMA, SAMPLE_SCHEMA, member_names, row_to_json, rows_to_table
from schemas.layout import WORK_DIR, manifest_file, rejection_file, shard_file

# Pillow format name -> tar member extension (webdataset decoders key on these)
FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "MPO": "jpg",  # multi-picture JPEG from phones: the first picture is a plain JPEG
}


def image_extension(image_format: str) -> str:
    return FORMAT_EXTENSIONS.get(image_format.upper(), image_format.lower())


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _staging_dir(dataset: Location) -> str:
    """Local folder for files being written: beside the dataset when local (rename is atomic)."""
    if dataset.is_s3:
        return tempfile.gettempdir()
    path = os.path.join(dataset.path, WORK_DIR, "tmp")
    os.makedirs(path, exist_ok=True)
    return path


def write_shard(
    dataset: Location, shard: int, rows: Sequence[dict[str, Any]], images: Sequence[bytes]
) -> pa.Table:
    """Write shard ``shard`` of ``dataset`` from manifest rows and their original image bytes.

    Fills ``shard``, ``image_member`` and ``json_member`` in each row, writes the tar (image +
    JSON row per sample, in the given order), publishes it, then publishes the manifest.
    Overwrites an existing shard of that number. Returns the manifest table.
    """
    import webdataset as wds

    if len(rows) != len(images):
        raise ValueError(f"{len(rows)} rows but {len(images)} images")
    rows = [dict(row) for row in rows]
    for row in rows:
        image_member, json_member = member_names(row["key"], image_extension(row["format"]))
        row.update(shard=shard, image_member=image_member, json_member=json_member)
    table = rows_to_table(rows, SAMPLE_SCHEMA, where=f"shard {shard}")
    fd, tmp_path = tempfile.mkstemp(suffix=".tar", dir=_staging_dir(dataset))
    try:
        with os.fdopen(fd, "wb") as stream:
            writer = wds.TarWriter(stream, encoder=False)
            for row, image in zip(table.to_pylist(), images, strict=True):
                ext = row["image_member"].rsplit(".", 1)[1]
                writer.write({"__key__": row["key"], ext: image, "json": row_to_json(row)})
            writer.close()
        publish_file_atomic(tmp_path, dataset.join(shard_file(shard)))
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    write_bytes_atomic(dataset.join(manifest_file(shard)), table_to_parquet_bytes(table))
    return table


def write_rejections(dataset: Location, name: str, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Publish one rejections file (REJECTION_SCHEMA rows) atomically."""
    table = rows_to_table(list(rows), REJECTION_SCHEMA, where=f"rejections {name}")
    write_bytes_atomic(dataset.join(rejection_file(name)), table_to_parquet_bytes(table))
    return table


def iter_shard(tar: Location) -> Iterator[dict[str, Any]]:
    """Samples of one tar as webdataset dicts: ``__key__``, the image extension, ``json``."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with tar.fs.open_input_stream(tar.path) as stream:
        yield from group_by_keys(tar_file_expander([{"url": tar.uri, "stream": stream}]))
