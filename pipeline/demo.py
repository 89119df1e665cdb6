"""The embedded demo: a generated sample corpus, served over HTTP on 127.0.0.1, built into a dataset.

The corpus holds photo-like scenes without people, of mixed sizes and formats; real photographs
of people that the installed Ultralytics package ships, as shipped and enlarged so that their
people exceed the keep rule's 300 px; and the things a crawl meets: a byte copy, a re-encode,
an HTML page, a truncated file, an image too small, a dead link and a line that is not a URL.
With detector weights the summary shows people kept and scenes without people rejected.

The demo prepares the job's arguments and configuration; the job (``pipeline.build_humans300m
--demo``) runs them. Nothing here imports the job back.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import logging
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from curation.synthetic import (
    PEOPLE_ATTRIBUTION,
    PEOPLE_LICENSE,
    encode,
    packaged_people_photos,
    photo_jpeg,
    photo_like,
)
from curation.weights import WeightsError
from pipeline.detect_stage import check_filters_ready
from pipeline.job import JobConfig
from runtime import config as cli

log = logging.getLogger("humans300m")
DEMO_ROOT = Path("demo_out")
# Enlargements of the packaged photos: bus.jpg's people are 120-200 px wide as shipped (too
# small for the keep rule's 300 px), three times that once enlarged.
PEOPLE_SCALES = (1.0, 3.0)


def make_corpus(folder: Path, count: int = 120) -> list[tuple[str, str, str, str]]:
    """Write the corpus files; returns (file name, caption, license, attribution) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = [(640, 480), (1024, 768), (800, 1200), (1600, 1200), (480, 640), (2000, 1500)]
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        name = f"photo_{i:04d}.jpg"
        if i % 10 == 9:
            name = f"photo_{i:04d}.png"
            (folder / name).write_bytes(encode(photo_like(width // 2, height // 2, seed=i), "PNG"))
        else:
            (folder / name).write_bytes(photo_jpeg(width, height, seed=i))
        rows.append((name, f"sample photo {i}", "cc-by-4.0" if i % 3 else "cc0", ""))
    for scale in PEOPLE_SCALES:
        for name, data, caption in packaged_people_photos(scale):
            (folder / name).write_bytes(data)
            rows.append((name, caption, PEOPLE_LICENSE, PEOPLE_ATTRIBUTION))
    first = (folder / "photo_0000.jpg").read_bytes()
    (folder / "copy_of_0000.jpg").write_bytes(first)  # exact duplicate
    (folder / "reencode_of_0001.jpg").write_bytes(photo_jpeg(1024, 768, seed=1, quality=70))
    (folder / "page.jpg").write_bytes(b"<!doctype html><html><body>a web page</body></html>")
    (folder / "truncated.jpg").write_bytes(photo_jpeg(800, 600, seed=999)[:5000])
    (folder / "thumbnail.jpg").write_bytes(photo_jpeg(120, 90, seed=998))
    for name in (
        "copy_of_0000.jpg",
        "reencode_of_0001.jpg",
        "page.jpg",
        "truncated.jpg",
        "thumbnail.jpg",
        "missing.jpg",
    ):
        rows.append((name, "", "unknown", ""))
    return rows


def people_outcomes(dataset_uri: str, names: list[str]) -> list[str]:
    """One line per named corpus file (by URL file name): kept, with its count of people
    passing the keep rule when the detector ran, or the stage and reason that rejected it."""
    from curation.manifest import rejections_table, samples_table

    outcome: dict[str, str] = {}
    for row in samples_table(dataset_uri, columns=["source_uri", "num_persons"]).to_pylist():
        persons = row["num_persons"]
        text = "kept" if persons is None else f"kept, {persons} people pass the keep rule"
        outcome[row["source_uri"].rsplit("/", 1)[-1]] = text
    columns = ["source_uri", "stage", "reason"]
    for row in rejections_table(dataset_uri, columns=columns).to_pylist():
        if row["source_uri"]:  # malformed inputs have none
            name = row["source_uri"].rsplit("/", 1)[-1]
            outcome[name] = f"rejected at {row['stage']}: {row['reason']}"
    lines = ["  photos of people:"] if names else []
    width = max(map(len, names), default=0)
    lines += [f"    {name:<{width}}  {outcome.get(name, 'not processed')}" for name in names]
    return lines


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) from a background thread."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Corpus:
    url_list: str  # CSV of url, caption, license, attribution (and a line that is not a URL)
    people: list[str]  # file names of the photographs of people


@contextlib.contextmanager
def served_corpus() -> Iterator[Corpus]:
    """Write the corpus and its URL list under ./demo_out, served on 127.0.0.1 while the
    block runs."""
    corpus = DEMO_ROOT / "corpus"
    rows = make_corpus(corpus)
    server, base = serve(corpus)
    try:
        url_list = DEMO_ROOT / "urls.csv"
        with url_list.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["url", "caption", "license", "attribution"])
            writer.writerows([f"{base}/{name}", *rest] for name, *rest in rows)
            writer.writerow(["not a url", "", "", ""])
        people = [name for name, _, _, attribution in rows if attribution == PEOPLE_ATTRIBUTION]
        yield Corpus(str(url_list), people)
    finally:
        server.shutdown()


def fill_arguments(args: argparse.Namespace, corpus: Corpus) -> None:
    """The job's parsed flags completed for the demo: the corpus as input, ./demo_out/dataset
    as output and the nano detector unless given, and loopback addresses allowed (the corpus
    is served there)."""
    if not getattr(args, "source__inputs", None):
        args.source__inputs = [corpus.url_list]
    if not getattr(args, "output__output", None):
        args.output__output = str(DEMO_ROOT / "dataset")
    args.fetch__allow_private_addresses = True
    in_file = cli.load_file(args.config).get("detector")  # the job refuses a bad one later
    weights_in_file = isinstance(in_file, dict) and "weights" in in_file
    if not hasattr(args, "detector__weights") and not weights_in_file:
        # A smoke test on whatever machine runs it: the nano model runs on a CPU in
        # seconds; the job's default (yolo11x.pt) is sized for GPU workers.
        args.detector__weights = "yolo11n.pt"


def without_missing_detector(config: JobConfig) -> JobConfig:
    """``config``, or with the person detector off and a note saying why when its weights
    are not available (offline, no --detector-weights)."""
    try:
        check_filters_ready(config.detector, config.classifiers)
    except WeightsError as exc:
        print(
            f"\nNo person-detector weights available ({exc}).\n"
            "The demo runs WITHOUT the person filter: every valid image is kept. "
            "Online, Ultralytics downloads the weights; or pass --detector-weights PATH.\n"
        )
        return dataclasses.replace(
            config, detector=dataclasses.replace(config.detector, weights="none")
        )
    return config


def print_outcomes(dataset_uri: str, corpus: Corpus) -> None:
    """What became of each photograph of people, and a first query to try."""
    for line in people_outcomes(dataset_uri, corpus.people):
        print(line)
    print(
        f'\nQuery it:  python -m curation.query "SELECT format, count(*) FROM samples GROUP BY 1" '
        f"--dataset {dataset_uri}"
    )
