"""SQL over a dataset's manifests with DuckDB, local or on S3, offline.

Views on the connection:
    samples      one row per kept sample (SAMPLE_SCHEMA)
    rejections   one row per input that did not make it (REJECTION_SCHEMA)
    persons      one row per person box: key, shard, person (0-based index in ``persons``),
                 x0, y0, x1, y1, score, passes, crop_x0..crop_y1, box_width, box_height,
                 image_width, image_height

Command line::

    python -m curation.query "SELECT num_persons, count(*) FROM samples GROUP BY 1 ORDER BY 1" \\
        --dataset s3://bucket/humans-v1
    python -m curation.query "SELECT * FROM persons WHERE passes" --dataset data/humans-v1 \\
        --format parquet --output boxes.parquet

S3 is read by DuckDB's httpfs extension loaded from the ``duckdb-extension-httpfs`` package
(never downloaded at run time). Credentials are resolved by boto3's usual chain (environment,
shared profile, instance role) and handed to DuckDB as a secret; ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` points it at an S3-compatible server.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from urllib.parse import urlparse

import duckdb
import pyarrow as pa

from curation.manifest import PERSON_COLUMNS, DatasetError, check_dataset, manifest_files
from runtime import config as cli
from runtime.storage import is_s3, s3_endpoint
from schemas import REJECTION_SCHEMA, SAMPLE_SCHEMA, SchemaError
from schemas.layout import MANIFESTS_DIR, REJECTIONS_DIR

FORMATS = ("table", "csv", "parquet", "json")
EPILOG = """views:
  samples     one row per kept sample (the manifest columns; DESCRIBE samples lists them)
  rejections  one row per rejected input: key, source_uri, stage, reason, detail, ...
  persons     one row per person box: key, shard, person, x0, y0, x1, y1, score, passes,
              crop_x0..crop_y1, box_width, box_height, image_width, image_height

examples:
  SELECT least(num_persons, 4) AS people, count(*) FROM samples GROUP BY 1 ORDER BY 1
  SELECT stage, reason, count(*) FROM rejections GROUP BY ALL ORDER BY 3 DESC
  SELECT key, box_height FROM persons WHERE passes AND box_height > 1000

S3: credentials from the AWS environment or profile; AWS_ENDPOINT_URL(_S3) for other servers.
"""
_BOX_FIELDS = PERSON_COLUMNS[3:13]  # x0 .. crop_y1, as stored in each PERSON_BOX


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ensure_home(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB needs a home folder for its settings; services often run without HOME."""
    home = os.environ.get("HOME")
    if not home or not os.path.isdir(home):
        con.execute(f"SET home_directory={_literal(tempfile.gettempdir())}")


def _configure_s3(con: duckdb.DuckDBPyConnection) -> None:
    """Load httpfs from its Python package and give DuckDB the AWS chain's credentials."""
    import boto3
    from duckdb_extensions import import_extension

    import_extension("httpfs", con=con)
    session = boto3.Session()
    options = {"TYPE": "s3", "REGION": session.region_name or "us-east-1"}
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options.update(KEY_ID=frozen.access_key, SECRET=frozen.secret_key)
        if frozen.token:
            options["SESSION_TOKEN"] = frozen.token
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(
            ENDPOINT=parsed.netloc, URL_STYLE="path", USE_SSL=str(parsed.scheme == "https")
        )
    body = ", ".join(
        f"{k} {v}" if k in ("TYPE", "USE_SSL") else f"{k} {_literal(v)}" for k, v in options.items()
    )
    con.execute(f"CREATE OR REPLACE SECRET humans300m_s3 ({body})")


_SCALARS = {
    pa.bool_(): "BOOLEAN", pa.int16(): "SMALLINT", pa.int32(): "INTEGER",
    pa.int64(): "BIGINT", pa.uint64(): "UBIGINT", pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE", pa.string(): "VARCHAR",
}  # fmt: skip


def _sql_type(kind: pa.DataType) -> str:
    """DuckDB type of an Arrow type, for the types the manifest schemas use."""
    if kind in _SCALARS:
        return _SCALARS[kind]
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ" if kind.tz else "TIMESTAMP"
    if pa.types.is_map(kind):
        return f"MAP({_sql_type(kind.key_type)}, {_sql_type(kind.item_type)})"
    if pa.types.is_list(kind):
        return f"{_sql_type(kind.value_type)}[]"
    if pa.types.is_struct(kind):
        return "STRUCT(" + ", ".join(f"{f.name} {_sql_type(f.type)}" for f in kind) + ")"
    raise TypeError(f"no DuckDB type for {kind}")


def _create_view(
    con: duckdb.DuckDBPyConnection, name: str, files: list[str], schema: pa.Schema
) -> None:
    if files:
        listing = ", ".join(_literal(f) for f in files)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}])")
        return
    # a dataset that kept (or rejected) nothing still answers with the right columns; typed
    # NULLs rather than a registered Arrow table, which would make DuckDB import pandas
    columns = ", ".join(f"NULL::{_sql_type(f.type)} AS {f.name}" for f in schema)
    con.execute(f"CREATE VIEW {name} AS SELECT {columns} WHERE false")


_PERSONS_VIEW = f"""
CREATE VIEW persons AS
SELECT key, shard, (i - 1)::INTEGER AS person,
       {", ".join(f"p.{name} AS {name}" for name in _BOX_FIELDS)},
       p.x1 - p.x0 AS box_width, p.y1 - p.y0 AS box_height,
       width AS image_width, height AS image_height
FROM (SELECT key, shard, width, height,
             unnest(persons) AS p, generate_subscripts(persons, 1) AS i
      FROM samples)
"""


def connect(dataset_uri: str, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the dataset's views (see the module doc).

    Raises DatasetError for a path without a dataset and SchemaError for manifests of
    another schema version.
    """
    loc = check_dataset(dataset_uri)
    samples = [f.uri for f in manifest_files(dataset_uri, MANIFESTS_DIR)]  # version-checked
    rejections = [f.uri for f in manifest_files(dataset_uri, REJECTIONS_DIR)]
    con = duckdb.connect()
    _ensure_home(con)
    if threads:
        con.execute(f"SET threads={int(threads)}")
    if loc.is_s3:
        _configure_s3(con)
    _create_view(con, "samples", samples, SAMPLE_SCHEMA)
    _create_view(con, "rejections", rejections, REJECTION_SCHEMA)
    con.execute(_PERSONS_VIEW)
    return con


def query(dataset_uri: str, sql: str) -> pa.Table:
    """Run one SQL statement over the dataset's views and return its result."""
    con = connect(dataset_uri)
    relation = con.sql(one_statement(con, sql))
    return relation.to_arrow_table() if relation is not None else pa.table({})


def one_statement(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """``sql`` when it holds exactly one statement; ValueError otherwise.

    DuckDB runs every statement of a string and returns the last one's result only, so
    ``SELECT 1; SELECT 2`` would silently answer the second question.
    """
    count = len(con.extract_statements(sql))  # duckdb.ParserError for bad syntax
    if count != 1:
        raise ValueError(
            f"one SQL statement only, got {count}: run the statements one by one"
            if count
            else "no SQL statement given"
        )
    return sql


def write_result(
    con: duckdb.DuckDBPyConnection, relation: duckdb.DuckDBPyRelation, fmt: str, out: str
) -> None:
    """Write a query result to ``out`` (local path or s3:// URI) as csv, parquet or json.

    JSON is newline-delimited (one object per row), which stays streamable at any size.
    """
    if is_s3(out):  # the connection knows S3 only when the dataset is there
        _configure_s3(con)
    relation.create_view("_result", replace=True)
    options = {"csv": "FORMAT csv, HEADER true", "parquet": "FORMAT parquet",
               "json": "FORMAT json"}[fmt]  # fmt: skip
    con.execute(f"COPY (SELECT * FROM _result) TO {_literal(out)} ({options})")


def print_table(relation: duckdb.DuckDBPyRelation, max_rows: int) -> None:
    """DuckDB's box table: first and last rows, the total row count, types per column."""
    # a terminal gets its width; a pipe or file gets every column
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 100_000
    relation.show(max_rows=max_rows, max_width=width, max_col_width=60, null_value="NULL")


@dataclass(kw_only=True)
class QueryConfig:
    sql: str = field(
        metadata={
            "help": 'one SQL statement, e.g. "SELECT count(*) FROM samples"',
            "positional": True,
        }  # fmt: skip
    )
    dataset: str = field(metadata={"help": "dataset folder or s3://bucket/prefix"})
    format: str = field(
        default="table",
        metadata={"help": "table: print to the terminal; csv, parquet, json (newline-"
                  "delimited): write the full result to --output", "choices": FORMATS},
    )  # fmt: skip
    output: str | None = field(
        default=None,
        metadata={"help": "result file (local or s3://) for csv, parquet, json",
                  "aliases": ["out"]},
    )  # fmt: skip
    max_rows: int = field(default=50, metadata={"help": "rows printed in table format"})
    threads: int | None = field(
        default=None, metadata={"help": "DuckDB threads; None: one per core"}
    )

    def __post_init__(self) -> None:
        if self.format != "table" and not self.output:
            raise ValueError(f"--format {self.format} needs --output FILE")
        if self.format == "table" and self.output:
            raise ValueError("--output needs --format csv, parquet or json (table prints)")
        if self.max_rows < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError("--max-rows and --threads must be at least 1")


@cli.entry_point(duckdb.Error, DatasetError, SchemaError, OSError)
def main(argv: list[str] | None = None) -> int:
    parser = cli.command(
        QueryConfig,
        prog="python -m curation.query",
        description="Run DuckDB SQL over a dataset's views: samples, rejections, persons.",
        epilog=EPILOG,
    )
    config = cli.parse(QueryConfig, parser, argv)
    con = connect(config.dataset, threads=config.threads)
    relation = con.sql(one_statement(con, config.sql))
    if relation is None:
        print("OK (the statement returned no rows)")
    elif config.format == "table":
        print_table(relation, config.max_rows)
    else:
        write_result(con, relation, config.format, config.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
