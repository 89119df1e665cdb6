"""run_dedup end to end on a real local Ray: decisions, shards vs manifests, determinism (driver
path vs Ray path, 1 vs 2 partitions, 1 vs 2 encoder actors), idempotent rerun, a crash between
a shard rewrite's commit steps, --dedup-against (both paths), and the semantic pass
with a tiny TorchScript encoder.

The two paths call the same rules (curation.dedup; each checked on its own in
tests/curation/test_dedup_rules.py); the tests here compare their executors end to end.

The Ray path (pipeline.dedup_ray) is forced with ``ray_above=0``; small partitions, several
read blocks and near tasks make it split what the driver path does in one piece."""

from __future__ import annotations

import dataclasses
import io
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.dedup.apply import STEPS
from curation.dedup.config import DedupConfig
from curation.dedup.previous import INDEX_COLUMNS
from curation.dedup.signatures import phash64, pixel_hash
from curation.manifest import rejections_dataset, samples_dataset
from curation.writer import iter_shard, write_shard
from pipeline import dedup as dedup_pipeline
from pipeline import dedup_ray
from pipeline.dedup import run_dedup
from runtime.storage import list_files, locate
from schemas import sample_key
from schemas.layout import MANIFESTS_DIR, REJECTIONS_DIR
from tests.curation.test_dedup_semantic import IMAGE_SIZE, THRESHOLD, tiny_encoder
from tests.curation.test_dedup_signatures import encode, scene


def _row(name: str, data: bytes, fmt: str) -> dict:
    import hashlib

    image = Image.open(io.BytesIO(data)).convert("RGB")
    return dict(
        key=sample_key(name),
        source_uri=name,
        sha256=hashlib.sha256(data).hexdigest(),
        num_bytes=len(data),
        format=fmt,
        width=image.width,
        height=image.height,
        fetched_at=datetime(2026, 1, 1, tzinfo=UTC),
        pixel_hash=pixel_hash(image),
        phash=phash64(image),
    )


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def build(path: Path, seeds: range, prefix: str = "src") -> dict[str, str]:
    """Three shards: originals plus planted copies; returns {name: expected canonical name}."""
    samples, expect = [], {}
    for seed in seeds:
        image = scene(seed)
        big = image.resize((480, 360))
        original = _bytes(image, "JPEG", quality=90)
        name = f"{prefix}/{seed}"
        samples.append((f"{name}/orig.jpg", original, "JPEG"))
        samples.append((f"{name}/copy.jpg", original, "JPEG"))  # exact
        samples.append((f"{name}/png", _bytes(encode(image, "JPEG", quality=90), "PNG"), "PNG"))
        samples.append((f"{name}/q30", _bytes(image, "JPEG", quality=30), "JPEG"))
        samples.append((f"{name}/big", _bytes(big, "JPEG", quality=85), "JPEG"))  # canonical
        samples.append((f"{name}/shifted", _bytes(scene(seed, shift=0.15), "JPEG"), "JPEG"))
        for kind in ("orig.jpg", "copy.jpg", "png", "q30"):
            expect[f"{name}/{kind}"] = f"{name}/big"
    dataset = locate(str(path))
    for shard in range(3):
        part = samples[shard::3]
        write_shard(dataset, shard, [_row(n, d, f) for n, d, f in part], [d for _, d, _ in part])
    return expect


def snapshot(path: Path) -> dict:
    """Everything a rerun must reproduce: kept rows, their clusters, and dedup rejections."""
    kept = samples_dataset(str(path)).to_table().sort_by("key").to_pydict()
    rejected = rejections_dataset(str(path)).to_table().sort_by("key").to_pydict()
    return dict(
        kept=list(zip(kept["key"], kept["dup_cluster"], kept["dup_cluster_size"], strict=True)),
        rejected=list(
            zip(rejected["key"], rejected["reason"], rejected["duplicate_of"], strict=True)
        ),
    )


def check_shards_match_manifests(path: Path) -> None:
    dataset = locate(str(path))
    for manifest in list_files(dataset.join(MANIFESTS_DIR), ".parquet"):
        shard = int(Path(manifest.path).stem)
        rows = pq.read_table(manifest.path).to_pylist()
        tar = [s["__key__"] for s in iter_shard(dataset.join("shards", f"{shard:06d}.tar"))]
        assert tar == [r["key"] for r in rows]


# The Ray path with 2 partitions of the 36 samples, 4 read blocks, 3 near-search tasks; and in
# one piece (1 partition, 1 block, 1 task): both must decide what the driver path decides.
RAY_SPLIT = DedupConfig(ray_above=0, rows_per_partition=18, read_blocks=4, near_tasks=3)
RAY_WHOLE = DedupConfig(ray_above=0, rows_per_partition=1000, read_blocks=1, near_tasks=1)


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    expect = build(tmp_path / "ds", range(6))
    return tmp_path / "ds", expect


def test_run_dedup_decisions_and_clusters(ray_cluster, built, tmp_path: Path) -> None:
    path, expect = built
    shutil.copytree(path, tmp_path / "other")
    counts = run_dedup(str(path), DedupConfig(read_blocks=1, near_tasks=1))
    print(f"\ndedup counts: {counts}")
    snap = snapshot(path)
    by_key = {k: (r, d) for k, r, d in snap["rejected"]}
    assert len(by_key) == len(expect)
    for name, canonical in expect.items():
        assert by_key[sample_key(name)][1] == sample_key(canonical), name
    assert counts["duplicate_exact"] == 6 and counts["duplicate_pixels"] == 6
    kept = {k: (c, s) for k, c, s in snap["kept"]}
    for seed in range(6):
        assert kept[sample_key(f"src/{seed}/big")] == (sample_key(f"src/{seed}/big"), 5)
        assert sample_key(f"src/{seed}/shifted") in kept  # a look-alike survives
    check_shards_match_manifests(path)
    # determinism: the Ray path (groupby, sort and joins in 2 partitions, rewrites on Ray
    # tasks) decides what the driver path decided, and leaves no plan behind
    assert run_dedup(str(tmp_path / "other"), RAY_SPLIT) == counts
    assert snapshot(tmp_path / "other") == snap
    assert not (tmp_path / "other" / "_work" / "dedup").exists()
    # idempotent rerun
    assert run_dedup(str(path), DedupConfig()) == {}
    assert snapshot(path) == snap


# The Ray path costs minutes on a loaded 2-CPU machine (each Ray Data groupby, sort or join
# starts its own workers): the default run compares it on every pass but the semantic one
# (above and test_against_previous_release; the semantic plan in test_semantic_plan_on_ray),
# these run with -m slow, with room beyond the default 600 s test timeout.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ray_path_in_one_piece_decides_the_same(ray_cluster, built, tmp_path: Path) -> None:
    """1 partition, 1 block, 1 task vs the driver path (the test above compares 2 partitions)."""
    path, _ = built
    shutil.copytree(path, tmp_path / "other")
    counts = run_dedup(str(path), DedupConfig())
    assert run_dedup(str(tmp_path / "other"), RAY_WHOLE) == counts
    assert snapshot(tmp_path / "other") == snapshot(path)


def readers_view(path: Path, scratch: Path) -> dict[str, set[str]]:
    """The kept and rejected keys as readers see them: DuckDB over the files as an analyst
    globs them, training's shard reader, curation.subset; each must agree with the others."""
    import duckdb

    from curation.subset import SubsetConfig, write_subset
    from training.data import PretrainDataConfig
    from training.data.loader import PretrainData
    from training.data.shards import list_shards

    con = duckdb.connect()
    globbed = {
        folder: {k for (k,) in con.sql(f"SELECT key FROM '{path}/{folder}/*.parquet'").fetchall()}
        if list((path / folder).glob("*.parquet"))
        else set()
        for folder in ("manifests", "rejections")
    }
    kept, rejected = globbed["manifests"], globbed["rejections"]
    config = PretrainDataConfig(dataset=str(path), image_size=(16, 16), shuffle_buffer=1)
    data = PretrainData(config, list_shards(str(path)), rank=0, world_size=1)
    trained = [key for shard in data.shards for key, _ in data._read(shard, None, Counter())]
    assert sorted(trained) == sorted(kept)  # each once, none the manifests dropped
    shutil.rmtree(scratch, ignore_errors=True)
    write_subset(SubsetConfig(dataset=str(path), where="true", output=str(scratch)))
    assert set(samples_dataset(str(scratch)).to_table()["key"].to_pylist()) == kept
    return {"kept": kept, "rejected": rejected}


@pytest.mark.parametrize("step", STEPS)
def test_crash_inside_a_shard_rewrite(ray_cluster, built, tmp_path: Path, step: str) -> None:
    """A crash at each step of the rewrite commit: readers see every shard old or new (the
    manifest is the commit point); the rerun publishes what was decided and ends as a clean
    run does."""
    path, _ = built
    old = readers_view(path, tmp_path / "subset")
    shutil.copytree(path, tmp_path / "clean")
    run_dedup(str(tmp_path / "clean"), DedupConfig())
    new = readers_view(tmp_path / "clean", tmp_path / "subset")
    assert new != old
    plan = dedup_pipeline.plan_dedup(str(path), DedupConfig())
    dedup_pipeline.apply_plan(locate(str(path)), plan, stop_after=step)
    seen = readers_view(path, tmp_path / "subset")
    if step in ("stage", "ready"):
        assert seen == old  # nothing published yet
    else:
        assert seen["kept"] == new["kept"]
    if step != "manifest.parquet":  # two renames apart: a crash between them is the one mix
        assert seen["rejected"] == (old if step in ("stage", "ready") else new)["rejected"]
    if step == "shard.tar":
        check_shards_match_manifests(path)
    run_dedup(str(path), DedupConfig())  # the rerun
    assert snapshot(path) == snapshot(tmp_path / "clean")
    check_shards_match_manifests(path)
    assert not list((path / "_work" / "dedup_commit").iterdir())


def test_job_rerun_publishes_a_decided_rewrite_before_reading(built) -> None:
    """A rewrite stopped after its manifest: its dropped keys are in no published file until
    the rerun's first step publishes the staged rejections (before finished keys are read,
    so they are not fetched again)."""
    from pipeline.resume import remove_leftovers

    def published_keys() -> set[str]:  # what resume counts as finished: kept or rejected
        return {
            key
            for folder in (MANIFESTS_DIR, REJECTIONS_DIR)
            for file in (path / folder).glob("*.parquet")
            for key in pq.read_table(file, columns=["key"])["key"].to_pylist()
        }

    path, expect = built
    dataset = locate(str(path))
    plan = dedup_pipeline.plan_dedup(str(path), DedupConfig())
    dedup_pipeline.apply_plan(dataset, plan, stop_after="manifest.parquet")
    dropped = {sample_key(name) for name in expect}
    assert not dropped & published_keys()
    remove_leftovers(dataset)
    assert dropped <= published_keys()
    check_shards_match_manifests(path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_crash_inside_a_shard_rewrite_on_ray(ray_cluster, built, tmp_path: Path) -> None:
    path, _ = built
    shutil.copytree(path, tmp_path / "clean")
    run_dedup(str(tmp_path / "clean"), DedupConfig())
    dataset = locate(str(path))
    plan = dedup_ray.plan_on_ray(dataset, RAY_SPLIT, rows=36)
    dedup_ray.apply_on_ray(plan, stop_after="manifest.parquet")
    dedup_ray.apply_on_ray(plan, shards={1})
    run_dedup(str(path), RAY_SPLIT)  # the rerun publishes the staged rest, then plans again
    assert snapshot(path) == snapshot(tmp_path / "clean")
    check_shards_match_manifests(path)


def test_against_previous_release(ray_cluster, tmp_path: Path) -> None:
    """--dedup-against on the driver path, then on the Ray path (hash groupbys and compact
    pHash arrays, no driver dict, 2 partitions): the same decisions, and its index (from the
    rewritten manifests) holds the same rows."""
    build(tmp_path / "v1", range(3), prefix="v1")
    run_dedup(str(tmp_path / "v1"), DedupConfig())
    build(tmp_path / "v2", range(2, 5), prefix="v2")  # seed 2 is also in v1, other URIs
    shutil.copytree(tmp_path / "v2", tmp_path / "v2-ray")
    against = (str(tmp_path / "v1"),)
    counts = run_dedup(str(tmp_path / "v2"), DedupConfig(against=against))
    print(f"\nagainst v1: {counts}")
    rejected = {k: (r, d) for k, r, d in snapshot(tmp_path / "v2")["rejected"]}
    for kind in ("orig.jpg", "copy.jpg", "png", "q30", "big", "shifted"):
        canonical = "shifted" if kind == "shifted" else "big"
        assert rejected[sample_key(f"v2/2/{kind}")] == (
            "duplicate_previous_release",
            sample_key(f"v1/2/{canonical}"),
        ), kind
    assert counts["duplicate_previous_release"] == 6
    kept = {k for k, _, _ in snapshot(tmp_path / "v2")["kept"]}
    assert kept == {sample_key(f"v2/{s}/{k}") for s in (3, 4) for k in ("big", "shifted")}
    on_ray = dataclasses.replace(RAY_SPLIT, against=against)
    assert run_dedup(str(tmp_path / "v2-ray"), on_ray) == counts
    assert snapshot(tmp_path / "v2-ray") == snapshot(tmp_path / "v2")
    assert index_rows(tmp_path / "v2-ray") == index_rows(tmp_path / "v2")


def index_rows(path: Path) -> list[dict]:
    table = pq.read_table(path / "dedup_index")
    return table.select(INDEX_COLUMNS).sort_by("key").to_pylist()


def semantic_only(tmp_path: Path, **kw) -> DedupConfig:
    return DedupConfig(
        exact=False,
        near=False,
        pixels=False,
        semantic=True,
        semantic_model=tiny_encoder(tmp_path / "encoder.pt"),
        semantic_threshold=THRESHOLD,
        semantic_image_size=IMAGE_SIZE,
        semantic_partition_size=8,  # 24 samples: 3 k-means partitions
        **kw,
    )


def test_semantic_dedup(ray_cluster, tmp_path: Path) -> None:
    """The embedding pass alone finds every planted family (byte copies, PNG, JPEG q30, 1.5x
    resize) and keeps the shifted look-alikes; 1 and 2 actors decide the same."""
    expect = build(tmp_path / "ds", range(4))
    shutil.copytree(tmp_path / "ds", tmp_path / "other")
    counts = run_dedup(str(tmp_path / "ds"), semantic_only(tmp_path, semantic_actors=1))
    print(f"\nsemantic counts: {counts}")
    snap = snapshot(tmp_path / "ds")
    rejected = {k: (r, d) for k, r, d in snap["rejected"]}
    assert rejected == {
        sample_key(n): ("duplicate_semantic", sample_key(c)) for n, c in expect.items()
    }
    kept = {k: (c, s) for k, c, s in snap["kept"]}
    for seed in range(4):
        assert kept[sample_key(f"src/{seed}/big")] == (sample_key(f"src/{seed}/big"), 5)
        assert sample_key(f"src/{seed}/shifted") in kept
    check_shards_match_manifests(tmp_path / "ds")
    two = semantic_only(tmp_path, semantic_actors=2, semantic_chunk=2)
    assert run_dedup(str(tmp_path / "other"), two) == counts
    assert snapshot(tmp_path / "other") == snap


def rejection_details(path: Path) -> list[tuple[str, str]]:
    table = rejections_dataset(str(path)).to_table(columns=["key", "detail"]).sort_by("key")
    return list(zip(table["key"].to_pylist(), table["detail"].to_pylist(), strict=True))


def planned_on_ray(path: Path, config: DedupConfig) -> dict[str, tuple]:
    """The Ray path's semantic drops, planned only (its Parquet plan read back, then cleared)."""
    dataset = locate(str(path))
    plan = dedup_ray.plan_on_ray(dataset, config, rows=24)
    table = pq.read_table(plan.folder("semantic").path, columns=DROP_FIELDS)
    dedup_ray._clear(plan.work)
    return {row["key"]: tuple(row.values()) for row in table.to_pylist()}


DROP_FIELDS = ["key", "source_uri", "reason", "duplicate_of", "detail"]


def test_semantic_plan_on_ray(ray_cluster, tmp_path: Path, caplog) -> None:
    """The Ray path's semantic pass (per-shard tasks, k-means on a hash sample that here holds
    every survivor, a groupby on the partition in 2 shuffle partitions) plans exactly the
    driver path's drops, cosines included; a rerun embeds nothing. Plans only: the shard
    rewrite is the other passes' (compared end to end under -m slow, below)."""
    import logging

    caplog.set_level(logging.INFO, logger="pipeline")
    expect = build(tmp_path / "ds", range(4))
    driver = semantic_only(tmp_path)  # one model file: each save has other bytes
    on_ray = dataclasses.replace(driver, ray_above=0, rows_per_partition=12)
    drops = planned_on_ray(tmp_path / "ds", on_ray)
    assert "0 from the cache, 24 embedded" in caplog.text
    assert "3 partitions from 24 of 24 embeddings" in caplog.text
    assert {k: d[2:4] for k, d in drops.items()} == {
        sample_key(n): ("duplicate_semantic", sample_key(c)) for n, c in expect.items()
    }
    caplog.clear()
    plan = dedup_pipeline.plan_dedup(str(tmp_path / "ds"), driver)
    assert "24 from the cache, 0 embedded" in caplog.text  # the Ray path's cache, shared
    ((name, planned, _),) = plan.passes
    assert name == "semantic"
    assert {r["key"]: tuple(r[f] for f in DROP_FIELDS) for r in planned.to_pylist()} == drops
    caplog.clear()
    assert planned_on_ray(tmp_path / "ds", on_ray) == drops
    assert "24 from the cache, 0 embedded" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_semantic_dedup_on_ray(ray_cluster, tmp_path: Path) -> None:
    """End to end, the Ray path in one shuffle partition with 2 actors against the driver
    path with 1: the same rewritten dataset and cosines; the rerun drops nothing more."""
    build(tmp_path / "ds", range(4))
    shutil.copytree(tmp_path / "ds", tmp_path / "ray")
    driver = semantic_only(tmp_path, write_index=False)
    counts = run_dedup(str(tmp_path / "ds"), driver)
    on_ray = dataclasses.replace(driver, ray_above=0, rows_per_partition=1000, semantic_actors=2)
    assert run_dedup(str(tmp_path / "ray"), on_ray) == counts
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "ds")
    assert rejection_details(tmp_path / "ray") == rejection_details(tmp_path / "ds")
    assert run_dedup(str(tmp_path / "ray"), on_ray) == {}
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "ds")
