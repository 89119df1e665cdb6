"""A crawl corpus for the job's tests: images on the loopback server, a URL list, expectations."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from curation.synthetic import encode, photo_jpeg, photo_like
from tests.support.httpserver import CrawlServer


@dataclass
class Corpus:
    url_list: Path
    inputs: list[str]  # every URL listed, repeats included, in order
    expected: dict[str, str | None] = field(default_factory=dict)  # url -> reason, None = kept
    malformed_rows: int = 0
    # byte-identical images under several URLs: exactly one of each group is kept
    duplicate_groups: list[list[str]] = field(default_factory=list)


def build_corpus(server: CrawlServer, folder: Path, good: int = 24, route: str = "img") -> Corpus:
    """Register images on ``server`` and write a CSV URL list exercising every outcome.

    ``route`` serves the good images ("lag" to make each take a while).
    """
    urls: list[tuple[str, str | None]] = []
    for i in range(good):
        name = f"g{i}.png" if i % 6 == 5 else f"g{i}.jpg"
        width, height = (160 + 8 * i, 120 + 4 * i) if i % 2 else (120 + 4 * i, 160 + 8 * i)
        image = photo_like(width, height, seed=100 + i)
        server.images[name] = encode(image, "PNG") if name.endswith("png") else encode(image)
        urls.append((server.url(route, name), None))
    server.images["copy.jpg"] = server.images["g0.jpg"]  # same bytes, other URL
    server.images["tiny.jpg"] = photo_jpeg(40, 30, seed=7)
    server.images["broken.jpg"] = photo_jpeg(200, 150, seed=8)[:700]
    groups = [
        [server.url(route, "g0.jpg"), server.url("img", "copy.jpg")],
        [server.url(route, "g1.jpg"), server.url("redirect", "g1.jpg")],  # redirect to a listed one
        [server.url(route, "g2.jpg"), server.url("flaky", "g2.jpg")],  # 500 then served
    ]
    urls += [(group[1], "duplicate") for group in groups]
    urls += [
        (server.url("img", "tiny.jpg"), "too_small"),
        (server.url("img", "broken.jpg"), "truncated_image"),
        (server.url("html", "g3.jpg"), "not_an_image"),
        (server.url("text", "g3.jpg"), "bad_content_type"),
        (server.url("optout", "g4.jpg"), "opted_out"),
        (server.url("status", "404"), "http_error"),
        (server.url("truncated", "g5.png"), "truncated_body"),
        (server.url("loop"), "too_many_redirects"),
        (server.url(route, "g6.jpg"), "duplicate_input"),  # listed twice
    ]
    path = folder / "urls.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["url", "caption", "license"])
        for i, (url, _) in enumerate(urls):
            writer.writerow([url, f"caption {i}", "cc-by"])
        writer.writerow(["javascript:alert(1)", "", ""])  # malformed
    corpus = Corpus(path, [u for u, _ in urls], malformed_rows=1, duplicate_groups=groups)
    for url, reason in urls:
        corpus.expected.setdefault(url, reason)
    for group in groups:
        for url in group:
            corpus.expected[url] = "duplicate"
    return corpus


def check_outcomes(corpus: Corpus, rows: list[dict], rejections: list[dict]) -> None:
    """Every input accounted for exactly once, each with the outcome its route calls for."""
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a sample was written twice"
    outcome: Counter[str] = Counter()
    kept = {r["source_uri"]: r["key"] for r in rows}
    for row in rows:
        outcome[row["source_uri"]] += 1
        assert corpus.expected[row["source_uri"]] in (None, "duplicate"), row["source_uri"]
    malformed = 0
    for rejection in rejections:
        if rejection["reason"] == "malformed_input":
            malformed += 1
            continue
        uri = rejection["source_uri"]
        outcome[uri] += 1
        if rejection["reason"] == "duplicate_input":
            continue
        if corpus.expected[uri] == "duplicate":
            assert rejection["reason"] == "duplicate_exact", rejection
            assert rejection["duplicate_of"] in kept.values()
        else:
            assert rejection["reason"] == corpus.expected[uri], rejection
    for group in corpus.duplicate_groups:
        assert sum(url in kept for url in group) == 1, group
    repeated = corpus.inputs[-1]
    assert malformed == corpus.malformed_rows
    assert set(outcome) == set(corpus.inputs), "an input was lost"
    assert outcome[repeated] == 2, "the repeated listing must be kept once and rejected once"
    assert all(n == 1 for url, n in outcome.items() if url != repeated)
