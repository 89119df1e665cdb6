"""A crawl corpus for the job's tests: images on the loopback server, a URL list, expectations."""

from __future__ import annotations

import csv
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


def build_corpus(server: CrawlServer, folder: Path, good: int = 24) -> Corpus:
    """Register images on ``server`` and write a CSV URL list exercising every outcome."""
    urls: list[tuple[str, str | None]] = []
    for i in range(good):
        name = f"g{i}.png" if i % 6 == 5 else f"g{i}.jpg"
        width, height = (160 + 8 * i, 120 + 4 * i) if i % 2 else (120 + 4 * i, 160 + 8 * i)
        image = photo_like(width, height, seed=100 + i)
        server.images[name] = encode(image, "PNG") if name.endswith("png") else encode(image)
        urls.append((server.url("img", name), None))
    server.images["copy.jpg"] = server.images["g0.jpg"]  # same bytes, other URL
    server.images["tiny.jpg"] = photo_jpeg(40, 30, seed=7)
    server.images["broken.jpg"] = photo_jpeg(200, 150, seed=8)[:700]
    urls += [
        (server.url("img", "copy.jpg"), "duplicate_exact"),
        (server.url("redirect", "g1.jpg"), "duplicate_exact"),  # redirect to a listed image
        (server.url("flaky", "g2.jpg"), "duplicate_exact"),  # 500 then served
        (server.url("img", "tiny.jpg"), "too_small"),
        (server.url("img", "broken.jpg"), "truncated_image"),
        (server.url("html", "g3.jpg"), "not_an_image"),
        (server.url("text", "g3.jpg"), "bad_content_type"),
        (server.url("optout", "g4.jpg"), "opted_out"),
        (server.url("status", "404"), "http_error"),
        (server.url("truncated", "g5.png"), "truncated_body"),
        (server.url("loop"), "too_many_redirects"),
        (server.url("img", "g6.jpg"), "duplicate_input"),  # listed twice
    ]
    path = folder / "urls.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["url", "caption", "license"])
        for i, (url, _) in enumerate(urls):
            writer.writerow([url, f"caption {i}", "cc-by"])
        writer.writerow(["javascript:alert(1)", "", ""])  # malformed
    corpus = Corpus(path, [u for u, _ in urls], malformed_rows=1)
    for url, reason in urls:
        corpus.expected.setdefault(url, reason)
    return corpus
