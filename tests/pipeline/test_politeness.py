"""Cluster-wide per-host politeness: a job's workers together stay within each host's limit."""

import pytest

from curation.synthetic import photo_jpeg
from pipeline.build_humans300m import config_from_args, parser, run
from tests.pipeline.test_build import job_args
from tests.support.httpserver import CrawlServer

pytestmark = [pytest.mark.usefixtures("ray_cluster"), pytest.mark.slow]


def test_connections_per_host_stay_within_the_limit_across_workers(tmp_path):
    # 3 hosts (loopback addresses), each answering after 0.15 s; 8 fetch threads per worker
    # and batches of 4 put both workers' tasks on every host at once
    images = {f"p{i}.jpg": photo_jpeg(200, 150, seed=i) for i in range(12)}
    servers = [CrawlServer(images, host=f"127.0.0.{n}") for n in (1, 2, 3)]
    for server in servers:
        server.lag = 0.15
        server.__enter__()
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(s.url("lag", name) + "\n" for name in images for s in servers))
        args = job_args(urls, tmp_path / "out", "--batch-size", "4", "--fetch-concurrency", "8",
                        "--fetch-per-host-concurrency", "2", "--no-dedup")  # fmt: skip
        summary = run(config_from_args(parser().parse_args(args)))
    finally:
        for server in servers:
            server.__exit__()
    assert summary["counts"]["kept"] == 36
    # the limit was reached on every host (the limiter does not serialise) and never passed
    assert [s.max_in_flight for s in servers] == [2, 2, 2]
