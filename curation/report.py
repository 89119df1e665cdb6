"""The dataset report: ``index.html`` with plots, ``stats.json`` and a Markdown data card.

    python -m curation.report --dataset s3://bucket/humans-v1 --output report/

Every number is computed by DuckDB over the manifests and rejections (aggregates and binned
histograms, never a full load into memory), written to ``stats.json``, and the figures and
the data card are drawn from that file's content. The HTML embeds its figures as data URIs,
so the page is one self-contained file; the PNGs are also written beside it. The report
goes to a local folder or an ``s3://`` prefix.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import duckdb

from curation import report_gallery, report_plots
from curation.manifest import DatasetError, read_summary
from curation.query import connect
from curation.report_render import render_card, render_html
from runtime import config as cli
from runtime.storage import locate, write_bytes_atomic
from schemas import SCHEMA_VERSION, SchemaError
from schemas.summary import SummaryConfig, config_of

# Funnel steps after "inputs" and the rejection stages that remove inputs before each one;
# "person" and "unique" appear only when the detector and dedup ran.
FUNNEL = (
    ("fetched", ("source", "fetch")),
    ("valid", ("validate", "prefilter")),
    ("person", ("detect",)),
    ("unique", ("dedup",)),
)
OPTIONAL_STEPS = {"person": "detector_ran", "unique": "dedup_ran"}
DOMAIN_SQL = (
    "CASE WHEN source_uri LIKE 's3://%' THEN 's3://' || split_part(source_uri[6:], '/', 1) "
    "WHEN regexp_matches(source_uri, '^[A-Za-z][A-Za-z0-9+.-]*://') THEN "
    "lower(regexp_extract(source_uri, '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#:@]+)', 1)) "
    "ELSE '(local file)' END"
)
TOP_N = 15
FORMATS_SQL = "SELECT format, count(*) FROM samples GROUP BY 1 ORDER BY 2 DESC, 1"


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.sql(sql).fetchone()[0]


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (readable axis ends)."""
    if value <= 0:
        return 1.0
    scale = 10 ** math.floor(math.log10(value))
    return next(m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= value)


def _hist(
    con: duckdb.DuckDBPyConnection, expr: str, source: str, bins: int, hi: float | None = None
) -> dict[str, Any]:
    """Counts of ``expr`` in ``bins`` equal bins on [0, hi); values outside go to the ends.

    Without ``hi`` the range ends at a round number above the 99th percentile, so a few huge
    values do not squash the plot (they land in the last bin, labelled as such).
    """
    if hi is None:
        p99 = _scalar(con, f"SELECT quantile_cont({expr}, 0.99) FROM {source}")
        hi = _nice_ceiling(float(p99 or 0) * 1.05)
    step = hi / bins
    rows = con.sql(
        f"SELECT greatest(0, least({bins - 1}, floor(({expr}) / {step})))::INT AS b, "
        f"count(*) FROM {source} WHERE {expr} IS NOT NULL GROUP BY b"
    ).fetchall()
    counts = [0] * bins
    for b, n in rows:
        counts[b] = n
    return {"edges": [i * step for i in range(bins + 1)], "counts": counts}


def _people(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    rows = con.sql(
        "SELECT num_persons, count(*) FROM samples WHERE num_persons IS NOT NULL "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    counts = {str(k): n for k, n in rows}
    buckets = {"0": 0, "1": 0, "2": 0, "3": 0, "4+": 0}
    for k, n in rows:
        buckets["4+" if k >= 4 else str(k)] += n
    with_people = sum(n for k, n in buckets.items() if k != "0")
    shares = {k: n / with_people for k, n in buckets.items() if k != "0"} if with_people else {}
    return {"counts": counts, "buckets": buckets, "shares": shares,
            "sapiens_shares": report_plots.SAPIENS_BUCKETS}  # fmt: skip


def _resolution(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    row = con.sql(
        "SELECT min(width), median(width), max(width), min(height), median(height), "
        "max(height), median(width * height / 1e6) FROM samples"
    ).fetchone()
    return {
        "width": {"min": row[0], "median": row[1], "max": row[2]},
        "height": {"min": row[3], "median": row[4], "max": row[5]},
        "median_megapixels": row[6],
        "short_side_hist": _hist(con, "least(width, height)", "samples", 40),
        "megapixels_hist": _hist(con, "width * height / 1e6", "samples", 40),
    }


def _boxes(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    passing = "(SELECT * FROM persons WHERE passes)"
    # one range for both height histograms, so their bars line up
    height_hi = _hist(con, "box_height", "persons", 1)["edges"][-1]
    return {
        "boxes": _scalar(con, "SELECT count(*) FROM persons"),
        "passing": _scalar(con, "SELECT count(*) FROM persons WHERE passes"),
        "median_score": _scalar(con, "SELECT median(score) FROM persons"),
        "height_hist": _hist(con, "box_height", "persons", 40, hi=height_hi),
        "passing_height_hist": _hist(con, "box_height", passing, 40, hi=height_hi),
        "relative_height_hist": _hist(con, "box_height / image_height", passing, 20, hi=1.0),
    }


def _funnel(con: duckdb.DuckDBPyConnection, samples: int, ran: dict[str, bool]) -> dict[str, Any]:
    rows = con.sql(
        "SELECT stage, reason, count(*) AS n FROM rejections GROUP BY ALL ORDER BY n DESC, reason"
    ).fetchall()
    by_stage: dict[str, dict[str, int]] = {}
    for stage, reason, n in rows:
        by_stage.setdefault(stage, {})[reason] = n
    removed = {stage: sum(reasons.values()) for stage, reasons in by_stage.items()}
    known = {stage for _, stages in FUNNEL for stage in stages}
    other = sum(n for stage, n in removed.items() if stage not in known)
    remaining = samples + sum(removed.values())
    steps = [{"step": "inputs", "count": remaining, "removed_by": {}}]
    for name, stages in FUNNEL:
        if not ran.get(OPTIONAL_STEPS.get(name, ""), True):
            continue  # the stage did not run: a step removing nothing would mislead
        gone = {s: removed[s] for s in stages if s in removed}
        remaining -= sum(gone.values())
        steps.append({"step": name, "count": remaining, "removed_by": gone})
    if other:  # stages this report does not know yet
        remaining -= other
        steps.append({"step": "other stages", "count": remaining,
                      "removed_by": {s: n for s, n in removed.items() if s not in known}})  # fmt: skip
    steps.append({"step": "kept", "count": samples, "removed_by": {}})
    reasons = [{"stage": s, "reason": r, "count": n} for s, r, n in rows]
    return {"steps": steps, "by_stage": by_stage, "reasons": reasons}


def _top(con: duckdb.DuckDBPyConnection, expr: str, field: str, total: int) -> list[dict]:
    rows = con.sql(
        f"SELECT {expr} AS v, count(*) AS n FROM samples GROUP BY v ORDER BY n DESC, v "
        f"LIMIT {TOP_N}"
    ).fetchall()
    return [{field: v, "samples": n, "share": n / total} for v, n in rows]


def _duplicates(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    rows = con.sql(
        "SELECT dup_cluster_size, count(*) FROM samples WHERE dup_cluster_size IS NOT NULL "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    rejected = _scalar(con, "SELECT count(*) FROM rejections WHERE stage = 'dedup'")
    return {"cluster_sizes": {str(k): n for k, n in rows},
            "clusters_with_copies": sum(n for k, n in rows if k > 1),
            "rejected_duplicates": rejected}  # fmt: skip


def keep_rule(config: SummaryConfig | None) -> dict[str, Any] | None:
    """The person keep rule the job ran with, as its summary's typed config records it; None
    when the job ran without a detector or its summary records no config."""
    if config is None or config.keep_rule is None:
        return None
    rule = config.keep_rule
    sides = {"both_sides": "on both sides", "long_side": "on its long side"}
    size = (f"an area over {rule.min_area:,g} px²" if rule.box_rule == "area"
            else f"a box over {rule.min_side:g} px {sides.get(rule.box_rule, rule.box_rule)}")  # fmt: skip
    most = f" and at most {rule.max_persons}" if rule.max_persons is not None else ""
    text = (f"an image is kept when at least {rule.min_persons}{most} person(s) have a score "
            f"over {rule.min_score:g} and {size} (detector {config.detector})")  # fmt: skip
    return {"weights": config.detector, "min_score": rule.min_score, "min_side": rule.min_side,
            "box_rule": rule.box_rule, "min_area": rule.min_area, "text": text}  # fmt: skip


def _stages_ran(con: duckdb.DuckDBPyConnection, config: SummaryConfig | None) -> tuple[bool, bool]:
    """Whether the person detector and the dedup pass ran: as the job's summary says, else
    (no summary, or one without a config) as the manifests and rejections show."""
    if config is not None:
        return config.keep_rule is not None, config.dedup
    stages = {s for (s,) in con.sql("SELECT DISTINCT stage FROM rejections").fetchall()}
    persons = _scalar(con, "SELECT count(*) FROM samples WHERE num_persons IS NOT NULL")
    clusters = _scalar(con, "SELECT count(*) FROM samples WHERE dup_cluster_size IS NOT NULL")
    return "detect" in stages or persons > 0, "dedup" in stages or clusters > 0


def compute_stats(dataset_uri: str) -> dict[str, Any]:
    """Every number of the report, as written to ``stats.json``."""
    con = connect(dataset_uri)
    summary = read_summary(dataset_uri)
    config = config_of(summary)
    samples = _scalar(con, "SELECT count(*) FROM samples")
    detector_ran, dedup_ran = _stages_ran(con, config)
    funnel = _funnel(con, samples, {"detector_ran": detector_ran, "dedup_ran": dedup_ran})
    prefiltered = _scalar(con, "SELECT count(*) FROM samples WHERE prefilter IS NOT NULL")
    stats = {
        "dataset": locate(dataset_uri).uri,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "schema_version": SCHEMA_VERSION,
        "samples": samples,
        "shards": _scalar(con, "SELECT count(DISTINCT shard) FROM samples"),
        "bytes": _scalar(con, "SELECT coalesce(sum(num_bytes), 0) FROM samples"),
        "rejected": _scalar(con, "SELECT count(*) FROM rejections"),
        "formats": dict(con.sql(FORMATS_SQL).fetchall()),
        "detector_ran": detector_ran,
        "dedup_ran": dedup_ran,
        "keep_rule": keep_rule(config),
        "job_config": config.job if config else None,
        "people": _people(con) if detector_ran else None,
        "person_boxes": _boxes(con) if detector_ran else None,
        "resolution": _resolution(con) if samples else None,
        "funnel": funnel,
        "domains": _top(con, DOMAIN_SQL, "domain", samples) if samples else [],
        "licenses": _top(con, "coalesce(license, '(none)')", "license", samples) if samples else [],
        "duplicates": _duplicates(con),
        "prefilter_ran": prefiltered > 0 or "prefilter" in funnel["by_stage"],
        "summary": summary,
        "gallery": report_gallery.select_gallery(con),
        "duplicate_groups": report_gallery.duplicate_groups(con),
    }
    stats["inputs"] = funnel["steps"][0]["count"]
    return stats


def _figures(stats: dict[str, Any]) -> dict[str, bytes]:
    """PNG per section; sections without data get none (the page says why instead)."""
    figures = {"funnel": report_plots.funnel(stats["funnel"]["steps"], stats["funnel"]["reasons"])}
    if stats["people"] and stats["people"]["counts"]:
        figures["people"] = report_plots.people_per_image(stats["people"])
    if stats["person_boxes"] and stats["person_boxes"]["boxes"]:
        rule = stats["keep_rule"]
        min_side = rule["min_side"] if rule and rule["box_rule"] != "area" else None
        figures["boxes"] = report_plots.person_boxes(stats["person_boxes"], min_side)
    if stats["resolution"]:
        figures["resolution"] = report_plots.resolution(stats["resolution"])
        figures["sources"] = report_plots.top_values(stats["domains"], stats["licenses"])
    if stats["duplicates"]["cluster_sizes"]:
        figures["duplicates"] = report_plots.duplicate_clusters(
            stats["duplicates"]["cluster_sizes"]
        )
    return figures


def _thumbnails(dataset_uri: str, stats: dict[str, Any]) -> dict[str, bytes]:
    """JPEG thumbnail (person boxes drawn) per key shown in the gallery or duplicate groups."""
    shown = stats["gallery"] + [m for g in stats["duplicate_groups"] for m in g["kept"]]
    images = report_gallery.read_images(dataset_uri, shown)
    return {
        s["key"]: report_gallery.thumbnail(images[s["key"]], s["persons"])
        for s in shown
        if s["key"] in images
    }


def write_report(dataset_uri: str, output: str) -> str:
    """Write index.html, stats.json, datacard.md and the figures' PNGs into ``output`` (a
    local folder or an s3:// prefix); returns the page's location."""
    out = locate(output)
    stats = compute_stats(dataset_uri)
    figures = _figures(stats)
    thumbnails = _thumbnails(dataset_uri, stats)
    files = {"stats.json": (json.dumps(stats, indent=2, default=str) + "\n").encode()}
    files |= {f"{name}.png": png for name, png in figures.items()}
    files["datacard.md"] = render_card(stats).encode()
    files["index.html"] = render_html(stats, figures, thumbnails).encode()  # last: the entry
    for name, data in files.items():
        write_bytes_atomic(out.join(name), data)
    return out.join("index.html").uri


@dataclass(kw_only=True)
class ReportConfig:
    dataset: str = field(metadata={"help": "dataset folder or s3://bucket/prefix"})
    output: str = field(
        metadata={"help": "folder or s3:// prefix for the report files", "aliases": ["out"]}
    )


@cli.entry_point(duckdb.Error, DatasetError, SchemaError, OSError)
def main(argv: list[str] | None = None) -> int:
    parser = cli.command(
        ReportConfig,
        prog="python -m curation.report",
        description="Write a dataset report: index.html (plots), stats.json, datacard.md.",
    )
    config = cli.parse(ReportConfig, parser, argv)
    print(f"report written: {write_report(config.dataset, config.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
