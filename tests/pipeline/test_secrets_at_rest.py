"""Signed URL lists in every format through a job killed with kill -9 and its rerun: where the
secrets are at each point (the private plan under _work/ while the job may still need them,
nowhere once it finished) and that no log line, published file or summary ever held one.

The jobs run as subprocesses with their own Ray (as an operator runs them), so they can be killed.
"""

from urllib.parse import quote

import pytest

from tests.pipeline.test_build import check_dataset, job_args
from tests.support.httpserver import CrawlServer


def _secret_lists(tmp_path, good: CrawlServer) -> tuple[list[str], list[str]]:
    """The same kind of signed row in every list format, secrets in the image URL, page_url,
    caption and extra columns; plus a redirect, a 500, a refused connection and a body that
    quote a secret. Returns (the lists, the secrets)."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.synthetic import photo_jpeg

    secrets = [f"SEC-{i}-q7x9" for i in range(40)]
    fresh = iter(secrets)
    good.images.update({f"g{i}.jpg": photo_jpeg(200, 150, seed=100 + i) for i in range(11)})

    def row(i: int) -> dict:
        if i % 2:  # a plain row beside each signed one
            return {"url": good.url("lag", f"g{i}.jpg"), "page_url": "", "caption": "plain",
                    "mirror": ""}  # fmt: skip
        return {
            "url": good.url("lag", f"g{i}.jpg") + f"?X-Amz-Signature={next(fresh)}",
            "page_url": f"https://u:{next(fresh)}@site.example/p?access_token={next(fresh)}",
            "caption": f"see https://x.example/a.jpg?sig={next(fresh)} now",
            "mirror": f"https://cdn.example/b.jpg?token={next(fresh)}&w=1",
        }

    def delimited(rows: list[dict], sep: str) -> bytes:
        lines = [sep.join(rows[0])] + [sep.join(r.values()) for r in rows]
        return ("\n".join(lines) + "\n").encode()

    paths = []
    for name, (a, b) in {
        "l.csv": (0, 1), "l.tsv": (2, 3), "l.jsonl": (4, 5), "l.parquet": (6, 7), "l.csv.gz": (8, 9)
    }.items():  # fmt: skip
        rows, path = [row(a), row(b)], tmp_path / name
        if name == "l.csv":
            path.write_bytes(delimited(rows, ","))
        elif name == "l.tsv":
            path.write_bytes(delimited(rows, "\t"))
        elif name == "l.jsonl":
            rows[0]["auth"] = {"header": "Bearer x", "u": f"https://a.example/?key={next(fresh)}"}
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif name == "l.parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            path.write_bytes(gzip.compress(delimited(rows, ",")))
        paths.append(str(path))
    redirect = good.url("lag", "g10.jpg") + f"?sig={next(fresh)}"
    lines = [
        good.url("to", quote(redirect, safe="")),  # followed: kept under the listed URL
        good.url("status", "500") + f"?token={next(fresh)}",
        good.base.rsplit(":", 1)[0] + f":1/x.jpg?token={next(fresh)}",  # nothing listens on 1
        good.url("echo", "page.jpg") + f"?access_token={next(fresh)}",  # quotes its URL
    ]
    (tmp_path / "l.txt").write_text("\n".join(lines) + "\n")
    paths.append(str(tmp_path / "l.txt"))
    used = secrets[: secrets.index(next(fresh))]
    return paths, used


@pytest.mark.slow  # a job killed with -9 after its first shard, then its rerun: about a minute
def test_signed_lists_in_every_format_killed_and_rerun_leave_no_secret(tmp_path):
    """Secrets stay in the private plan under _work/ while the job may need them (after a kill
    -9); the finished rerun deletes it, and no published file, no log line, no summary holds a
    secret; every input is accounted for exactly once."""
    from tests.pipeline.test_resume import _kill_when, _start

    output = tmp_path / "out"
    with CrawlServer(host="127.0.0.2") as good:
        good.lag = 0.3
        lists, secrets = _secret_lists(tmp_path, good)
        args = job_args(lists[0], output, *(a for p in lists[1:] for a in ("--input", p)),
                        "--max-shard-samples", "2", "--batch-size", "2", "--no-dedup")  # fmt: skip
        first = _start(args)
        _kill_when(output, first, shards=1)
        logged = first.stderr.read().decode(errors="replace")
        assert not (output / "summary.json").exists()  # it really died mid-run
        plan = list((output / "_work").glob("plan-*/*.parquet"))
        assert plan  # kept for the rerun: the plan holds the full URLs the fetches need
        rerun = _start(args)
        _, err = rerun.communicate(timeout=600)
        logged += err.decode(errors="replace")
        assert rerun.returncode == 0, logged[-3000:]

    rows, rejections = check_dataset(output)
    keys = [r["key"] for r in rows] + [r["key"] for r in rejections]
    assert len(rows) == 11 and len(keys) == len(set(keys)) == 14
    assert sorted(r["reason"] for r in rejections) == [
        "connection_error", "not_an_image", "server_error"
    ]  # fmt: skip
    signed = next(r for r in rows if (r["caption"] or "").startswith("see "))
    assert signed["caption"] == "see https://x.example/a.jpg?sig=REDACTED now"
    assert signed["page_url"] == "https://site.example/p?access_token=REDACTED"
    assert not list((output / "_work").glob("plan-*/*"))  # deleted once all was accounted for
    for secret in secrets:
        assert secret not in logged, secret
    for path in output.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, (secret, path)


def test_a_plan_build_killed_midway_leaves_secrets_only_until_the_rerun(tmp_path, monkeypatch):
    """kill -9 while the plan is being built: its staged rows (full URLs) stay under the
    output's private _work/, never in a temporary folder; the rerun removes them before building
    again and its own once done."""
    import multiprocessing
    import os
    import signal
    import tempfile

    import pipeline.plan as plan_module
    from curation.sources import SourceConfig
    from runtime.storage import locate

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"http://a.example/{i}.jpg?sig=SECRET-{i}\n" for i in range(20)))
    dataset = locate(str(tmp_path / "out"))
    config = SourceConfig(inputs=(str(urls),))
    real = plan_module.iter_part

    def dies_after_one_batch(part, source_config, columns):
        for batch in real(part, source_config, columns):
            yield batch
            os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(plan_module, "iter_part", dies_after_one_batch)
    killed = multiprocessing.get_context("fork").Process(
        target=plan_module.load_or_build_plan, args=(dataset, config, 4)
    )
    killed.start()
    killed.join(60)
    assert killed.exitcode == -signal.SIGKILL
    stage = list((tmp_path / "out" / "_work").glob("plan-*/stage/*"))
    assert stage  # what the killed build left, under _work/ only
    assert not list(scratch.iterdir())
    monkeypatch.setattr(plan_module, "iter_part", real)
    plan = plan_module.load_or_build_plan(dataset, config, 4)
    assert (plan.rows, plan.secrets) == (20, 20)
    assert not any(p.exists() for p in stage) and not list(scratch.iterdir())
    assert plan_module.forget_secrets(dataset, plan)
    assert not [
        p for p in (tmp_path / "out").rglob("*") if p.is_file() and b"SECRET-" in p.read_bytes()
    ]
