"""Group-by queries over generated manifests: curation.query (DuckDB) against pandas, same files.

    uv run python bench/query.py --rows 10000000 --data /tmp/humans300m-bench

Generates ``--rows`` SAMPLE_SCHEMA rows as Parquet files in the manifests layout (once; an
existing folder with the same row count is reused), then times each query through
``curation.query`` (in-process connection, and the CLI as a subprocess, start-up included)
and through pandas reading only the needed columns of the same files. Results must agree;
the script stops otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas import SAMPLE_SCHEMA  # noqa: E402
from schemas.layout import MANIFESTS_DIR, manifest_file  # noqa: E402

LICENSES = np.array(["cc-by-4.0", "cc0-1.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "pd"], dtype=object)
QUERIES = {
    "license": (
        "SELECT license, count(*) AS n, avg(num_persons) AS people, sum(num_bytes) AS bytes "
        "FROM samples GROUP BY license ORDER BY license",
        ["license", "num_persons", "num_bytes"],
        lambda df: df.groupby("license").agg(
            n=("num_persons", "size"), people=("num_persons", "mean"), bytes=("num_bytes", "sum")
        ),
    ),
    "people": (
        "SELECT num_persons, count(*) AS n, median(width * height) AS pixels "
        "FROM samples GROUP BY num_persons ORDER BY num_persons",
        ["num_persons", "width", "height"],
        lambda df: (
            df.assign(pixels=df.width.astype("int64") * df.height)
            .groupby("num_persons")
            .agg(n=("pixels", "size"), pixels=("pixels", "median"))
        ),
    ),
}


def _shard(rng: np.random.Generator, shard: int, n: int) -> pa.Table:
    keys = [f"{v:024x}" for v in rng.integers(0, 2**62, n)]
    people = np.minimum(rng.geometric(0.35, n), 30).astype(np.int16)
    width = rng.choice([640, 1024, 1280, 1920, 3024], n).astype(np.int32)
    columns = {
        "key": keys, "shard": np.full(n, shard, np.int32),
        "image_member": [k + ".jpg" for k in keys], "json_member": [k + ".json" for k in keys],
        "source_uri": [f"https://img{v % 500}.example.com/{k}.jpg" for v, k in enumerate(keys)],
        "license": LICENSES[rng.integers(0, len(LICENSES), n)],
        "sha256": [f"{a:016x}" * 4 for a in rng.integers(0, 2**62, n)],
        "num_bytes": rng.integers(20_000, 3_000_000, n), "format": np.full(n, "JPEG", object),
        "width": width, "height": (width * rng.uniform(0.5, 1.5, n)).astype(np.int32),
        "fetched_at": np.full(n, np.datetime64("2026-11-01T00:00:00", "us")),
        "num_persons": people, "dup_cluster_size": np.ones(n, np.int32),
    }  # fmt: skip
    fields = [SAMPLE_SCHEMA.field(name) for name in columns]
    table = pa.table(
        {n_: pa.array(v, f.type) for (n_, v), f in zip(columns.items(), fields, strict=True)}
    )
    missing = [f for f in SAMPLE_SCHEMA if f.name not in columns]
    for field in missing:
        table = table.append_column(field, pa.nulls(n, field.type))
    return table.select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)


def generate(data: Path, rows: int, per_file: int) -> list[str]:
    """Write the manifests (reused when the folder already holds ``rows`` rows)."""
    folder = data / MANIFESTS_DIR
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    if files and sum(pq.ParquetFile(f).metadata.num_rows for f in files) == rows:
        return files
    folder.mkdir(parents=True, exist_ok=True)
    for old in files:
        os.remove(old)
    rng = np.random.default_rng(0)
    for shard, start in enumerate(range(0, rows, per_file)):
        table = _shard(rng, shard, min(per_file, rows - start))
        pq.write_table(table, data / manifest_file(shard), compression="zstd")
    return sorted(str(p) for p in folder.glob("*.parquet"))


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _time(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall-clock and best CPU seconds over ``repeat`` runs, and the last result."""
    wall, cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), _cpu()
        result = fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, _cpu() - start_cpu)
    return wall, cpu, result


def run(data: Path, files: list[str], repeat: int) -> None:
    import pandas as pd

    from curation.query import connect

    print("query    engine            wall s   CPU s   pandas/engine: wall   CPU")
    for name, (sql, columns, pandas_fn) in QUERIES.items():
        duck = _time(lambda sql=sql: connect(str(data)).sql(sql).to_df(), repeat)
        cli = [sys.executable, "-m", "curation.query", sql, "--dataset", str(data)]
        cli_run = _time(lambda cli=cli: subprocess.run(cli, cwd=ROOT, check=True,
                                                       capture_output=True), repeat)  # fmt: skip
        pandas_run = _time(
            lambda columns=columns, fn=pandas_fn: fn(pd.read_parquet(files, columns=columns)),
            repeat,
        )
        ours = duck[2].set_index(duck[2].columns[0]).sort_index()
        theirs = pandas_run[2].sort_index()
        assert (ours["n"].to_numpy() == theirs["n"].to_numpy()).all(), "results differ"
        assert np.allclose(ours.iloc[:, 1].astype(float), theirs.iloc[:, 1].astype(float))
        for engine, (wall, cpu, _) in (("curation.query API", duck),
                                       ("curation.query CLI", cli_run), ("pandas", pandas_run)):  # fmt: skip
            print(
                f"{name:8s} {engine:18s} {wall:6.2f}  {cpu:6.2f}          "
                f"{pandas_run[0] / wall:5.1f}x {pandas_run[1] / cpu:5.1f}x"
            )


def machine() -> str:
    import duckdb
    import pandas as pd

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"commit {commit}; {platform.machine()} {os.cpu_count()} cores, {mem:.0f} GiB; "
            f"Python {platform.python_version()}, duckdb {duckdb.__version__}, "
            f"pandas {pd.__version__}, pyarrow {pa.__version__}; "
            f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="manifest rows to generate")
    parser.add_argument("--per-file", type=int, default=250_000, help="rows per manifest file")
    parser.add_argument("--data", type=Path, default=Path("/tmp/humans300m-bench"),
                        help="folder for the generated dataset (reused across runs)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; best kept")
    args = parser.parse_args()
    print(machine())
    start = time.perf_counter()
    files = generate(args.data, args.rows, args.per_file)
    size = sum(os.path.getsize(f) for f in files) / 2**20
    print(f"{args.rows:,} rows in {len(files)} files, {size:.0f} MiB "
          f"(ready in {time.perf_counter() - start:.0f} s)")  # fmt: skip
    run(args.data, files, args.repeat)
    print(f"load average after: {os.getloadavg()[0]:.1f} (other work on the machine skews times)")


if __name__ == "__main__":
    main()
