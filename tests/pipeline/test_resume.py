"""Kill -9 the job at a random moment, run it again: the result is as if it had never died."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest

from tests.pipeline.test_build import check_dataset, job_args
from tests.support.corpus import build_corpus, check_outcomes
from tests.support.httpserver import CrawlServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
    env["PYTHONPATH"] = ROOT
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.build_humans300m", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: kill -9 takes the local Ray with it
    )


def _kill_when(output, proc: subprocess.Popen, shards: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((output / "manifests").glob("*.parquet"))) >= shards:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    pytest.fail(f"job ended or stalled before {shards} shards: {proc.stderr.read()[-2000:]!r}")


def test_killed_job_completes_on_rerun_without_loss_or_duplicates(tmp_path):
    with CrawlServer() as server:
        server.lag = 0.3
        corpus = build_corpus(server, tmp_path, good=30, route="lag")
        output = tmp_path / "out"
        args = job_args(corpus.url_list, output, "--max-shard-samples", "3", "--batch-size", "4")

        _kill_when(output, _start(args), shards=2)
        assert not (output / "summary.json").exists()  # it really died mid-run
        published = {
            urlparse(uri).path
            for manifest in (output / "manifests").glob("*.parquet")
            for uri in pq.read_table(manifest, columns=["source_uri"])["source_uri"].to_pylist()
        }
        hits_before = Counter(server.hits)

        rerun = _start(args)
        _, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err.decode()[-3000:]
        # the rerun redid little: what was published before the kill was not fetched again
        assert published and all(server.hits[path] == hits_before[path] for path in published)

    rows, rejections = check_dataset(output)
    check_outcomes(corpus, rows, rejections)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["counts"]["inputs"] == len(corpus.inputs) + corpus.malformed_rows


@pytest.mark.slow
def test_job_killed_during_a_distributed_plan_completes_on_rerun(tmp_path):
    with CrawlServer() as server:
        corpus = build_corpus(server, tmp_path, good=7)  # g6 is the URL listed twice
        output = tmp_path / "out"
        args = job_args(corpus.url_list, output, "--plan-ray-above", "0")  # the plan on Ray
        job = _start(args)
        deadline = time.monotonic() + 300
        while job.poll() is None and time.monotonic() < deadline:
            # a part read and staged, the plan not done: its groupby is still to come or running
            staged = list(output.glob("_work/plan-*/stage/*.parquet"))
            if staged and not list(output.glob("_work/plan-*/DONE.json")):
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"the plan ended before it was seen staged: {job.stderr.read()[-2000:]!r}")
        assert (
            not list(output.glob("_work/plan-*/DONE.json")) and not (output / "manifests").exists()
        )

        rerun = _start(args)
        _, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, err.decode()[-3000:]

    rows, rejections = check_dataset(output)
    check_outcomes(corpus, rows, rejections)  # one malformed row, one duplicate_input row
    summary = json.loads((output / "summary.json").read_text())
    assert summary["counts"]["inputs"] == len(corpus.inputs) + corpus.malformed_rows
    assert not list(output.glob("_work/plan-*/stage"))
