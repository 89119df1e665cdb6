"""Bad inputs to the curation commands (query, report, subset, export): one ``error:`` line on
stderr, exit code 2, no traceback, nothing written; old flag spellings still work with one
``warning:`` line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

from curation import export, query, report, subset
from tests.conftest import ROOT
from tests.support.datasets import build_dataset

COMMANDS = {"query": query.main, "report": report.main, "subset": subset.main,
            "export": export.main}  # fmt: skip


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    built = build_dataset(str(root / "ds"), num_samples=12, num_rejections=4)
    (root / "empty").mkdir()
    (root / "corrupt" / "manifests").mkdir(parents=True)
    (root / "corrupt" / "manifests" / "000000.parquet").write_bytes(b"not parquet")
    files = {
        "list.yaml": "- dataset\n",
        "syntax.yaml": "dataset: [\n",
        "unknown.yaml": "dataset: x\nwhere: 'true'\noutput: y\ncolour: red\n",
        "string_bool.yaml": "overwrite: 'false'\n",
        "section.yaml": "subset:\n  where: 'true'\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return {"ds": built.uri, "root": str(root)}


def _run(command: str, argv: list[str], paths: dict[str, str]) -> int:
    argv = [a.format(**paths) for a in argv]
    try:
        return COMMANDS[command](argv)
    except SystemExit as exc:  # argparse's usage errors (Parser.error: one line, exit 2)
        return int(exc.code)


CASES = {
    "two statements": ("query", ["SELECT 1; SELECT 2", "--dataset", "{ds}"],
                       "one SQL statement only, got 2"),
    "no statement": ("query", [" ; ", "--dataset", "{ds}"], "no SQL statement given"),
    "bad SQL": ("query", ["SELEC 1", "--dataset", "{ds}"], "syntax error"),
    "unknown column": ("query", ["SELECT nope FROM samples", "--dataset", "{ds}"], "nope"),
    "no SQL argument": ("query", ["--dataset", "{ds}"], "missing SQL: required"),
    "no --dataset": ("query", ["SELECT 1"], "missing --dataset: required"),
    "empty --dataset": ("query", ["SELECT 1", "--dataset", ""], "an empty path"),
    "report: empty --output": ("report", ["--dataset", "{ds}", "--output", " "], "an empty path"),
    "report: bucketless --output": ("report", ["--dataset", "{ds}", "--output", "s3://"],
                                    "an s3:// URI needs a bucket"),
    "subset: empty --output": ("subset", ["--dataset", "{ds}", "--where", "true", "--output",
                                          ""], "an empty path"),
    "export: empty --output": ("export", ["--dataset", "{ds}", "--output", ""], "an empty path"),
    "missing dataset": ("query", ["SELECT 1", "--dataset", "{root}/absent"], "no such dataset"),
    "empty folder": ("query", ["SELECT 1", "--dataset", "{root}/empty"], "not a dataset"),
    "unreadable manifest": ("query", ["SELECT 1", "--dataset", "{root}/corrupt"],
                            "000000.parquet: not a readable Parquet manifest"),
    "csv without a file": ("query", ["SELECT 1", "--dataset", "{ds}", "--format", "csv"],
                           "--format csv needs --output FILE"),
    "unknown format": ("query", ["SELECT 1", "--dataset", "{ds}", "--format", "xml"],
                       "--format: expected one of table, csv, parquet, json"),
    "report: missing dataset": ("report", ["--dataset", "{root}/absent", "--output",
                                           "{root}/r"], "no such dataset"),
    "report: no --output": ("report", ["--dataset", "{ds}"], "missing --output"),
    "where that does not parse": ("subset", ["--dataset", "{ds}", "--where", "num_persons >",
                                             "--output", "{root}/s"], "syntax error"),
    "where with an unknown column": ("subset", ["--dataset", "{ds}", "--where", "num_people > 1",
                                                "--output", "{root}/s"], "num_people"),
    "where that is a second statement": ("subset", ["--dataset", "{ds}", "--where",
                                                    "true); DROP VIEW samples; SELECT (1",
                                                    "--output", "{root}/s"], "one SQL statement"),
    "no --where": ("subset", ["--dataset", "{ds}", "--output", "{root}/s"], "missing --where"),
    "empty --where": ("subset", ["--dataset", "{ds}", "--where", " ", "--output", "{root}/s"],
                      "the predicate is empty"),
    "zero samples per shard": ("subset", ["--dataset", "{ds}", "--where", "true", "--output",
                                          "{root}/s", "--max-shard-samples", "0"],
                               "--max-shard-samples must be at least 1"),
    "config: YAML syntax": ("subset", ["--config", "{root}/syntax.yaml"], "not valid YAML"),
    "config: a list": ("subset", ["--config", "{root}/list.yaml"],
                       "expected a mapping, got ['dataset'] (a list)"),
    "config: unknown key": ("subset", ["--config", "{root}/unknown.yaml"],
                            "config file: unknown keys ['colour']"),
    "config: a section": ("subset", ["--config", "{root}/section.yaml"],
                          "config file: unknown keys ['subset']"),
    "config: 'false' for a boolean": ("subset", ["--config", "{root}/string_bool.yaml"],
                                      "config overwrite: expected true/false, got 'false'"),
    "config: missing file": ("export", ["--config", "{root}/none.yaml"], "config file not found"),
    "export: missing dataset": ("export", ["--dataset", "{root}/absent", "--output",
                                           "{root}/e"], "no such dataset"),
    "export: no --output": ("export", ["--dataset", "{ds}"], "missing --output"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(paths, capsys, case):
    command, argv, message = CASES[case]
    assert _run(command, argv, paths) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    for written in ("s", "e", "r"):
        assert not os.path.exists(os.path.join(paths["root"], written))


def test_old_spellings_work_with_one_warning_each(paths, tmp_path, capsys):
    out = tmp_path / "n.csv"
    argv = ["SELECT count(*) AS n FROM samples", "--dataset", paths["ds"], "--format", "csv"]
    assert query.main([*argv, "--out", str(out)]) == 0
    assert out.read_text() == "n\n12\n"
    argv = ["--dataset", paths["ds"], "--where", "true", "--output", str(tmp_path / "sub")]
    assert subset.main([*argv, "--samples-per-shard", "5"]) == 0
    assert len(os.listdir(tmp_path / "sub" / "shards")) == 3  # 12 samples, 5 per shard
    assert report.main(["--dataset", paths["ds"], "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert warnings == [
        "warning: --out is deprecated, use --output",
        "warning: --samples-per-shard is deprecated, use --max-shard-samples",
        "warning: --out is deprecated, use --output",
    ]


def test_config_file_gives_the_settings(paths, tmp_path, capsys):
    config = tmp_path / "subset.yaml"
    config.write_text(
        f"dataset: {paths['ds']}\nwhere: num_persons >= 0\noutput: {tmp_path / 'sub'}\n"
        "max_shard_samples: 4\noverwrite: true\n"
    )
    assert subset.main(["--config", str(config), "--max-shard-samples", "6"]) == 0
    assert len(os.listdir(tmp_path / "sub" / "shards")) == 2  # the flag won: 6 per shard
    assert "12 of 12 samples in 2 shards" in capsys.readouterr().out


def test_report_to_s3_writes_objects_and_no_local_folder(paths, s3_bucket, tmp_path):
    from runtime.storage import list_files, locate, read_bytes

    target = f"s3://{s3_bucket}/reports/v1"
    done = subprocess.run(
        [sys.executable, "-m", "curation.report", "--dataset", paths["ds"], "--output", target],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"report written: {target}/index.html"
    names = {f.uri.rsplit("/", 1)[1] for f in list_files(locate(target))}
    assert {"index.html", "stats.json", "datacard.md", "funnel.png"} <= names
    assert read_bytes(locate(f"{target}/index.html")).startswith(b"<!doctype html>")
    assert os.listdir(tmp_path) == []  # no folder named "s3:" where it ran


def test_query_result_to_s3_from_a_local_dataset(paths, s3_bucket):
    import pyarrow.parquet as pq

    from runtime.storage import locate

    target = f"s3://{s3_bucket}/n.parquet"
    sql = "SELECT count(*) AS n FROM samples"
    assert query.main([sql, "--dataset", paths["ds"], "--format", "parquet", "--output",
                       target]) == 0  # fmt: skip
    loc = locate(target)
    with loc.fs.open_input_file(loc.path) as f:
        assert pq.read_table(f).column("n").to_pylist() == [12]


def test_a_command_line_error_has_no_traceback(paths):
    with contextlib.chdir(ROOT):
        done = subprocess.run(
            [sys.executable, "-m", "humans300m", "query", "SELECT 1; SELECT 2", "--dataset",
             paths["ds"]], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "error: one SQL statement only, got 2: run the statements one by one\n"
