"""Reading a dataset's manifests: pyarrow Datasets over local folders or S3 prefixes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads

from curation.storage import Location, list_files, locate
from schemas import REJECTION_SCHEMA, SAMPLE_SCHEMA, check_version
from schemas.layout import MANIFESTS_DIR, REJECTIONS_DIR


def _parquet_dataset(loc: Location, schema: pa.Schema) -> pads.Dataset:
    files = list_files(loc, ".parquet")
    for file in files[:1]:  # one footer is enough to refuse a dataset of another version
        check_version(pads.dataset(file.path, filesystem=loc.fs, format="parquet").schema, file.uri)
    return pads.dataset([f.path for f in files], schema=schema, filesystem=loc.fs, format="parquet")


def samples_dataset(dataset_uri: str) -> pads.Dataset:
    """All sample manifests of a dataset as one pyarrow Dataset (SAMPLE_SCHEMA)."""
    return _parquet_dataset(locate(dataset_uri).join(MANIFESTS_DIR), SAMPLE_SCHEMA)


def rejections_dataset(dataset_uri: str) -> pads.Dataset:
    """All rejection files of a dataset as one pyarrow Dataset (REJECTION_SCHEMA)."""
    return _parquet_dataset(locate(dataset_uri).join(REJECTIONS_DIR), REJECTION_SCHEMA)
