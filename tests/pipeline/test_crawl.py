"""The crawl tasks of a job without filter stages (pipeline.crawl): their slices of the plan,
their fetch loop, and how a failed task ends the job."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.fetch import FetchConfig
from curation.record import OK
from curation.validate import ValidateConfig
from pipeline.crawl import StreamFailed, crawl_rows, rows_per_task, task_slices
from pipeline.resume import unfinished_rows
from pipeline.stages import StageConfig
from tests.support.httpserver import CrawlServer


def _jpeg(seed: int) -> bytes:
    image = Image.new("RGB", (160, 120), (seed * 40 % 256, 90, 200 - seed))
    out = io.BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


def test_small_jobs_are_spread_over_every_cpu_and_large_ones_cut_at_a_shard():
    assert rows_per_task(3000, cpus=2, max_samples=10_000, batch_size=64) == 375
    assert rows_per_task(100, cpus=2, max_samples=10_000, batch_size=64) == 64  # a batch at least
    assert rows_per_task(10**9, cpus=512, max_samples=10_000, batch_size=64) == 10_000
    assert rows_per_task(50, cpus=2, max_samples=7, batch_size=8) == 7  # the shard cap wins
    assert rows_per_task(0, cpus=2, max_samples=7, batch_size=8) == 7


def test_tasks_cut_large_partitions_and_join_small_ones(tmp_path):
    from runtime.storage import locate

    files = []
    for p, rows in enumerate([5, 3, 10, 0, 2]):
        path = tmp_path / f"inputs-{p:04d}.parquet"
        pq.write_table(pa.table({"key": [f"{p}-{i}" for i in range(rows)]}), path)
        files.append(locate(str(path)))
    tasks = [[(uri.rsplit("-", 1)[1][:4], start, n) for uri, start, n in task]
             for task in task_slices(files, 4)]  # fmt: skip
    assert tasks == [
        [("0000", 0, 4)],
        [("0000", 4, 1), ("0001", 0, 3)],
        [("0002", 0, 4)],
        [("0002", 4, 4)],
        [("0002", 8, 2), ("0004", 0, 2)],
    ]


def test_a_slice_reads_its_rows_less_the_finished_ones(tmp_path):
    keys = [f"k{i:03d}" for i in range(23)]
    plan = tmp_path / "inputs-0003.parquet"
    table = pa.table({"key": keys, "source_uri": [f"http://h/{k}" for k in keys]})
    pq.write_table(table, plan, row_group_size=5)
    finished = tmp_path / "finished"
    finished.mkdir()
    pq.write_table(
        pa.table({"key": ["k004", "k005", "k021", "k999"]}), finished / "finished-0003.parquet"
    )

    def slice_keys(start, length, done=None):
        return unfinished_rows(str(plan), done, start, length)["key"].to_pylist()

    assert slice_keys(3, 9) == keys[3:12]  # across three row groups
    assert slice_keys(20, 10) == keys[20:]  # the last slice is short
    assert slice_keys(30, 5) == []
    assert slice_keys(3, 9, str(finished)) == ["k003", *keys[6:12]]
    assert slice_keys(20, 10, str(finished)) == ["k020", "k022"]
    # slices cover the partition once: together they are its unfinished rows
    together = [k for start in range(0, 23, 6) for k in slice_keys(start, 6, str(finished))]
    assert together == [k for k in keys if k not in {"k004", "k005", "k021"}]


class _Counter:
    """A ProgressCounter's ``add.remote`` as a plain call."""

    def __init__(self):
        self.kept, self.rejected, self.calls = 0, {}, 0
        self.add = self

    def remote(self, kept, rejected):
        self.calls += 1
        self.kept += kept
        for reason, n in rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n


class _Writer:
    def __init__(self):
        self.rows = []

    def add(self, row):
        self.rows.append(row)


def _stage(counter, concurrency=4):
    return StageConfig(
        fetch=FetchConfig(allow_private_addresses=True, concurrency=concurrency, retries=0),
        validate=ValidateConfig(min_side=32),
        det_size=0,
        detector_identity=json.dumps({"model": "none"}),
        progress=counter,
    )


def test_every_row_is_decided_once_and_counted():
    images = {f"{i}.jpg": _jpeg(i) for i in range(30)}
    with CrawlServer(images) as server:
        rows = [
            {"key": f"k{i:02d}", "source_uri": server.url("img", f"{i}.jpg"), "caption": f"c{i}"}
            for i in range(30)
        ]
        rows += [{"key": "missing", "source_uri": server.url("status", "404")}]
        rows += [{"key": "html", "source_uri": server.url("html", "x")}]
        counter, writer = _Counter(), _Writer()
        crawl_rows(rows, _stage(counter), writer, batch_size=8)
    decided = {row["key"]: row for row in writer.rows}
    assert len(writer.rows) == len(decided) == 32
    kept = [row for row in writer.rows if row["status"] == OK]
    assert len(kept) == 30 and all(
        row["image"] == images[row["source_uri"].rsplit("/", 1)[1]] for row in kept
    )
    assert decided["k07"]["caption"] == "c7" and decided["k07"]["width"] == 160
    assert decided["missing"]["reason"] == "http_error"
    assert decided["html"]["status"] != OK
    assert counter.kept == 30 and sum(counter.rejected.values()) == 2
    assert counter.calls >= 32 // 8  # reported as it went, not once at the end


def test_a_failure_in_a_fetch_thread_ends_the_loop_with_that_error():
    with CrawlServer({"a.jpg": _jpeg(1)}) as server:
        rows = [{"key": f"k{i}", "source_uri": server.url("img", "a.jpg")} for i in range(10)]
        rows[5] = {"source_uri": server.url("img", "a.jpg")}  # no key: a bug's KeyError
        with pytest.raises(KeyError):
            crawl_rows(rows, _stage(_Counter(), concurrency=2), _Writer(), batch_size=4)


@pytest.mark.usefixtures("ray_cluster")
def test_a_failed_task_lets_the_others_publish_and_ends_in_one_line(tmp_path):
    import ray

    from pipeline.crawl import crawl
    from pipeline.plan import Plan
    from pipeline.progress import ProgressCounter
    from pipeline.resume import Finished
    from pipeline.sink import Output
    from runtime.storage import locate

    plan_folder = tmp_path / "plan"
    plan_folder.mkdir()
    with CrawlServer({f"{i}.jpg": _jpeg(i) for i in range(8)}) as server:
        for p in range(2):  # two partitions of 4 rows: a task each at 4 rows a task
            keys = [f"p{p}k{i}" for i in range(4)]
            uris = [server.url("img", f"{4 * p + i}.jpg") for i in range(4)]
            table = pa.table({"key": keys, "source_uri": uris})
            pq.write_table(table, plan_folder / f"inputs-{p:04d}.parquet")
        finished = tmp_path / "finished"
        finished.mkdir()
        (finished / "finished-0001.parquet").write_bytes(b"not parquet")  # partition 1 fails
        files = [locate(str(plan_folder / f"inputs-{p:04d}.parquet")) for p in range(2)]
        plan = Plan("test", files, rows=8, malformed=0, duplicates=0, partitions=2)
        counter = ProgressCounter.remote(0)
        output = Output(str(tmp_path / "out"), max_samples=100, max_bytes=1 << 30, run_id="r")
        try:
            with pytest.raises(StreamFailed) as failure:
                crawl(plan, Finished(locate(str(finished)), 1), 8, _stage(counter), output, 4)
        finally:
            ray.kill(counter)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("1 crawl task(s) failed (first: ")
    assert "run the same command again" in message
    published = pq.read_table(tmp_path / "out" / "manifests").column("key").to_pylist()
    assert sorted(published) == ["p0k0", "p0k1", "p0k2", "p0k3"]  # the other task's work is kept
