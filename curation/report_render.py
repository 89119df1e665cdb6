"""Text of the dataset report: the HTML page and the Markdown data card, from ``stats.json``."""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any

from curation.report_gallery import SHORT_SIDES

PEOPLE_NOTE = (
    "The job ran without a person detector (<code>--detector none</code>): the manifests "
    "hold no person boxes, so people per image and box sizes cannot be shown."
)
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .note { background: #fff6d5; padding: 0.6em 1em; }
.tiles { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.tiles figure { margin: 0; width: 144px; font-size: 0.75em; }
.tiles figure img { width: 144px; height: 108px; object-fit: contain; background: #f2f2f2; }
table.gallery td { vertical-align: top; } table.gallery .tiles { flex-wrap: nowrap; }
.cluster { display: flex; gap: 1em; align-items: flex-start; margin: 0 0 1em; }
.cluster ul { margin: 0; padding-left: 1.2em; font-size: 0.8em; overflow-wrap: anywhere; }
.legend .pass { color: #28c846; font-weight: bold; } .legend .fail { color: #ffaa00; font-weight: bold; }
"""
BOX_LEGEND = (
    '<p class="legend">Boxes: <span class="pass">green</span> persons passing the keep rule, '
    '<span class="fail">amber</span> other detected persons.</p>'
)


def limitations(stats: dict[str, Any]) -> list[str]:
    """Known limitations of the dataset, derived from its numbers plus standing caveats."""
    items = []
    summary = stats["summary"]
    if not stats["detector_ran"]:
        items.append("No person detector ran: nothing guarantees a visible person in an image.")
    else:
        items.append("Person boxes come from an automatic detector and were not checked by people.")
    if stats["people"] and stats["people"]["buckets"]["0"]:
        items.append(f"{stats['people']['buckets']['0']:,} kept images have no person passing "
                     "the keep rule.")  # fmt: skip
    if not stats["prefilter_ran"]:
        items.append("No content prefilter ran (watermarks, overlaid text, artistic depictions), "
                     "unlike the Sapiens curation.")  # fmt: skip
    if stats["samples"] and not stats["duplicates"]["cluster_sizes"]:
        items.append("No deduplication information in the manifests.")
    missing = next((x["share"] for x in stats["licenses"] if x["license"] == "(none)"), 0.0)
    if missing:
        items.append(f"{missing:.1%} of samples carry no license; check terms before use.")
    if stats["domains"] and stats["domains"][0]["share"] > 0.5:
        top = stats["domains"][0]
        items.append(f"One source dominates: {top['domain']} holds {top['share']:.0%} of samples.")
    if summary is None:
        items.append("The dataset has no summary.json: provenance and configuration are unknown.")
    elif "subset" in summary:
        items.append("This is a subset: the funnel and rejections describe no filtering of its "
                     "own; see the parent's report.")  # fmt: skip
    elif summary["counts"].get("inputs") != stats["inputs"]:
        items.append(f"summary.json counts {summary['counts'].get('inputs')} inputs but the "
                     f"manifests and rejections account for {stats['inputs']}.")  # fmt: skip
    return items


def _flatten(config: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, json.dumps(value)))
    return rows


def _provenance(stats: dict[str, Any]) -> list[tuple[str, str]]:
    summary = stats["summary"] or {}
    rows = [("dataset", stats["dataset"])]
    for key in ("code_version", "schema_version", "started_at", "finished_at", "images_per_s"):
        if key in summary:
            rows.append((key, str(summary[key])))
    for key, value in (summary.get("subset") or {}).items():
        rows.append((f"subset.{key}", str(value)))
    return rows


def _counts(stats: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("inputs", f"{stats['inputs']:,}"),
        ("kept samples", f"{stats['samples']:,}"),
        ("rejected", f"{stats['rejected']:,}"),
        ("shards", f"{stats['shards']:,}"),
        ("image bytes", _size(stats["bytes"])),
        ("formats", ", ".join(f"{k} {v:,}" for k, v in stats["formats"].items()) or "-"),
    ]


def _size(num_bytes: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


def _people_rows(stats: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    people = stats["people"]
    return [
        (name, f"{people['buckets'][name]:,}",
         f"{people['shares'][name]:.1%}" if name in people["shares"] else "-",
         f"{people['sapiens_shares'][name]:.0%}" if name in people["sapiens_shares"] else "-")
        for name in people["buckets"]
    ]  # fmt: skip


# ---------------------------------------------------------------- HTML


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{escape(str(c))}</td>' if str(c)[:1].isdigit() else f"<td>{escape(str(c))}</td>"
            for c in row
        ) + "</tr>"
        for row in rows
    )  # fmt: skip
    head = f"<tr>{head}</tr>" if any(header) else ""
    return f"<table>{head}{body}</table>"


def _keep_rule_html(stats: dict[str, Any]) -> str:
    rule = stats["keep_rule"]
    text = f"Keep rule: {rule['text']}." if rule else "The job's keep rule is not recorded."
    return f'<p id="keep-rule">{escape(text)}</p>'


def _img(figures: dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(figures[name]).decode()
    return f'<img id="fig-{name}" src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


def _tile(sample: dict[str, Any], thumbnails: dict[str, bytes]) -> str:
    people = sample["num_persons"]
    caption = f"{sample['width']}×{sample['height']}"
    if people is not None:
        caption = f"{people} {'person' if people == 1 else 'people'} · " + caption
    title = escape(f"{sample['source_uri']}\nkey {sample['key']}, {sample['image_member']}")
    if sample["key"] not in thumbnails:
        body = f"<p>image not found in shard {sample['shard']}</p>"
    else:
        data = base64.b64encode(thumbnails[sample["key"]]).decode()
        body = (
            f'<img class="thumb" src="data:image/jpeg;base64,{data}" alt="sample {sample["key"]}">'
        )
    return f'<figure title="{title}">{body}<figcaption>{escape(caption)}</figcaption></figure>'


def _gallery(stats: dict[str, Any], thumbnails: dict[str, bytes]) -> str:
    """A table: one row per people-per-image bucket, one column per short-side bucket."""
    cells: dict[tuple[str, str], list[str]] = {}
    for sample in stats["gallery"]:
        cells.setdefault((sample["people"], sample["resolution"]), []).append(
            _tile(sample, thumbnails)
        )
    people = sorted({p for p, _ in cells}, key=lambda p: (not p[0].isdigit(), p))
    columns = [label for _, label in SHORT_SIDES if any(r == label for _, r in cells)]
    head = "<tr><th>people \\ short side</th>" + "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = "".join(
        f"<tr><th>{escape(p)}</th>" + "".join(
            f'<td><div class="tiles">{"".join(cells.get((p, c), []))}</div></td>' for c in columns
        ) + "</tr>"
        for p in people
    )  # fmt: skip
    intro = ("<p>A few kept samples per stratum of people per image (persons passing the keep "
             "rule) and image short side, from a few shards spread over the dataset. Hover a "
             "picture for its source.</p>")  # fmt: skip
    legend = BOX_LEGEND if stats["detector_ran"] else ""
    return f'{intro}{legend}<table class="gallery">{head}</tr>{rows}</table>'


def _duplicate_groups(stats: dict[str, Any], thumbnails: dict[str, bytes]) -> str:
    html = []
    for group in stats["duplicate_groups"]:
        kept = "".join(_tile(m, thumbnails) for m in group["kept"])
        removed = "".join(
            f"<li>removed ({escape(c['reason'])}): {escape(c['source_uri'] or '')}"
            + (f" <small>({escape(c['detail'])})</small>" if c["detail"] else "") + "</li>"
            for c in group["removed"]
        )  # fmt: skip
        html.append(f'<div class="cluster"><div class="tiles">{kept}</div>'
                    + (f"<ul>{removed}</ul>" if removed else "") + "</div>")  # fmt: skip
    note = ("<p>One row per cluster: the samples still in the dataset side by side, and the "
            "copies dedup removed (their bytes are no longer in the dataset).</p>")  # fmt: skip
    return note + "".join(html) if html else ""


def render_html(
    stats: dict[str, Any], figures: dict[str, bytes], thumbnails: dict[str, bytes]
) -> str:
    parts = [_section("Overview", _table(("", ""), _counts(stats)))]
    if stats["gallery"]:
        parts.append(_section("Samples", _gallery(stats, thumbnails)))
    if stats["people"]:
        parts.append(_section("People per image",
            (_img(figures, "people", "people per image") if "people" in figures else "") +
            _table(("persons", "images", "share of images with people", "Humans-300M"),
                   _people_rows(stats))))  # fmt: skip
    else:
        parts.append(_section("People per image", f'<p class="note">{PEOPLE_NOTE}</p>'))
    if "boxes" in figures:
        boxes = stats["person_boxes"]
        parts.append(_section("Person boxes", _img(figures, "boxes", "person box sizes") +
            f"<p>{boxes['boxes']:,} boxes, {boxes['passing']:,} pass the keep rule.</p>" +
            _keep_rule_html(stats)))  # fmt: skip
    if "resolution" in figures:
        parts.append(_section("Image resolution", _img(figures, "resolution", "resolution")))
    steps = [(s["step"], f"{s['count']:,}", ", ".join(f"{k} {v:,}" for k, v in s["removed_by"].items()))
             for s in stats["funnel"]["steps"]]  # fmt: skip
    parts.append(_section("Filter funnel", _img(figures, "funnel", "filter funnel") +
                          _table(("step", "remaining", "removed by stage"), steps)))  # fmt: skip
    if "sources" in figures:
        top = [(d["domain"], f"{d['samples']:,}", f"{d['share']:.1%}") for d in stats["domains"]]
        lic = [(d["license"], f"{d['samples']:,}", f"{d['share']:.1%}") for d in stats["licenses"]]
        parts.append(_section("Sources and licenses", _img(figures, "sources", "domains, licenses")
                              + _table(("domain", "samples", "share"), top)
                              + _table(("license", "samples", "share"), lic)))  # fmt: skip
    if "duplicates" in figures or stats["duplicate_groups"]:
        dup = stats["duplicates"]
        body = _img(figures, "duplicates", "duplicate clusters") if "duplicates" in figures else ""
        body += (f"<p>{dup['clusters_with_copies']:,} kept samples had copies; "
                 f"{dup['rejected_duplicates']:,} duplicates were rejected.</p>")  # fmt: skip
        parts.append(_section("Duplicates", body + _duplicate_groups(stats, thumbnails)))
    parts.append(_section("Known limitations",
        "<ul>" + "".join(f"<li>{escape(x)}</li>" for x in limitations(stats)) + "</ul>" +
        '<p>Data card: <a href="datacard.md">datacard.md</a>; numbers: '
        '<a href="stats.json">stats.json</a>.</p>'))  # fmt: skip
    title = f"Dataset report: {stats['dataset']}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
            f"</title><style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>Generated {escape(stats['generated_at'])}.</p>{''.join(parts)}</body></html>\n")  # fmt: skip


# ---------------------------------------------------------------- Markdown


def _md_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_card(stats: dict[str, Any]) -> str:
    config = stats["job_config"] or {}
    out = [f"# Data card: {stats['dataset']}\n",
           f"Generated by `curation.report` on {stats['generated_at']}.\n",
           "## Counts\n", _md_table(("", ""), _counts(stats)),
           "## Provenance\n", _md_table(("field", "value"), _provenance(stats)),
           "## Filters and thresholds (the job's configuration)\n",
           (f"Keep rule: {stats['keep_rule']['text']}.\n" if stats["keep_rule"] else ""),
           _md_table(("setting", "value"), _flatten(config)) if config else "Not recorded.\n",
           "## Filter funnel\n",
           _md_table(("step", "remaining"), [(s["step"], f"{s['count']:,}") for s in stats["funnel"]["steps"]]),
           "## Rejection reasons\n",
           _md_table(("stage", "reason", "inputs"), [(r["stage"], r["reason"], f"{r['count']:,}") for r in stats["funnel"]["reasons"]]),
           "## People per image\n"]  # fmt: skip
    if stats["people"]:
        out.append(_md_table(("persons", "images", "share", "Humans-300M"), _people_rows(stats)))
    else:
        out.append(PEOPLE_NOTE.replace("<code>", "`").replace("</code>", "`") + "\n")
    out += ["## Sources and licenses\n",
            _md_table(("domain", "samples", "share"), [(d["domain"], d["samples"], f"{d['share']:.1%}") for d in stats["domains"]]),
            "\n", _md_table(("license", "samples", "share"), [(d["license"], d["samples"], f"{d['share']:.1%}") for d in stats["licenses"]]),
            "## Known limitations\n", "".join(f"- {x}\n" for x in limitations(stats))]  # fmt: skip
    return "\n".join(out)
