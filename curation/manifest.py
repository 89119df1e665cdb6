"""Reading a dataset's manifests from Python: pyarrow, pandas and dask, local or on S3.

A dataset is a folder or an ``s3://`` prefix laid out as in ``schemas.layout``. S3 needs no
extra setup beyond the usual AWS credentials (environment, profile, instance role) and, for
S3-compatible servers, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.

Examples (notebook)::

    from curation import manifest
    import pyarrow.compute as pc

    # pandas: only the columns you need, rows filtered while reading (push-down)
    df = manifest.samples_frame("s3://bucket/humans-v1",
                                columns=["key", "num_persons", "license"],
                                filter=pc.field("num_persons") >= 4)
    # the same filter written as pandas/pyarrow "filters" tuples
    df = manifest.samples_frame("data/humans-v1", filter=[("license", "==", "cc0-1.0")])

    # one row per detected person box (key, person, x0..y1, score, passes, ...)
    boxes = manifest.persons_frame("data/humans-v1")

    # larger than memory: a lazy dask DataFrame, one partition per manifest file
    ddf = manifest.samples_dask("s3://bucket/humans-v1", columns=["license", "num_persons"])
    ddf.groupby("license").num_persons.mean().compute()

    # the pyarrow Dataset itself, for scanners and batch iteration
    ds = manifest.samples_dataset("data/humans-v1")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from runtime.storage import Location, exists, list_files, locate, read_bytes
from schemas import REJECTION_SCHEMA, check_version, kept_columns, sample_schema
from schemas.layout import MANIFESTS_DIR, REJECTIONS_DIR, SUMMARY_FILE

if TYPE_CHECKING:  # pyarrow.dataset pulls in pandas: imported where used, CLIs start faster
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow.dataset as pads

# A filter: a pyarrow expression, or pandas-style tuples [("col", "op", value), ...]
# (a list of tuples is AND; a list of lists of tuples is OR of ANDs).
Filter = pc.Expression | Sequence[Any] | None

# Columns of the persons view/table: one row per person box of a sample.
PERSON_COLUMNS = (
    "key", "shard", "person", "x0", "y0", "x1", "y1", "score", "passes",
    "crop_x0", "crop_y0", "crop_x1", "crop_y1", "box_width", "box_height",
    "image_width", "image_height",
)  # fmt: skip


class DatasetError(ValueError):
    """The path does not hold a dataset (no manifests, no rejections, no summary)."""


def manifest_files(dataset_uri: str, folder: str = MANIFESTS_DIR) -> list[Location]:
    """Parquet files of ``folder`` (MANIFESTS_DIR or REJECTIONS_DIR), version-checked.

    One footer is enough to refuse a dataset written under another schema version.
    """
    files = list_files(locate(dataset_uri).join(folder), ".parquet")
    for file in files[:1]:
        try:
            schema = pq.read_schema(file.path, filesystem=file.fs)
        except pa.ArrowInvalid as exc:  # its message does not name the file
            raise DatasetError(f"{file.uri}: not a readable Parquet manifest ({exc})") from None
        check_version(schema, file.uri)
    return files


def samples_schema(files: list[Location]) -> pa.Schema:
    """The sample manifests' schema of a dataset (``schemas.sample_schema``), from the footer
    of its first manifest (``files``: ``manifest_files``): every manifest has the same."""
    if not files:
        return sample_schema()
    return sample_schema(kept_columns(pq.read_schema(files[0].path, filesystem=files[0].fs)))


def _parquet_dataset(dataset_uri: str, files: list[Location], schema: pa.Schema) -> pads.Dataset:
    import pyarrow.dataset as pads

    fs = locate(dataset_uri).fs
    return pads.dataset([f.path for f in files], schema=schema, filesystem=fs, format="parquet")


def samples_dataset(dataset_uri: str) -> pads.Dataset:
    """All sample manifests of a dataset as one pyarrow Dataset (``samples_schema``)."""
    files = manifest_files(dataset_uri, MANIFESTS_DIR)
    return _parquet_dataset(dataset_uri, files, samples_schema(files))


def rejections_dataset(dataset_uri: str) -> pads.Dataset:
    """All rejection files of a dataset as one pyarrow Dataset (REJECTION_SCHEMA)."""
    files = manifest_files(dataset_uri, REJECTIONS_DIR)
    return _parquet_dataset(dataset_uri, files, REJECTION_SCHEMA)


def check_dataset(dataset_uri: str) -> Location:
    """The dataset's location, or DatasetError when nothing there looks like a dataset.

    An empty dataset (a job that kept nothing) is fine as long as it has a summary or a
    manifests/rejections folder.
    """
    loc = locate(dataset_uri)
    try:
        if not exists(loc):
            raise DatasetError(f"{loc.uri}: no such dataset")
        parts = (SUMMARY_FILE, MANIFESTS_DIR, REJECTIONS_DIR)
        if not any(exists(loc.join(part)) for part in parts):
            raise DatasetError(f"{loc.uri}: not a dataset (none of {', '.join(parts)} is there)")
    except OSError as err:  # S3: unknown bucket, refused credentials, unreachable endpoint
        raise DatasetError(f"{loc.uri}: cannot read the dataset ({err})") from err
    return loc


def read_summary(dataset_uri: str) -> dict[str, Any] | None:
    """The dataset's ``summary.json`` as a dict, or None when the dataset has none."""
    loc = locate(dataset_uri).join(SUMMARY_FILE)
    if not exists(loc):
        return None
    return json.loads(read_bytes(loc))


def _expression(filter: Filter) -> pc.Expression | None:
    if filter is None or isinstance(filter, pc.Expression):
        return filter
    return pq.filters_to_expression(list(filter))


def samples_table(
    dataset_uri: str, *, columns: Sequence[str] | None = None, filter: Filter = None
) -> pa.Table:
    """Sample manifests as a pyarrow Table; only ``columns`` and matching rows are read."""
    check_dataset(dataset_uri)
    return samples_dataset(dataset_uri).to_table(
        columns=list(columns) if columns is not None else None, filter=_expression(filter)
    )


def rejections_table(
    dataset_uri: str, *, columns: Sequence[str] | None = None, filter: Filter = None
) -> pa.Table:
    """Rejection rows as a pyarrow Table; only ``columns`` and matching rows are read."""
    check_dataset(dataset_uri)
    return rejections_dataset(dataset_uri).to_table(
        columns=list(columns) if columns is not None else None, filter=_expression(filter)
    )


def samples_frame(
    dataset_uri: str, *, columns: Sequence[str] | None = None, filter: Filter = None
) -> pd.DataFrame:
    """Sample manifests as a pandas DataFrame (see the module doc for filter forms)."""
    return samples_table(dataset_uri, columns=columns, filter=filter).to_pandas()


def rejections_frame(
    dataset_uri: str, *, columns: Sequence[str] | None = None, filter: Filter = None
) -> pd.DataFrame:
    """Rejection rows as a pandas DataFrame."""
    return rejections_table(dataset_uri, columns=columns, filter=filter).to_pandas()


def persons_table(samples: pa.Table) -> pa.Table:
    """One row per person box of ``samples`` (needs key, shard, width, height, persons).

    ``person`` is the box's index in the sample's ``persons`` list (0-based); samples whose
    ``persons`` is null or empty contribute no rows.
    """
    persons = samples.column("persons").combine_chunks()
    parent = pc.list_parent_indices(persons)
    boxes = pc.list_flatten(persons)
    # list offsets are absolute in the values buffer; a sliced array starts past 0
    offsets = pc.subtract(pc.take(persons.offsets, parent), persons.offsets[0])
    columns: dict[str, pa.Array] = {
        "key": pc.take(samples.column("key"), parent),
        "shard": pc.take(samples.column("shard"), parent),
        "person": pc.subtract(pa.array(range(len(boxes)), pa.int32()), offsets),
    }
    for name in PERSON_COLUMNS[3:13]:
        columns[name] = boxes.field(name)
    columns["box_width"] = pc.subtract(boxes.field("x1"), boxes.field("x0"))
    columns["box_height"] = pc.subtract(boxes.field("y1"), boxes.field("y0"))
    columns["image_width"] = pc.take(samples.column("width"), parent)
    columns["image_height"] = pc.take(samples.column("height"), parent)
    return pa.table({name: columns[name] for name in PERSON_COLUMNS})


def persons_frame(dataset_uri: str, *, filter: Filter = None) -> pd.DataFrame:
    """One row per person box as pandas; ``filter`` applies to the samples (e.g. license)."""
    table = samples_table(
        dataset_uri, columns=["key", "shard", "width", "height", "persons"], filter=filter
    )
    return persons_table(table).to_pandas()


def _read_manifest(
    uri: str, columns: list[str] | None, filter: pc.Expression | None, schema: pa.Schema
) -> pd.DataFrame:
    import pyarrow.dataset as pads

    loc = locate(uri)
    fragment = pads.dataset(loc.path, schema=schema, filesystem=loc.fs, format="parquet")
    return fragment.to_table(columns=columns, filter=filter).to_pandas()


def samples_dask(
    dataset_uri: str, *, columns: Sequence[str] | None = None, filter: Filter = None
) -> dd.DataFrame:
    """Sample manifests as a lazy dask DataFrame, one partition per manifest file.

    Each partition is read with the same column selection and filter push-down as
    ``samples_frame``, so only what a computation needs is ever in memory.
    """
    import dask.dataframe as dd

    check_dataset(dataset_uri)
    # version-checked now rather than in a worker
    manifests = manifest_files(dataset_uri, MANIFESTS_DIR)
    files = [f.uri for f in manifests]
    schema = samples_schema(manifests)
    names = list(columns) if columns is not None else None
    meta_schema = schema if names is None else pa.schema([schema.field(n) for n in names])
    meta = meta_schema.empty_table().to_pandas()
    if not files:
        return dd.from_pandas(meta, npartitions=1)
    return dd.from_map(
        _read_manifest, files, columns=names, filter=_expression(filter),
        schema=schema, meta=meta, enforce_metadata=False,
    )  # fmt: skip
