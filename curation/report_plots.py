"""Matplotlib figures of the dataset report, drawn from ``stats.json`` sections (PNG bytes).

Every function takes the numbers already computed by ``curation.report`` and returns PNG
bytes, so the figures show exactly what ``stats.json`` holds.
"""

from __future__ import annotations

import io
from typing import Any

SAPIENS_BUCKETS = {"1": 0.17, "2": 0.14, "3": 0.13, "4+": 0.56}  # paper, Figure 2
STAGE_COLOURS = {
    "source": "#8c8c8c", "fetch": "#e07b39", "validate": "#c4a000", "prefilter": "#9b59b6",
    "detect": "#d9534f", "dedup": "#3a7dc9",
}  # fmt: skip


def _figure(width: float = 9.0, height: float = 3.6, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), layout="constrained")


def _counts_axis(axis: Any) -> None:
    """Counts are whole numbers: ticks on integers only (matplotlib would place 0.5 steps)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=96)
    plt.close(fig)
    return out.getvalue()


def _hist_axes(
    ax: Any, hist: dict[str, Any], label: str, colour: str = "#3a7dc9", legend: str = ""
) -> None:
    edges, counts = hist["edges"], hist["counts"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color=colour, label=legend or None)
    ax.set_xlabel(label + f" (last bin: >= {edges[-2]:g})")
    ax.set_ylabel("count")
    _counts_axis(ax.yaxis)


def people_per_image(people: dict[str, Any]) -> bytes:
    fig, (left, right) = _figure(ncols=2)
    counts = people["counts"]
    left.bar([str(k) for k in counts], list(counts.values()), color="#3a7dc9")
    left.set_xlabel("persons passing the keep rule")
    left.set_ylabel("images")
    _counts_axis(left.yaxis)
    left.set_title("People per image")
    names = list(SAPIENS_BUCKETS)
    ours = [people["shares"].get(name, 0.0) * 100 for name in names]
    theirs = [SAPIENS_BUCKETS[name] * 100 for name in names]
    xs = range(len(names))
    right.bar([x - 0.2 for x in xs], ours, width=0.4, label="this dataset", color="#3a7dc9")
    right.bar([x + 0.2 for x in xs], theirs, width=0.4, label="Humans-300M", color="#bbbbbb")
    right.set_xticks(list(xs), [f"{n} person{'s' if n != '1' else ''}" for n in names])
    right.set_ylabel("% of images with >= 1 person")
    right.set_title("Sapiens buckets (Figure 2)")
    right.legend()
    return _png(fig)


def resolution(res: dict[str, Any]) -> bytes:
    fig, (left, right) = _figure(ncols=2)
    _hist_axes(left, res["short_side_hist"], "short side (px)")
    left.set_title("Image short side")
    _hist_axes(right, res["megapixels_hist"], "megapixels", colour="#5aa469")
    right.set_title("Image size")
    return _png(fig)


def person_boxes(boxes: dict[str, Any], min_side: float | None) -> bytes:
    fig, (left, right) = _figure(ncols=2)
    _hist_axes(left, boxes["height_hist"], "box height (px)", "#bbbbbb", legend="all boxes")
    _hist_axes(left, boxes["passing_height_hist"], "box height (px)", legend="passing boxes")
    if min_side:  # the configured keep rule, when the job's configuration names it
        left.axvline(min_side, color="#d9534f", linestyle="--", label=f"min side {min_side:g} px")
    left.legend()
    left.set_title("Person box height")
    _hist_axes(right, boxes["relative_height_hist"], "box height / image height", "#5aa469")
    right.set_title("Passing boxes: height relative to the image")
    return _png(fig)


def funnel(steps: list[dict[str, Any]], reasons: list[dict[str, Any]]) -> bytes:
    fig, (left, right) = _figure(width=11, height=max(3.6, 0.28 * len(reasons) + 1), ncols=2)
    names = [s["step"] for s in steps][::-1]
    left.barh(names, [s["count"] for s in steps][::-1], color="#3a7dc9")
    for y, step in enumerate(steps[::-1]):
        left.annotate(f" {step['count']:,}", (step["count"], y), va="center", fontsize=8)
    left.set_title("Filter funnel")
    left.set_xlabel("inputs remaining")
    left.set_ylabel("step")
    left.margins(x=0.12)  # room for the count written after each bar
    _counts_axis(left.xaxis)
    labels = [f"{r['stage']}: {r['reason']}" for r in reasons][::-1]
    colours = [STAGE_COLOURS.get(r["stage"], "#444444") for r in reasons][::-1]
    counts = [r["count"] for r in reasons][::-1]
    right.barh(labels, counts, color=colours)
    for y, count in enumerate(counts):
        right.annotate(f" {count:,}", (count, y), va="center", fontsize=8)
    right.set_title("Rejection reasons")
    right.set_xlabel("inputs rejected")
    right.set_ylabel("stage: reason")
    right.margins(x=0.12)
    _counts_axis(right.xaxis)
    right.tick_params(axis="y", labelsize=8)
    if not reasons:
        right.text(0.5, 0.5, "nothing was rejected", ha="center", va="center",
                   transform=right.transAxes)  # fmt: skip
    return _png(fig)


def top_values(domains: list[dict[str, Any]], licenses: list[dict[str, Any]]) -> bytes:
    rows = max(len(domains), len(licenses), 1)
    fig, (left, right) = _figure(width=11, height=max(3.0, 0.3 * rows + 1), ncols=2)
    for ax, items, field, title in (
        (left, domains, "domain", "Top source domains"),
        (right, licenses, "license", "Licenses"),
    ):
        ax.barh([i[field] for i in items][::-1], [i["samples"] for i in items][::-1],
                color="#3a7dc9")  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("samples")
        ax.set_ylabel(field)
        _counts_axis(ax.xaxis)
        ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def duplicate_clusters(sizes: dict[str, int]) -> bytes:
    fig, ax = _figure(width=6, height=3.4)
    ax.bar(list(sizes), list(sizes.values()), color="#3a7dc9")
    ax.set_yscale("log")
    ax.set_xlabel("cluster size (kept sample + its rejected duplicates)")
    ax.set_ylabel("clusters (log scale)")
    ax.set_title("Duplicate cluster sizes")
    return _png(fig)
