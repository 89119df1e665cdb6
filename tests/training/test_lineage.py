"""Lineage: the dataset fingerprint, the record of a run, and the CLI that reads it back."""

from __future__ import annotations

import json

import torch

from models.encoder_file import EncoderFile
from models.vit import VisionTransformer, vit_test
from tests.training.pretrain_shards import write_dataset
from training import lineage


def test_fingerprint_follows_the_manifests(tmp_path):
    root = tmp_path / "d"
    write_dataset(str(root), shards=2, per_shard=4, size=(24, 24))
    first = lineage.files_fingerprint(str(root))
    assert first["folder"] == "manifests" and first["count"] == 2
    assert lineage.files_fingerprint(str(root)) == first  # a listing, stable
    (root / "manifests" / ".tmp-write.parquet").write_bytes(b"x")  # an unfinished write
    assert lineage.files_fingerprint(str(root)) == first
    write_dataset(str(root), shards=3, per_shard=4, size=(24, 24))  # a shard added
    assert lineage.files_fingerprint(str(root))["count"] == 3
    assert lineage.files_fingerprint(str(root))["fingerprint"] != first["fingerprint"]
    empty = lineage.files_fingerprint(str(tmp_path / "nothing"))
    assert empty == {"folder": None, "count": 0, "fingerprint": None}


def test_dataset_lineage_reads_the_release_from_summary_json(tmp_path):
    root = tmp_path / "d"
    write_dataset(str(root), shards=1, per_shard=2, size=(24, 24))
    bare = lineage.dataset_lineage(str(root), "num_persons >= 2")
    assert bare["dataset_run_id"] is None and bare["where"] == "num_persons >= 2"
    summary = {"run_id": "r1", "code_version": "abc1234", "finished_at": "2026-12-01T00:00:00"}
    (root / "summary.json").write_text(json.dumps(summary))
    made_of = lineage.dataset_lineage(str(root))
    assert (made_of["dataset_run_id"], made_of["dataset_code_version"]) == ("r1", "abc1234")
    assert made_of["files"] == bare["files"] and made_of["dataset"] == str(root)


def test_cli_answers_which_dataset_a_model_saw(tmp_path, capsys):
    config = vit_test(image_size=32)
    made_of = {"dataset": "s3://b/humans", "dataset_run_id": "r1", "samples_seen": 64}
    file = EncoderFile(config=config, preset="vit_test", lineage=made_of,
                       state=VisionTransformer(config).state_dict())  # fmt: skip
    (tmp_path / "encoder.pt").write_bytes(file.to_bytes())
    assert lineage.main([str(tmp_path / "encoder.pt")]) == 0
    assert json.loads(capsys.readouterr().out) == made_of
    torch.save({"w": torch.zeros(2)}, tmp_path / "bare.pt")
    assert lineage.main([str(tmp_path / "bare.pt")]) == 2
    assert "no lineage recorded" in capsys.readouterr().err
    (tmp_path / "text.pt").write_text("hello")
    assert lineage.main([str(tmp_path / "text.pt")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
