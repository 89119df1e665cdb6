"""The in-flight record's columns: declared once in schemas, emitted as declared, stored as is."""

import numpy as np
import pyarrow as pa

from curation.fetch import FetchConfig
from curation.record import OK, REJECTED, object_column
from curation.synthetic import photo_jpeg
from curation.validate import ValidateConfig
from pipeline.sink import manifest_row, rejection_row
from pipeline.stages import StageConfig, fetch_and_validate
from schemas import REJECTION_SCHEMA, SAMPLE_SCHEMA, rows_to_table, sample_key
from schemas.record import FLOW_ONLY, STAGE_COLUMNS, record_dtype


def test_stage_columns_are_manifest_columns_or_flow_only():
    kept = set(STAGE_COLUMNS) - set(FLOW_ONLY)
    assert kept <= set(SAMPLE_SCHEMA.names)
    # the rejection columns that travel with a row are the rejection manifest's
    assert {"stage", "reason", "detail"} <= set(REJECTION_SCHEMA.names)


def test_batch_dtypes_follow_the_manifest_types():
    assert record_dtype("http_status") == np.int16 and record_dtype("num_persons") == np.int16
    assert record_dtype("width") == np.int32 and record_dtype("height") == np.int32
    assert record_dtype("num_bytes") == np.int64 and record_dtype("phash") == np.uint64
    assert record_dtype("fetched_at") == np.int64  # microseconds: the manifest's timestamp unit
    assert SAMPLE_SCHEMA.field("fetched_at").type == pa.timestamp("us", tz="UTC")
    assert record_dtype("sha256").kind == record_dtype("persons").kind == "O"


def test_fetch_stage_emits_the_declared_dtypes_and_the_writer_takes_its_rows(tmp_path):
    good, broken = tmp_path / "good.jpg", tmp_path / "broken.jpg"
    good.write_bytes(photo_jpeg(320, 240, seed=1))
    broken.write_bytes(b"not an image at all")
    uris = [good.as_uri(), broken.as_uri()]
    batch = {
        "key": object_column([sample_key(u) for u in uris]),
        "source_uri": object_column(uris),
    }
    config = StageConfig(fetch=FetchConfig(), validate=ValidateConfig(min_side=100), det_size=0)
    out = fetch_and_validate(batch, config)

    assert out["status"].tolist() == [OK, REJECTED] and out["reason"][1] == "not_an_image"
    for name, default in STAGE_COLUMNS.items():
        if name == "det_input":  # no filter stage reads it here
            assert name not in out
        elif default is None or name in FLOW_ONLY:
            assert out[name].dtype.kind == "O", name
        else:
            assert out[name].dtype == record_dtype(name), name
            if name != "fetched_at":  # the broken file was fetched, then rejected
                assert out[name][1] == default, name  # never filled: the declared null
    assert (out["width"][0], out["height"][0]) == (320, 240)

    rows = [{name: out[name][i] for name in out} for i in range(2)]
    samples = rows_to_table(
        [dict(manifest_row(rows[0]), shard=0, image_member="k.jpg", json_member="k.json")],
        SAMPLE_SCHEMA,
    )
    assert samples["width"].to_pylist() == [320] and samples["http_status"].to_pylist() == [None]
    assert samples["phash"].to_pylist() == [int(out["phash"][0])]
    rejected = rows_to_table([rejection_row(rows[1])], REJECTION_SCHEMA)
    assert rejected["reason"].to_pylist() == ["not_an_image"]
