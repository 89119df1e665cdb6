"""The curation job on a Ray cluster of several nodes on this machine, one worker node killed
mid-crawl: the job (or its rerun) ends with every input accounted for exactly once."""

from __future__ import annotations

import json
import os
import time

import pytest

from runtime.ray_env import add_to_pythonpath
from tests.pipeline.test_build import check_dataset, job_args
from tests.pipeline.test_resume import ROOT, _start
from tests.support.corpus import build_corpus, check_outcomes
from tests.support.httpserver import CrawlServer


def _published(output) -> int:
    return len(list((output / "manifests").glob("*.parquet")))


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_worker_node_killed_mid_crawl(tmp_path):
    from ray.cluster_utils import Cluster

    add_to_pythonpath(ROOT)  # the nodes' workers import the project from this checkout
    # a head that runs no tasks and two worker nodes with resources of their own: the
    # crawl's tasks spread over the workers (Ray Data's SPREAD), the driver is a client
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    workers = [cluster.add_node(num_cpus=2, resources={f"worker{i}": 1}) for i in range(2)]
    cluster.wait_for_nodes()
    started = time.monotonic()
    try:
        with CrawlServer() as server:
            server.lag = 0.3
            corpus = build_corpus(server, tmp_path, good=40, route="lag")
            output = tmp_path / "out"
            args = job_args(corpus.url_list, output, "--max-shard-samples", "3",
                            "--batch-size", "4", "--ray-address", cluster.address)  # fmt: skip
            first = _start(args)
            deadline = time.monotonic() + 900
            while _published(output) < 1 and first.poll() is None:
                assert time.monotonic() < deadline, "no shard published in 900 s"
                time.sleep(0.1)
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            killed_at = _published(output)
            cluster.remove_node(workers[0], allow_graceful=False)  # kill -9 of its raylet & co
            _, err = first.communicate(timeout=1200)
            print(f"\nfirst run: exit {first.returncode} after the kill at {killed_at} shards")
            if first.returncode != 0 or not (output / "summary.json").exists():
                rerun = _start(args)
                _, err = rerun.communicate(timeout=1200)
                assert rerun.returncode == 0, err.decode()[-3000:]
                print("rerun completed")
        rows, rejections = check_dataset(output)
        check_outcomes(corpus, rows, rejections)
        summary = json.loads((output / "summary.json").read_text())
        assert summary["counts"]["inputs"] == len(corpus.inputs) + corpus.malformed_rows
        print(f"multi-node run with a killed node: {time.monotonic() - started:.0f} s, "
              f"load average {os.getloadavg()}")  # fmt: skip
    finally:
        cluster.shutdown()
