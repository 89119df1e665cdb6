"""The curation job's progress: counts per batch, periodic lines without a terminal, final rate."""

import json
import re

import numpy as np
import pytest
import ray

from curation.record import OK, REJECTED, object_column
from pipeline import build_humans300m
from pipeline.progress import ProgressCounter, outcomes, rejected_text, status_line
from tests.pipeline.test_build import check_dataset, job_args
from tests.support.corpus import build_corpus
from tests.support.httpserver import CrawlServer

LINE = re.compile(
    r"^progress: (?P<done>[\d,]+)/(?P<total>[\d,]+) inputs \(\d+%\), kept (?P<kept>[\d,]+), "
    r"rejected (?P<rejected>[\d,]+)(?: \((?P<reasons>[^)]*)\))?, (?P<rate>[\d.]+) images/s, "
    r"ETA (?P<eta>\S+), elapsed \S+$"
)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def test_outcomes_of_a_batch_count_kept_and_rejections_by_reason():
    status = [OK, REJECTED, OK, REJECTED, REJECTED]
    reason = [None, "http_error", None, "too_small", "http_error"]
    batch = {"status": object_column(status), "reason": object_column(reason)}
    assert outcomes(batch) == (2, {"http_error": 2, "too_small": 1})
    # Ray hands an all-null reason column of an all-kept batch over as NaN floats
    kept = {"status": object_column([OK, OK]), "reason": np.full(2, np.nan)}
    assert outcomes(kept) == (2, {})


def test_status_line_names_the_top_reasons_and_estimates_the_rest():
    rejected = {"http_error": 200, "too_small": 100, "no_person": 50, "timeout": 7, "corrupt": 3}
    assert rejected_text(rejected) == (
        "rejected 360 (http_error 200, too_small 100, no_person 50, other 10)"
    )
    line = status_line(640, rejected, 10_000, elapsed=20.0)
    found = LINE.match(line)
    assert found, line
    assert found["done"] == "1,000" and found["total"] == "10,000" and found["kept"] == "640"
    assert found["rate"] == "50.0" and found["eta"] == "3m00s"  # 9,000 left at 50/s
    assert status_line(0, {}, 5, elapsed=1.0).endswith("0.0 images/s, ETA ?, elapsed 1s")


@pytest.mark.usefixtures("ray_cluster")
def test_the_job_counter_counts_outcomes_and_hands_out_each_shard_number_once():
    counter = ProgressCounter.remote(7)  # 0-6 published by earlier runs
    try:
        numbers = ray.get([counter.next_shard.remote() for _ in range(3)])
        counter.add.remote(2, {"http_error": 1})
        counter.add.remote(1, {"http_error": 1, "too_small": 2})
        assert sorted(numbers) == [7, 8, 9]
        assert ray.get(counter.snapshot.remote()) == (3, {"http_error": 2, "too_small": 2})
        assert ray.get(counter.next_shard.remote()) == 10
    finally:
        ray.kill(counter)


@pytest.mark.usefixtures("ray_cluster")
def test_job_logs_progress_lines_and_a_rate_without_start_up(tmp_path, capsys):
    with CrawlServer() as server:
        server.lag = 0.5  # the good images trickle in, so the job runs for a few intervals
        corpus = build_corpus(server, tmp_path, good=10, route="lag")
        output = tmp_path / "out"
        args = job_args(corpus.url_list, output, "--batch-size", "2")
        args[args.index("--fetch-total-timeout") + 1] = "10"
        code = build_humans300m.main([*args, "--progress-interval", "0.2"])
    out = capsys.readouterr().out
    print(out)  # shown when the test fails
    assert code == 0, out
    summary = json.loads((output / "summary.json").read_text())
    rows, rejections = check_dataset(output)

    lines = [line for line in out.splitlines() if line.startswith("progress:")]
    assert len(lines) >= 2, out  # stdout is no terminal here: plain lines, as in a job's log
    found = [LINE.match(line) for line in lines]
    assert all(found), lines
    done = [_int(f["done"]) for f in found]
    assert done == sorted(done) and done[-1] > 0  # seen moving while the job ran
    processed = summary["processed_this_run"]
    assert {_int(f["total"]) for f in found} == {processed}
    streamed = [r for r in rejections if r["stage"] in ("fetch", "validate")]
    final_reasons = {r["reason"] for r in streamed}
    for f in found:
        assert _int(f["kept"]) + _int(f["rejected"]) == _int(f["done"]) <= processed
        # kept by the stream: the samples, and the copies that dedup removed after it
        assert _int(f["kept"]) <= processed - len(streamed)
        assert _int(f["rejected"]) <= len(streamed)
        named = [item.rsplit(" ", 1)[0] for item in (f["reasons"] or "").split(", ") if item]
        assert set(named) - {"other"} <= final_reasons

    # the final line: the rate over the streaming pass, which says what it leaves out
    stream_s = summary["phases_s"]["stream"]
    assert summary["stream_images_per_s"] == pytest.approx(processed / stream_s, abs=0.01)
    assert summary["stream_images_per_s"] > summary["images_per_s"]  # wall: start-up and all
    (final,) = [line for line in out.splitlines() if "this run:" in line]
    assert f"{processed:,} inputs, {summary['stream_images_per_s']:.1f} images/s" in final
    assert f"over the {stream_s:.1f} s stream (Ray start-up and the other phases" in final
    assert "start Ray" in final and f"{summary['wall_s']:.1f} s in all" in final
