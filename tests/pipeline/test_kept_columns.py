"""--keep-columns through the real job (loopback server, local Ray) and every reader after it:
typed manifest columns from a Parquet and a JSON list, kept through dedup (driver and Ray
paths), reruns, subset, the img2dataset export, DuckDB, pandas and the Ray Data reader."""

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.synthetic import encode, photo_like
from pipeline.build_humans300m import config_from_args, main, parser, run
from tests.pipeline.test_build import check_dataset, job_args
from tests.support.httpserver import CrawlServer

pytestmark = pytest.mark.usefixtures("ray_cluster")

KEEP = "similarity,NSFW,original_width"
TYPES = [("similarity", pa.float64()), ("NSFW", pa.string()), ("original_width", pa.int64())]


def _serve(server: CrawlServer, count: int) -> list[str]:
    """``count`` distinct images and, last, the first one's bytes again under another URL."""
    urls = []
    for i in range(count):
        server.images[f"p{i}.jpg"] = encode(photo_like(160 + 8 * i, 120, seed=300 + i))
        urls.append(server.url("img", f"p{i}.jpg"))
    server.images["again.jpg"] = server.images["p0.jpg"]
    return [*urls, server.url("img", "again.jpg")]


def _kept(manifests) -> dict[str, dict]:
    """source URI -> kept values, read back with pyarrow alone; checks every file's types."""
    values = {}
    for path in sorted(manifests.glob("*.parquet")):
        table = pq.read_table(path)
        assert [(f.name, f.type) for f in table.schema][-3:] == TYPES, path
        for row in table.select(["source_uri", "similarity", "NSFW", "original_width"]).to_pylist():
            values[row.pop("source_uri")] = row
    return values


def test_parquet_list_columns_keep_their_types_through_job_rerun_and_readers(tmp_path, capsys):
    with CrawlServer() as server:
        urls = _serve(server, 5)
        listed = tmp_path / "laion.parquet"
        table = pa.table({
            "url": urls,
            "TEXT": [f"caption {i}" for i in range(len(urls))],
            "similarity": pa.array([0.25, 0.26, 0.27, 0.28, 0.29, None], pa.float64()),
            "NSFW": ["UNLIKELY", "NSFW", "UNSURE", "UNLIKELY", None, "UNLIKELY"],
            "original_width": pa.array([640, 800, 1024, 1280, 2048, 600], pa.int64()),
            "hash": pa.array(range(6), pa.int64()),
        })  # fmt: skip
        pq.write_table(table, listed)
        expected = {r.pop("url"): r for r in table.select(["url", *KEEP.split(",")]).to_pylist()}
        output = tmp_path / "out"
        args = job_args(listed, output, "--caption-column", "TEXT", "--keep-columns", KEEP)
        run(config_from_args(parser().parse_args(args)))
        first = _kept(output / "manifests")
        # p0 or its copy went to dedup (driver path), which rewrote a shard: columns kept, and
        # each sample's values are its own listing's
        assert len(first) == 5 and (urls[0] in first) != (urls[-1] in first)
        assert first == {url: expected[url] for url in first}
        rows, _ = check_dataset(output)
        hashes = {str(urls.index(url)) for url in first}
        assert {dict(r["extra"])["hash"] for r in rows} == hashes  # the other columns: extra

        # a rerun with the same setting resumes: nothing fetched, the same typed columns
        hits = sum(server.hits.values())
        again = run(config_from_args(parser().parse_args(args)))
        assert again["processed_this_run"] == 0 and sum(server.hits.values()) == hits
        assert _kept(output / "manifests") == first
        # one with another setting is refused before anything starts
        capsys.readouterr()
        assert main([*args[:-1], "similarity"]) == 2
        assert main(args[:-2]) == 2  # none kept at all: the same refusal
        held = "holds manifests with kept columns similarity: double, NSFW: string, "
        assert capsys.readouterr().err.splitlines() == [
            f"error: --keep-columns: {output} {held}original_width: int64; this run would "
            f"write {what}: keep the same columns, or write to another --output"
            for what in ("similarity: double", "none")
        ]

    _check_readers(output, tmp_path, first)


def _check_readers(output, tmp_path, kept: dict[str, dict]) -> None:
    from curation.export import export_img2dataset
    from curation.manifest import samples_dask, samples_frame
    from curation.query import query
    from curation.subset import SubsetConfig, write_subset
    from pipeline.readers import read_samples

    frame = samples_frame(str(output), columns=["source_uri", "similarity", "original_width"])
    assert str(frame.similarity.dtype) == "float64" and str(frame.original_width.dtype) == "int64"
    lazy = samples_dask(str(output), columns=["similarity", "NSFW"]).compute()
    assert sorted(lazy.NSFW.dropna()) == sorted(v["NSFW"] for v in kept.values() if v["NSFW"])
    # each sample's .json member in the tars is its manifest row: kept columns included
    members = [json.loads(s["json"]) for tar in sorted((output / "shards").glob("*.tar"))
               for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)]  # fmt: skip
    assert {m["source_uri"]: {k: m[k] for k in kept[m["source_uri"]]} for m in members} == kept
    answer = query(
        str(output), "SELECT sum(original_width) AS w, max(similarity) AS s FROM samples"
    )
    widths = [v["original_width"] for v in kept.values()]
    assert answer.to_pylist() == [{"w": sum(widths), "s": 0.29}]
    plain = duckdb.sql(f"SELECT typeof(similarity) FROM '{output}/manifests/*.parquet' LIMIT 1")
    assert plain.fetchone() == ("DOUBLE",)

    subset = tmp_path / "subset"
    write_subset(SubsetConfig(dataset=str(output), where="similarity > 0.26", output=str(subset)))
    picked = {u: v for u, v in kept.items() if (v["similarity"] or 0) > 0.26}
    assert _kept(subset / "manifests") == picked and len(picked) == 3

    exported = tmp_path / "i2d"
    export_img2dataset(str(output), str(exported))
    table = pa.concat_tables(pq.read_table(p) for p in sorted(exported.glob("*.parquet")))
    # img2dataset's original_width is the image's; the list's is kept beside it
    assert table.schema.field("input_original_width").type == pa.int64()
    assert table.schema.field("similarity").type == pa.float64()
    got = {r["url"]: r["input_original_width"] for r in table.to_pylist()}
    assert got == {u: v["original_width"] for u, v in kept.items()}

    ray_rows = read_samples(str(output), decode=False).take_all()
    assert {r["source_uri"]: r["NSFW"] for r in ray_rows} == {u: v["NSFW"] for u, v in kept.items()}


def test_jsonl_list_columns_through_the_job_with_dedup_on_ray(tmp_path, monkeypatch):
    from curation import sources

    monkeypatch.setattr(sources, "INFER_ROWS", 5)  # types from the first 5 rows, as from 1000
    with CrawlServer() as server:
        urls = _serve(server, 4)
        rows = [{"url": url, "similarity": 0.5 + i / 10, "NSFW": "UNLIKELY", "original_width": 100 * i}
                for i, url in enumerate(urls)]  # fmt: skip
        rows[1]["NSFW"] = "see https://h.example/a.jpg?X-Amz-Signature=s3cr3t"
        rows.append({"url": server.url("img", "p3.jpg") + "?v=2", "original_width": "wide"})
        listed = tmp_path / "list.jsonl"
        listed.write_text("".join(json.dumps(r) + "\n" for r in rows))
        output = tmp_path / "out"
        args = job_args(listed, output, "--keep-columns", KEEP, "--dedup-ray-above", "0")
        run(config_from_args(parser().parse_args(args)))
    kept = _kept(output / "manifests")
    # p0 or its copy dropped by dedup on Ray, which rewrote a shard: columns kept
    assert len(kept) == 4 and (urls[0] in kept) != (urls[-1] in kept)
    rows[1]["NSFW"] = "see https://h.example/a.jpg?X-Amz-Signature=REDACTED"  # as stored
    assert kept == {url: {k: rows[urls.index(url)].get(k) for k in KEEP.split(",")} for url in kept}
    assert kept[urls[2]] == {"similarity": 0.7, "NSFW": "UNLIKELY", "original_width": 200}
    rejections = pq.read_table(output / "rejections").to_pylist()
    bad = [r for r in rejections if r["reason"] == "malformed_input"]
    assert len(bad) == 1 and bad[0]["detail"].endswith(
        ":6: kept column 'original_width': 'wide' is not int64"
    )
