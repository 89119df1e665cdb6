"""Lineage: what a model was made from, recorded by the runs and carried by exported files.

A pretraining or fine-tuning run records, in its checkpoints, its ``summary.json`` and the
encoder it exports (``models.encoder_file``)::

    {"dataset": "s3://b/humans300m",             # the URI it read
     "dataset_run_id": "20261201T...-ab12cd",    # the dataset's summary.json: run id,
     "dataset_code_version": "b69db1c",          #   code version and finish time
     "dataset_finished_at": "2026-12-01T...",    #   (None where the summary lacks them)
     "files": {"folder": "manifests", "count": 812, "fingerprint": "sha256:..."},
     "where": "num_persons >= 2",                # the row predicate, None for all rows
     "samples_seen": 1048576, "samples_skipped": {"decode": 3, ...},
     "pretrained": {...}}                        # fine-tuning: the encoder's own lineage

    python -m training.lineage encoder.pt        # which dataset and release did it see?
    python -m training.lineage runs/pose         # a run folder, a task .pt or an encoder

The fingerprint hashes the sorted (name, size) list of the dataset's manifests (labelled
datasets without manifests: their shard tars): a listing, not the bytes, so it stays cheap at
tens of thousands of files; shards added, removed or rewritten by dedup change it, while a
copy of the dataset elsewhere keeps it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import pyarrow.fs as pafs

from runtime.storage import locate
from schemas.layout import MANIFESTS_DIR, SHARDS_DIR


def files_fingerprint(dataset: str) -> dict[str, Any]:
    """{"folder", "count", "fingerprint"} of the dataset's manifests (or, without any, of
    its shard tars)."""
    root = locate(dataset)
    for folder, suffix in ((MANIFESTS_DIR, ".parquet"), (SHARDS_DIR, ".tar")):
        loc = root.join(folder)
        try:
            infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
        except FileNotFoundError:
            infos = []
        files = sorted(
            (i.base_name, i.size)
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(suffix)
            and not i.base_name.startswith(".")  # a temporary file of an unfinished write
        )
        if files:
            digest = hashlib.sha256("".join(f"{n}\t{s}\n" for n, s in files).encode())
            return {
                "folder": folder,
                "count": len(files),
                "fingerprint": f"sha256:{digest.hexdigest()}",
            }
    return {"folder": None, "count": 0, "fingerprint": None}


def dataset_lineage(dataset: str, where: str | None = None) -> dict[str, Any]:
    """The static part of a run's lineage: the dataset, its release and the row predicate."""
    from curation.manifest import read_summary

    try:
        summary = read_summary(dataset) or {}
    except (OSError, ValueError):  # an unreadable summary is recorded as missing, not fatal
        summary = {}
    return {
        "dataset": locate(dataset).uri,
        "dataset_run_id": summary.get("run_id"),
        "dataset_code_version": summary.get("code_version"),
        "dataset_finished_at": summary.get("finished_at"),
        "files": files_fingerprint(dataset),
        "where": where,
    }


def read_lineage(uri: str) -> dict[str, Any]:
    """The lineage of a model file or run: an exported encoder, a task model ``.pt``
    (``training.import_sapiens`` or ``{"model", "config", "lineage"}``), a run folder (its
    summary.json or latest checkpoint) or a checkpoint step folder."""
    import io

    import torch

    from models import encoder_file
    from runtime.storage import exists, read_bytes
    from training import checkpoint

    loc = locate(uri.rstrip("/"))
    if exists(loc.join("summary.json")):
        summary = json.loads(read_bytes(loc.join("summary.json")))
        if "lineage" in summary:
            return summary["lineage"]
    folder = checkpoint.latest(loc.uri) or loc.uri
    if exists(locate(f"{folder}/state.pt")):
        state = checkpoint.load_file(f"{folder}/state.pt")
        return dict(state.get("extra", {}).get("lineage") or {})
    try:
        obj = torch.load(io.BytesIO(read_bytes(loc)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a bad or foreign pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{uri}: not a model file of this project ({first})") from exc
    if encoder_file.is_encoder_file(obj):
        return encoder_file.parse(obj, uri).lineage
    if isinstance(obj, dict) and "lineage" in obj:
        return dict(obj["lineage"] or {})
    raise ValueError(f"{uri}: no lineage recorded (a bare state dict?)")


def main(argv: list[str] | None = None) -> int:
    """``python -m training.lineage MODEL``: print what a model was made from, as JSON."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training.lineage",
        description="Which dataset and release did this model see? Prints its lineage.",
    )
    parser.add_argument("model", help="encoder.pt, a task model .pt, a run or step folder")
    args = parser.parse_args(argv)
    try:
        lineage = read_lineage(args.model)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(lineage, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
