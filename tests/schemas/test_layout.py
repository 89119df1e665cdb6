"""The dedup names schemas.layout gives and recognises: rejection files and plan partitions."""

from __future__ import annotations

from schemas.layout import (
    dedup_rejection_name,
    is_dedup_rejection_file,
    partition_shard,
    plan_partition,
    rejection_file,
)


def test_dedup_rejection_files_are_told_from_the_crawls() -> None:
    for shard in (0, 123, 1_234_567):  # past 10^6 shards the name has 7 digits
        path = rejection_file(dedup_rejection_name(shard))
        assert is_dedup_rejection_file(path.rsplit("/", 1)[1])
    # the crawl's files (run id, task, random suffix) and the plan's malformed-line files
    for name in ("dedup-run-000003-1a2b3c4d", "source-12-malformed-000001-0002", "dedup-12"):
        assert not is_dedup_rejection_file(f"{name}.parquet")
    assert not is_dedup_rejection_file(f"{dedup_rejection_name(1)}.parquet.tmp")


def test_plan_partitions_round_trip() -> None:
    assert [partition_shard(plan_partition(s)) for s in (0, 7, 1_000_000)] == [0, 7, 1_000_000]
    assert partition_shard("shard=") is None and partition_shard("part=3") is None
