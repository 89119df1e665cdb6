"""The curation job end to end on a real local Ray against the loopback crawl server."""

import dataclasses
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from curation.manifest import rejections_dataset, samples_dataset
from pipeline.build_humans300m import config_from_args, parser, run
from schemas.summary import validate_summary
from tests.support.corpus import build_corpus, check_outcomes
from tests.support.httpserver import CrawlServer

pytestmark = pytest.mark.usefixtures("ray_cluster")


def job_args(url_list, output, *extra):
    return [
        "--input", str(url_list), "--output", str(output), "--detector", "none",
        "--fetch-allow-private-addresses", "--fetch-backoff", "0.05", "--fetch-total-timeout", "3",
        "--fetch-read-timeout", "2", "--validate-min-side", "100", "--max-shard-samples", "7",
        "--batch-size", "8", *extra,
    ]  # fmt: skip


def check_dataset(output):
    """Shards equal their manifests row for row; returns (manifest rows, rejection rows)."""
    manifests = sorted((output / "manifests").glob("*.parquet"))
    rows = []
    for manifest in manifests:
        table = pq.read_table(manifest).to_pylist()
        tar = output / "shards" / (manifest.stem + ".tar")
        # empty_check off: dedup may leave a shard with no samples (valid, see test_writer)
        samples = list(wds.WebDataset(str(tar), shardshuffle=False, empty_check=False))
        assert [s["__key__"] for s in samples] == [r["key"] for r in table]
        for sample, row in zip(samples, table, strict=True):
            ext = row["image_member"].rsplit(".", 1)[1]
            import hashlib

            assert hashlib.sha256(sample[ext]).hexdigest() == row["sha256"]
            stored = json.loads(sample["json"])
            assert stored["key"] == row["key"] and stored["shard"] == row["shard"] == int(
                manifest.stem
            )
            assert stored["sha256"] == row["sha256"] and stored["caption"] == row["caption"]
        rows += table
    assert sorted(p.stem for p in (output / "shards").glob("*.tar")) == [m.stem for m in manifests]
    rejections = rejections_dataset(str(output)).to_table().to_pylist()
    leftovers = [
        p
        for p in output.rglob("*")
        if p.is_file() and (p.name.startswith(".") or "tmp" in p.relative_to(output).parts)
    ]
    assert leftovers == []
    return rows, rejections


def test_every_input_is_accounted_for_exactly_once(tmp_path):
    with CrawlServer() as server:
        corpus = build_corpus(server, tmp_path)
        output = tmp_path / "out"
        summary = run(config_from_args(parser().parse_args(job_args(corpus.url_list, output))))

    rows, rejections = check_dataset(output)
    validate_summary(summary)
    assert summary == json.loads((output / "summary.json").read_text())
    total_inputs = len(corpus.inputs) + corpus.malformed_rows
    assert summary["counts"]["inputs"] == len(rows) + len(rejections) == total_inputs

    check_outcomes(corpus, rows, rejections)
    for row in rows:
        assert row["caption"].startswith("caption") and row["license"] == "cc-by"
        assert row["width"] >= 100 and row["phash"] is not None and row["pixel_hash"]
    assert max(Counter(r["shard"] for r in rows).values()) <= 7


def test_rerun_of_a_finished_job_changes_nothing(tmp_path):
    with CrawlServer() as server:
        corpus = build_corpus(server, tmp_path, good=6)
        output = tmp_path / "out"
        args = job_args(corpus.url_list, output)
        before = run(config_from_args(parser().parse_args(args)))
        first = check_dataset(output)
        hits = sum(server.hits.values())
        summary = run(config_from_args(parser().parse_args(args)))
        assert sum(server.hits.values()) == hits  # nothing fetched again
    # each run names itself in summary.json: the release a model's lineage records
    assert before["run_id"] != summary["run_id"] and summary["run_id"].startswith("20")
    second = check_dataset(output)
    assert sorted(r["key"] for r in first[0]) == sorted(r["key"] for r in second[0])
    assert len(first[1]) == len(second[1])
    assert summary["processed_this_run"] == 0


def test_s3_input_and_output(s3_bucket, tmp_path):
    import boto3

    from curation.synthetic import photo_jpeg

    s3 = boto3.client("s3")
    for i in range(5):
        s3.put_object(Bucket=s3_bucket, Key=f"raw/{i}.jpg", Body=photo_jpeg(200, 150, seed=i))
    s3.put_object(Bucket=s3_bucket, Key="raw/notes.txt", Body=b"not an image")
    output = f"s3://{s3_bucket}/humans/v1"
    args = job_args(f"s3://{s3_bucket}/raw/", output)
    summary = run(config_from_args(parser().parse_args(args)))
    assert summary["counts"]["kept"] == 5 and summary["counts"]["rejected"] == 1
    samples = samples_dataset(output).to_table()
    assert sorted(samples["source_uri"].to_pylist()) == [
        f"s3://{s3_bucket}/raw/{i}.jpg" for i in range(5)
    ]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="humans/v1/")["Contents"]}
    assert "humans/v1/summary.json" in keys and "humans/v1/shards/000000.tar" in keys


def test_bad_configuration_is_refused_before_work(tmp_path):
    with pytest.raises(ValueError, match="no inputs"):
        run(
            config_from_args(parser().parse_args(["--output", str(tmp_path), "--detector", "none"]))
        )
    with pytest.raises(FileNotFoundError):
        run(
            config_from_args(
                parser().parse_args(job_args(tmp_path / "missing.csv", tmp_path / "o"))
            )
        )
    with pytest.raises(ValueError):
        config_from_args(parser().parse_args(["--fetch-concurrency", "0"]))
    config = config_from_args(parser().parse_args(job_args(tmp_path / "x.csv", tmp_path / "o")))
    assert dataclasses.asdict(config.fetch)["allow_private_addresses"] is True
    # a semantic-dedup model that would only be needed after the crawl is checked before it
    from curation.dedup.encoder import EncoderError

    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\n")
    args = [*job_args(urls, tmp_path / "never"), "--dedup-semantic",
            "--dedup-semantic-model", str(tmp_path / "no-such-encoder.pt")]  # fmt: skip
    with pytest.raises(EncoderError, match="no-such-encoder.pt"):
        run(config_from_args(parser().parse_args(args)))
    assert not (tmp_path / "never").exists()


def test_job_with_a_local_detector_file_and_with_missing_weights(tmp_path):
    from curation.synthetic import photo_jpeg
    from curation.weights import WeightsError
    from tests.support.models import build_yolo

    weights = build_yolo(tmp_path / "yolo-random.pt")
    with CrawlServer({f"p{i}.jpg": photo_jpeg(480, 360, seed=i) for i in range(6)}) as server:
        url_list = tmp_path / "urls.txt"
        url_list.write_text("".join(server.url("img", f"p{i}.jpg") + "\n" for i in range(6)))
        base = job_args(url_list, tmp_path / "out")
        base[base.index("--detector") + 1] = str(weights)
        # random weights: permissive thresholds so that boxes exist and reach the manifest
        args = [*base, "--detector-min-score", "0.0", "--detector-min-side", "1",
                "--detector-conf", "0.01", "--detector-cpus-per-actor", "0.5", "--no-dedup"]  # fmt: skip
        summary = run(config_from_args(parser().parse_args(args)))
        missing = job_args(url_list, tmp_path / "never")
        missing[missing.index("--detector") + 1] = str(tmp_path / "no-such-weights.pt")
        with pytest.raises(WeightsError):
            run(config_from_args(parser().parse_args(missing)))
    assert not (tmp_path / "never").exists()  # refused before any work
    rows, rejections = check_dataset(tmp_path / "out")
    assert summary["detector"] == str(weights)
    assert len(rows) + len(rejections) == 6
    assert all(r["stage"] == "detect" for r in rejections)
    for row in rows:
        identity = json.loads(row["detector"])
        assert identity["weights_sha256"] and row["num_persons"] >= 1
        for box in row["persons"]:  # original-pixel coordinates of a 480x360 image
            assert -1 <= box["x0"] <= box["x1"] <= 481 and -1 <= box["y0"] <= box["y1"] <= 361


def test_relative_output_is_refused_in_a_submitted_job(tmp_path, monkeypatch):
    """Under `ray job submit --working-dir` the driver runs in a temporary copy of the working
    dir: a relative output would be written there and lost with the session."""
    monkeypatch.chdir(tmp_path)
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    args = job_args("urls.txt", "out")  # a relative input is fine: it ships with the job
    with pytest.raises(ValueError, match="--output 'out' is relative"):
        run(config_from_args(parser().parse_args(args)))
    assert not (tmp_path / "out").exists()
