"""Writing and reading shards: a WebDataset tar plus its Parquet manifest, published atomically.

A shard is written to a local temporary file with the webdataset library's TarWriter, then
published (renamed locally, uploaded on S3) before its manifest; the manifest's appearance is
what makes the shard exist (see schemas.layout).
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from runtime.storage import Location, publish_file_atomic, write_bytes_atomic
from schemas import REJECTION_SCHEMA, SAMPLE_SCHEMA, member_names, row_to_json, rows_to_table
from schemas.layout import STAGING_DIR, manifest_file, rejection_file, shard_file

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


_IMPORT_LOCK = threading.Lock()


def webdataset():
    """The webdataset module, imported without torch unless torch is loaded already.

    webdataset imports torch only for its DataLoader and IterableDataset stand-ins and, by
    design, falls back to empty classes of its own when torch is missing; writing and reading
    tars never touches them. Importing torch cost every crawler worker that writes shards
    about 280 MB of memory and 4 s here, for nothing. (A process that imports webdataset
    this way and later wants ``wds.WebLoader`` with torch would get the stand-ins: nothing
    in the curation workers does.)
    """
    with _IMPORT_LOCK:
        if "webdataset" not in sys.modules and "torch" not in sys.modules:
            sys.modules["torch"] = None  # type: ignore[assignment]  # import -> ModuleNotFoundError
            try:
                import webdataset
            finally:
                del sys.modules["torch"]
    import webdataset

    return webdataset


NON_IMAGE_MEMBERS = ("json", "txt")  # the other members a sample of ours holds


def sample_image(sample: dict[str, Any]) -> bytes:
    """The image bytes of a sample read with ``iter_shard`` (whatever the image's extension)."""
    (ext,) = [k for k in sample if not k.startswith("__") and k not in NON_IMAGE_MEMBERS]
    return sample[ext]


def image_extension(image_format: str) -> str:
    return FORMAT_EXTENSIONS.get(image_format.upper(), image_format.lower())


def table_to_parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    return sink.getvalue()


def _staging_dir(dataset: Location) -> str:
    """Local folder for files being written: beside the dataset when local (rename is atomic)."""
    if dataset.is_s3:
        return tempfile.gettempdir()
    path = os.path.join(dataset.path, STAGING_DIR)
    os.makedirs(path, exist_ok=True)
    return path


class ShardBuilder:
    """Streams samples into shard ``shard`` of ``dataset``; ``publish()`` makes it exist.

    Samples go straight into a local temporary tar, so memory holds only the manifest rows.
    Until ``publish()`` nothing is visible; ``discard()`` (or an exception inside a ``with``
    block) removes the temporary file. ``schema``: the dataset's (``schemas.sample_schema``:
    with its kept input columns, if any).
    """

    def __init__(self, dataset: Location, shard: int, schema: pa.Schema = SAMPLE_SCHEMA) -> None:
        self.dataset, self.shard, self.schema = dataset, shard, schema
        self.rows: list[dict[str, Any]] = []
        self.num_bytes = 0
        fd, self._tmp_path = tempfile.mkstemp(suffix=".tar", dir=_staging_dir(dataset))
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; shards are read by other users and services
        self._stream = os.fdopen(fd, "wb")
        # The members webdataset's TarWriter writes (``{key}.{ext}`` in sorted order, mode
        # 0444, owner "bigdata"), through tarfile's file mode: TarWriter opens a stream
        # ("w|") that re-buffers every 16 kB in 10 kB records, 2.5x the CPU of one write per
        # member here. A whole-second mtime: a float one adds a PAX header to every member.
        self._tar = tarfile.TarFile(fileobj=self._stream, mode="w", copybufsize=1 << 22)
        self._mtime = int(time.time())

    def add(self, row: dict[str, Any], image: bytes) -> None:
        """Append one sample; fills ``shard``, ``image_member`` and ``json_member`` in ``row``."""
        ext = image_extension(row["format"])
        image_member, json_member = member_names(row["key"], ext)
        row = {**row, "shard": self.shard, "image_member": image_member, "json_member": json_member}
        # every schema column in the JSON, so it equals the manifest row; rows are validated
        # together in publish(), and a bad one discards the whole unpublished shard
        full_row = {name: row.get(name) for name in self.schema.names}
        members = {image_member: image, json_member: row_to_json(full_row)}
        if row.get("caption"):
            # {key}.txt: where CLIP-style readers (open_clip, img2dataset's layout) look
            members[f"{row['key']}.txt"] = row["caption"].encode("utf-8")
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), self._mtime, 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(data))
        self.rows.append(full_row)
        self.num_bytes += len(image)

    def __len__(self) -> int:
        return len(self.rows)

    def publish(self, tar: Location | None = None, manifest: Location | None = None) -> pa.Table:
        """Publish the tar, then the manifest (the shard exists once the manifest does).

        ``tar`` and ``manifest`` default to the shard's places in the dataset; a caller that
        publishes several files as one change (the dedup rewrite) stages them elsewhere.
        """
        self._tar.close()
        self._stream.close()  # tarfile leaves a file object it was given open, and unflushed
        table = rows_to_table(self.rows, self.schema, where=f"shard {self.shard}")
        publish_file_atomic(self._tmp_path, tar or self.dataset.join(shard_file(self.shard)))
        write_bytes_atomic(
            manifest or self.dataset.join(manifest_file(self.shard)),
            table_to_parquet_bytes(table),
        )
        return table

    def discard(self) -> None:
        if not self._stream.closed:
            self._stream.close()
        if os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)

    def __enter__(self) -> ShardBuilder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


def write_shard(
    dataset: Location,
    shard: int,
    rows: Sequence[dict[str, Any]],
    images: Sequence[bytes],
    *,
    tar: Location | None = None,
    manifest: Location | None = None,
    schema: pa.Schema = SAMPLE_SCHEMA,
) -> pa.Table:
    """Write shard ``shard`` of ``dataset`` from manifest rows and their original image bytes.

    Fills ``shard``, ``image_member`` and ``json_member`` in each row, writes the tar (image,
    JSON row and, when the row has a caption, a ``.txt`` member per sample, in the given order),
    publishes it, then publishes the manifest (at ``tar`` and ``manifest`` when given, see
    ``ShardBuilder.publish``). Overwrites an existing shard of that number. Returns the
    manifest table. ``schema``: the dataset's (see ``ShardBuilder``).
    """
    if len(rows) != len(images):
        raise ValueError(f"{len(rows)} rows but {len(images)} images")
    rows_to_table(
        [dict(r, shard=shard, image_member="", json_member="") for r in rows],
        schema,
        where=f"shard {shard}",
    )  # refuse bad rows before writing
    with ShardBuilder(dataset, shard, schema) as builder:
        for row, image in zip(rows, images, strict=True):
            builder.add(row, image)
        return builder.publish(tar, manifest)


def write_rejections(
    dataset: Location, name: str, rows: Sequence[dict[str, Any]], *, to: Location | None = None
) -> pa.Table:
    """Publish one rejections file (REJECTION_SCHEMA rows) atomically (at ``to`` when given)."""
    table = rows_to_table(list(rows), REJECTION_SCHEMA, where=f"rejections {name}")
    write_bytes_atomic(to or dataset.join(rejection_file(name)), table_to_parquet_bytes(table))
    return table


def iter_shard(tar: Location) -> Iterator[dict[str, Any]]:
    """Samples of one tar as webdataset dicts: ``__key__``, the image extension, ``json`` and
    ``txt`` when the sample has a caption."""
    webdataset()
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with tar.fs.open_input_stream(tar.path) as stream:
        yield from group_by_keys(tar_file_expander([{"url": tar.uri, "stream": stream}]))
