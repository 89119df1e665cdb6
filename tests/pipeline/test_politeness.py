"""Cluster-wide per-host politeness: a job's workers together stay within each host's limit."""

import pytest

from curation.synthetic import photo_jpeg
from pipeline.build_humans300m import config_from_args, parser, run
from tests.pipeline.test_build import job_args
from tests.support.httpserver import CrawlServer

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _three_hosts_crawled(tmp_path, per_host: str) -> tuple[dict, list[CrawlServer]]:
    """36 images on 3 hosts (loopback addresses), each answering after 0.15 s; 8 fetch
    threads per worker and batches of 4 put both workers' tasks on every host at once."""
    images = {f"p{i}.jpg": photo_jpeg(200, 150, seed=i) for i in range(12)}
    servers = [CrawlServer(images, host=f"127.0.0.{n}") for n in (1, 2, 3)]
    for server in servers:
        server.lag = 0.15
        server.__enter__()
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(s.url("lag", name) + "\n" for name in images for s in servers))
        args = job_args(urls, tmp_path / "out", "--batch-size", "4", "--fetch-concurrency", "8",
                        "--fetch-per-host-concurrency", per_host, "--no-dedup")  # fmt: skip
        summary = run(config_from_args(parser().parse_args(args)))
    finally:
        for server in servers:
            server.__exit__()
    return summary, servers


def test_a_fixed_local_ray_shares_each_hosts_limit_among_its_cpus(tmp_path, monkeypatch):
    import pipeline.politeness
    from curation.fetch import FetchConfig

    # as on the embedded Ray a job starts: 2 CPUs, fixed
    monkeypatch.setattr(pipeline.politeness, "embedded", lambda: True)
    shared, actors = pipeline.politeness.job_limits(
        FetchConfig(per_host_concurrency=5, per_host_rate=3.0)
    )
    assert actors == () and shared.per_host_concurrency == 2 and shared.per_host_rate == 1.5
    summary, servers = _three_hosts_crawled(tmp_path, "2")  # each worker: 1 per host
    assert summary["counts"]["kept"] == 36
    assert all(1 <= s.max_in_flight <= 2 for s in servers), [s.max_in_flight for s in servers]
    # past the limit in CPUs, or on a cluster (whose CPUs may grow), limiter actors share it
    per_host_1, actors = pipeline.politeness.job_limits(FetchConfig(per_host_concurrency=1))
    assert per_host_1.per_host_concurrency == 1 and len(actors) == 1
    import ray

    ray.kill(actors[0])


@pytest.mark.slow
def test_connections_per_host_stay_within_the_limit_across_workers(tmp_path):
    summary, servers = _three_hosts_crawled(tmp_path, "2")  # limiter actors (not embedded)
    assert summary["counts"]["kept"] == 36
    # the limit was reached on every host (the limiter does not serialise) and never passed
    assert [s.max_in_flight for s in servers] == [2, 2, 2]
