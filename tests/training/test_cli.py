"""The training entry points' command lines: bad input is one line on stderr and exit code 2,
found before Ray starts or anything is written; flags, config files and deprecated spellings
resolve to the same typed config."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.mae import MAE, MAEConfig
from models.vit import vit_test
from schemas.labelled import TASKS
from tests.training.pretrain_shards import write_dataset as write_pretrain_dataset
from training import checkpoint, cli, config, convert, evaluate, finetune, predict, pretrain
from training.tasks import synthetic
from training.tasks.model import build_model, load_checkpoint
from training.tasks.shards import write_dataset
from training.tasks.synthetic import synthetic_samples

ROOT = Path(__file__).resolve().parents[2]
SIZE = ["--image-size", "64,48"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A curated dataset, a labelled one, an empty labelled one, an MAE run, its encoder, a
    fine-tuned task model, a finetuning-run checkpoint and a few hostile files."""
    root = tmp_path_factory.mktemp("cli")
    write_pretrain_dataset(str(root / "curated"), shards=1, per_shard=4, size=(32, 32))
    write_dataset(str(root / "labelled"), synthetic_samples(2, 0, 64, 48), list(TASKS), 8)
    (root / "empty" / "shards").mkdir(parents=True)  # what convert used to leave behind
    (root / "empty" / "labelled.json").write_text((root / "labelled" / "labelled.json").read_text())
    with open(root / "empty" / "shards" / "000000.tar", "wb") as f:
        f.write(b"\0" * 1024)  # an empty tar: two zero blocks
    for name, description, tar in [
        ("listjson", "[]", b""),
        ("badtasks", '{"format": "humans300m-labelled", "version": 2, "tasks": "seg"}', b""),
        ("badtar", '{"format": "humans300m-labelled", "version": 2, "tasks": ["seg"]}', b"x" * 999),
    ]:
        (root / name / "shards").mkdir(parents=True)
        (root / name / "labelled.json").write_text(description)
        (root / name / "shards" / "000000.tar").write_bytes(tar)
    mae = MAE(MAEConfig(encoder=vit_test(image_size=32), decoder_dim=32, decoder_depth=1,
                        decoder_heads=4, decoder_mlp_dim=64))  # fmt: skip
    _save_run(root / "mae_run", mae, {"preset": "vit_test", "image_size": 32})
    assert (
        checkpoint.main(["--source", str(root / "mae_run"), "--output", str(root / "enc.pt")]) == 0
    )
    cfg = config.FinetuneConfig(task="seg", dataset="-", output="-", preset="vit_test",
                                image_size=(64, 48), head_channels=16)  # fmt: skip
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg)}, root / "seg.pt")
    _save_run(root / "seg_run", model, dataclasses.asdict(cfg))
    record = {**dataclasses.asdict(cfg), "total_steps": "many"}  # a hand-made record
    torch.save({"model": model.state_dict(), "config": record}, root / "badrecord.pt")
    _save_run(root / "badrun", mae, {"preset": "vit_test", "image_size": "big"})
    data = (root / "seg.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save([1, 2, 3], root / "list.pt")
    with zipfile.ZipFile(root / "crafted.pt", "w") as archive:  # a torch layout, a bad pickle
        archive.writestr("crafted/data.pkl", b"\x80\x02cos\nsystem\nq\x00.")
        archive.writestr("crafted/version", "3\n")
    (root / "text.jpg").write_text("not an image")
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(root / "person.png")
    (root / "folder").mkdir()
    (root / "a_file").write_text("x")
    return {p.stem: str(p) for p in root.iterdir()}


def _save_run(folder: Path, model: torch.nn.Module, fields: dict) -> None:
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint.save(str(folder), step=1, model=model, optimizer=optimizer, scheduler=scheduler,
                    data_position={}, extra={"config": fields})  # fmt: skip


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start for input that can be refused before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for input that should have been refused")

    monkeypatch.setattr("training.ray_train.launch", refuse)
    monkeypatch.setattr("runtime.ray_env.start_ray", refuse)


def _refused(capsys, main, argv: list[str]) -> str:
    """The one line ``main(argv)`` printed on its way to exit code 2."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors exit from inside
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


PRETRAIN = [
    ([], "missing --dataset: required (give it on the command line or as dataset in --config)"),
    (["--preset", "sapiens_0.3"], "unknown --preset 'sapiens_0.3'; choose from sapiens_0.3b"),
    (["--dataset", "{missing}"], "--dataset {missing}: no such folder"),
    (["--dataset", "{folder}"], "no shards under"),
    (["--dataset", "{a_file}"], "is a file, expected a folder"),
    (["--where", "nope > 1"], 'does not run on the manifest {curated}/manifests/000000.parquet: '
                              'Binder Error: Referenced column "nope" not found'),
    (["--where", "num_persons >"], "is not a SQL predicate"),
    (["--where", "num_persons > 1; SELECT 1"], "must be one SQL expression"),
    (["--config", "{missing}"], "config file not found: {missing}"),
    (["--use-gpu", "ture"], "unrecognized arguments: ture"),
    (["--no-ray", "true"], "unrecognized arguments: true"),
    (["--total-steps", "0"], "--total-steps must be at least 1, got 0"),
    (["--batch-size", "-4"], "--batch-size must be at least 1, got -4"),
    (["--image-size", "30"], "--image-size 30 must be positive multiples of preset vit_test's"),
    (["--image-size", "-32"], "--image-size -32 must be positive multiples"),
    (["--mask-ratio", "nan"], "expected a finite number"),
    (["--num-workers", "2", "--no-ray"], "--no-ray runs a single worker"),
    (["--output", "{a_file}"], "--output {a_file}: is a file, expected a folder"),
    (["--log-dir", "{a_file}"], "--log-dir {a_file}: is a file, expected a folder"),
    (["--output", ""], "an empty path"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: no Ray cluster answers there"),
    (["--ray-address", "ray://:x"], "--ray-address 'ray://:x': expected host:port"),
]  # fmt: skip


def _fill(argv: list[str], files: dict[str, str], tmp_path: Path) -> list[str]:
    names = {**files, "missing": str(tmp_path / "missing"), "out": str(tmp_path / "out")}
    return [a.format(**names) for a in argv]


def _pretrain_argv(flags: list[str], files: dict[str, str]) -> list[str]:
    if not flags:
        return []
    base = {"--dataset": files["curated"], "--output": "{out}", "--preset": "vit_test",
            "--image-size": "32"}  # fmt: skip
    given = set(flags[::2])
    return [*flags, *(x for k, v in base.items() if k not in given for x in (k, v))]


@pytest.mark.parametrize(("flags", "message"), PRETRAIN)
def test_pretrain_refuses(capsys, files, tmp_path, no_ray, flags, message):
    argv = _fill(_pretrain_argv(flags, files), files, tmp_path)
    assert _fill([message], files, tmp_path)[0] in _refused(capsys, pretrain.main, argv)


def test_pretrain_config_file_is_strict(capsys, files, tmp_path, no_ray):
    path = tmp_path / "c.yaml"
    for text, message in [
        ("bf16: 'false'\n", "config bf16: expected true/false, got 'false'"),
        ("batch_size: 4.5\n", "config batch_size: expected an integer"),
        ("batchsize: 4\n", "config file: unknown keys ['batchsize']"),
        ("- a list\n", "expected a mapping"),
        ("dataset: [unclosed\n", "not valid YAML"),
        (
            "img_size: 32\nimage_size: 32\n",
            "config img_size: an old name of image_size, which is also given",
        ),
    ]:
        path.write_text(text)
        argv = ["--config", str(path), "--dataset", files["curated"], "--output", str(tmp_path)]
        assert message in _refused(capsys, pretrain.main, argv)


def test_a_good_pretrain_run_reaches_ray(capsys, files, tmp_path, monkeypatch):
    """The checks let a good run through: the same flags with a valid predicate reach launch."""

    def launch(train_loop, values, scaling):
        Path(values["output"], "summary.json").write_text(json.dumps({"where": values["where"]}))

    monkeypatch.setattr("training.ray_train.launch", launch)
    argv = _fill(_pretrain_argv(["--where", "num_persons >= 0"], files), files, tmp_path)
    Path(tmp_path / "out").mkdir()
    assert pretrain.main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"where": "num_persons >= 0"}


FINETUNE = [
    ([], "missing --task: required"),
    (["--task", "keypoints"], "unknown --task 'keypoints'; choose from pose, seg, depth, normal"),
    (["--preset", "vit_huge"], "unknown --preset 'vit_huge'; choose from sapiens_0.3b"),
    (["--dataset", "{missing}"], "--dataset {missing}: no such folder"),
    (["--dataset", "{curated}"], "is not a labelled dataset (no labelled.json)"),
    (["--dataset", "{empty}"], "--dataset {empty} holds no samples labelled for seg"),
    (["--dataset", "{listjson}"], "not a labelled dataset (its description is a list)"),
    (["--dataset", "{badtasks}"], "not a labelled dataset (tasks 'seg', expected a list of"),
    (["--dataset", "{badtar}"], "--dataset {badtar}: unreadable sample (ReadError"),
    (["--pretrained", "{missing}"], "--pretrained {missing}: no such file"),
    (["--pretrained", "{folder}"], "--pretrained {folder}: is a folder, expected a file"),
    (["--pretrained", "{truncated}"], "--pretrained {truncated}: not a torch checkpoint"),
    (["--pretrained", "{crafted}"], "--pretrained {crafted}: not readable"),
    (["--pretrained", "{a_file}"], "not a torch checkpoint (no zip archive)"),
    (["--pretrained", "{list}"], "holds a list, not a state dict"),
    (["--pretrained", "{enc}", "--preset", "vit_tiny"], "pretrained checkpoint lacks"),
    (["--image-size", "60,48"], "--image-size (60, 48) must be positive multiples of preset "
                                "vit_test's patch size 16"),
    (["--image-size", "64,48,32"], "--image-size takes height and width, got (64, 48, 32)"),
    (["--image-size", "64,x"], "argument --image-size: expected an integer, got 'x'"),
    (["--total-steps", "0"], "--total-steps must be at least 1, got 0"),
    (["--num-workers", "0"], "--num-workers must be at least 1, got 0"),
    (["--class-weights", "1,2"], "--class-weights needs 28 values"),
    (["--class-weights", *["-1"] * 28], "--class-weights needs 28 values, none negative"),
    (["--ray-address", "127.0.0.1:1"], "no Ray cluster answers there"),
    (["--gpu", "true"], "unrecognized arguments: true"),
]  # fmt: skip


def _finetune_argv(flags: list[str], files: dict[str, str]) -> list[str]:
    if not flags:
        return []
    base = {"--task": "seg", "--dataset": files["labelled"], "--output": "{out}",
            "--preset": "vit_test", "--image-size": "64,48", "--pretrained": files["enc"]}  # fmt: skip
    given = set(flags[::2])
    return [*flags, *(x for k, v in base.items() if k not in given for x in (k, v))]


@pytest.mark.parametrize(("flags", "message"), FINETUNE)
def test_finetune_refuses(capsys, files, tmp_path, no_ray, flags, message):
    argv = _fill(_finetune_argv(flags, files), files, tmp_path)
    assert _fill([message], files, tmp_path)[0] in _refused(capsys, finetune.main, argv)


def test_finetune_checks_let_a_good_run_through(files, tmp_path):
    cfg = finetune.parse_args(_fill(_finetune_argv(["--head", "light"], files), files, tmp_path))
    finetune.check(cfg)  # the encoder loads onto the meta device, the dataset has seg samples


EVALUATE = [
    ([], "missing --checkpoint: required"),
    (["--checkpoint", "{missing}"], "--checkpoint {missing}: no such file or folder"),
    (["--dataset", "{missing}"], "--dataset {missing}: no such folder"),
    (["--checkpoint", "{mae_run}"], "{mae_run} is a pretraining run, not a fine-tuned one"),
    (["--checkpoint", "{truncated}"], "not a readable checkpoint file"),
    (["--checkpoint", "{list}"], "not a task model file"),
    (["--checkpoint", "{folder}"], "no fine-tuning checkpoint at {folder}"),
    (["--checkpoint", "{badrecord}"], "config recorded.total_steps: expected an integer"),
    (["--dataset", "{empty}"], "--dataset {empty} holds no samples labelled for seg"),
    (["--dataset", "{curated}"], "is not a labelled dataset"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--output", "{folder}"], "--output {folder}: is a folder, expected a file name"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), EVALUATE)
def test_evaluate_refuses(capsys, files, tmp_path, flags, message):
    base = {"--checkpoint": files["seg"], "--dataset": files["labelled"]}
    argv = [*flags, *(x for k, v in base.items() if k not in flags[::2] for x in (k, v))]
    argv = _fill(argv if flags else [], files, tmp_path)
    assert _fill([message], files, tmp_path)[0] in _refused(capsys, evaluate.main, argv)


def test_evaluate_reads_a_run_and_an_old_checkpoint(capsys, files, tmp_path):
    """A run folder evaluates; a checkpoint written before the flag renames still loads."""
    assert evaluate.main(["--checkpoint", files["seg_run"], "--dataset", files["labelled"],
                          "--output", str(tmp_path / "m.json")]) == 0  # fmt: skip
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["task"] == "seg" and 0 <= result["mIoU"] <= 1
    state = torch.load(files["seg"], weights_only=True)
    fields = dict(state["config"])
    for old, new in [("data", "dataset"), ("input_size", "image_size"), ("steps", "total_steps"),
                     ("grad_clip", "clip_grad"), ("workers", "num_workers"), ("gpu", "use_gpu")]:  # fmt: skip
        fields[old] = fields.pop(new)
    fields["no_ray"] = not fields.pop("ray")
    torch.save({"model": state["model"], "config": fields}, tmp_path / "old.pt")
    _, loaded = load_checkpoint(str(tmp_path / "old.pt"))
    assert loaded["image_size"] == (64, 48) and loaded["ray"] is True
    assert capsys.readouterr().err == ""  # records are read silently: no deprecation warning


PREDICT = [
    ([], "missing --task: required"),
    (["--images", "{missing}"], "--images {missing}: no such file"),
    (["--images", "{text}"], "--images {text}: not a readable image"),
    (["--images", "{folder}"], "--images {folder}: is a folder, expected a file"),
    (["--checkpoint", "{missing}"], "--checkpoint {missing}: no such file or folder"),
    (["--checkpoint", "{truncated}"], "not a readable checkpoint file"),
    (["--task", "pose"], "checkpoint is for task 'seg', not 'pose'"),
    (["--task", "keypoints"], "unknown --task 'keypoints'"),
    (["--boxes", "{text}"], "--boxes {text}: not valid JSON"),
    (["--boxes", "{boxes}"], "'person.png' needs a list of [x, y, w, h], w, h > 0"),
    (["--output", "{a_file}"], "--output {a_file}: is a file, expected a folder"),
    (["--image-size", "0", "48"], "--image-size takes a positive height and width"),
    (["--images", "{person}", "{twin}"], "--images {person} and {twin} share the name 'person'"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), PREDICT)
def test_predict_refuses(capsys, files, tmp_path, flags, message):
    (tmp_path / "boxes").write_text(json.dumps({"person.png": [[0, 0, -5, 10]]}))
    (tmp_path / "twin").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "twin" / "person.jpg")
    names = {
        **files,
        "boxes": str(tmp_path / "boxes"),
        "twin": str(tmp_path / "twin" / "person.jpg"),
    }
    base = {"--task": "seg", "--checkpoint": files["seg"], "--images": files["person"],
            "--output": str(tmp_path / "o")}  # fmt: skip
    argv = [*flags, *(x for k, v in base.items() if k not in flags[::2] for x in (k, v))]
    argv = _fill(argv if flags else [], names, tmp_path)
    assert _fill([message], names, tmp_path)[0] in _refused(capsys, predict.main, argv)
    assert not (tmp_path / "o").exists()  # refused before the first overlay


def test_predict_refuses_a_non_image_also_after_ultralytics_patched_pillow(capsys, files, tmp_path):
    import ultralytics  # noqa: F401 - its import makes Image.open try a HEIF plugin not installed

    argv = ["--task", "seg", "--checkpoint", files["seg"], "--images", files["text"],
            "--output", str(tmp_path / "o")]  # fmt: skip
    assert "not a readable image" in _refused(capsys, predict.main, argv)


def test_convert_refuses_and_writes_nothing(capsys, files, tmp_path):
    images, seg = tmp_path / "img", tmp_path / "seg"
    images.mkdir()
    seg.mkdir()
    out = str(tmp_path / "ds")
    (tmp_path / "kp.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "../x.png"}],
        "annotations": [{"image_id": 1, "bbox": [0, 0, 4, 4], "keypoints": [1, 1, 2] * 17}]}))  # fmt: skip
    cases = [
        (["coco", "--json", str(tmp_path / "no.json"), "--images", str(images)],
         f"--json {tmp_path / 'no.json'}: no such file"),
        (["coco", "--json", files["text"], "--images", str(images)], "not valid JSON"),
        (["coco", "--json", str(tmp_path / "kp.json"), "--images", str(images)],
         "--json names '../x.png', not a file in --images"),
        (["coco", "--json", str(tmp_path / "kp.json"), "--images", str(tmp_path / "nope")],
         "--images " + str(tmp_path / "nope") + ": no such folder"),
        (["folders", "--images", str(images)], "give at least one of --seg, --depth, --normal"),
        (["folders", "--images", str(images), "--seg", str(tmp_path / "nope")], "no such folder"),
        (["folders", "--images", str(images), "--seg", str(seg)], "nothing to convert"),
        (["folders", "--images", str(images), "--seg", str(seg), "--max-shard-samples", "0"],
         "--max-shard-samples must be at least 1, got 0"),
        (["folders", "--images", str(images), "--seg", str(seg), "--output", files["labelled"]],
         f"--output {files['labelled']} already holds a dataset"),
        (["folders", "--images", str(images), "--normal", str(seg)], "normals without --depth"),
    ]  # fmt: skip
    for argv, message in cases:
        if "--output" not in argv:
            argv = [*argv, "--output", out]
        assert message in _refused(capsys, convert.main, argv)
        assert not Path(out).exists()  # no empty shards/000000.tar for evaluate to score NaN
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "b.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(seg / "a.png")  # b has no label
    argv = ["folders", "--images", str(images), "--seg", str(seg), "--output", out]
    assert "no label for 'b'" in _refused(capsys, convert.main, argv)
    assert not Path(out).exists()  # every label is looked for before anything is written
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(seg / "b.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "b.jpg")
    assert "b.jpg and b.png share a key" in _refused(capsys, convert.main, argv)
    (images / "b.jpg").unlink()
    assert convert.main(argv) == 0 and Path(out, "shards", "000000.tar").is_file()


CHECKPOINT = [
    ([], "missing --source: required"),
    (["--source", "{missing}"], "--source {missing}: no such folder"),
    (["--source", "{folder}"], "--source {folder}: no checkpoint"),
    (["--source", "{seg_run}"], "is a fine-tuning (seg) checkpoint"),
    (["--source", "{labelled}"], "no checkpoint"),
    (["--source", "{badrun}"], "records an unusable config"),
    (["--output", "{folder}"], "--output {folder}: is a folder, expected a file name"),
    (["{mae_run}", "{out}", "extra"], "unexpected arguments ['extra']"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), CHECKPOINT)
def test_checkpoint_refuses(capsys, files, tmp_path, flags, message):
    base = {"--source": files["mae_run"], "--output": str(tmp_path / "e.pt")}
    given = set(flags[::2])
    argv = flags if not flags or not flags[0].startswith("--") else [
        *flags, *(x for k, v in base.items() if k not in given for x in (k, v))]  # fmt: skip
    argv = _fill(argv, files, tmp_path)
    assert _fill([message], files, tmp_path)[0] in _refused(capsys, checkpoint.main, argv)


def test_checkpoint_refuses_a_damaged_step(capsys, files, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files["mae_run"], run)
    (step,) = (run / "checkpoints").glob("step_*")
    (step / "model.pt").write_bytes((step / "model.pt").read_bytes()[:100])
    argv = ["--source", str(run), "--output", str(tmp_path / "e.pt")]
    assert "not a readable checkpoint file" in _refused(capsys, checkpoint.main, argv)
    (run / "checkpoints" / "latest.json").write_text("{")
    assert "unreadable checkpoints/latest.json" in _refused(capsys, checkpoint.main, argv)


def test_synthetic_refuses(capsys, tmp_path):
    msg = _refused(capsys, synthetic.main, [str(tmp_path / "s"), "--num", "0"])
    assert "--num must be at least 1, got 0" in msg
    assert "at least 16" in _refused(capsys, synthetic.main, ["--output", "x", "--size", "8", "8"])


IMPORT_SAPIENS = [
    ([], "missing SOURCE: required"),
    (["{missing}", "{out}"], "SOURCE {missing}: no such file"),
    (["{folder}", "{out}"], "SOURCE {folder}: is a folder, expected a file"),
    (["{a_file}", "{folder}"], "OUTPUT {folder}: is a folder, expected a file name"),
    (["{a_file}", "{out}", "--task", "keypoints"], "unknown --task 'keypoints'"),
    (["{a_file}", "{out}", "--preset", "vit_huge"], "unknown --preset 'vit_huge'"),
    (["{a_file}", "{out}", "--image-size", "60", "48"], "must be positive multiples of 16"),
    (["{a_file}", "{out}"], "not a torch checkpoint"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), IMPORT_SAPIENS)
def test_import_sapiens_refuses(capsys, files, tmp_path, argv, message):
    from training import import_sapiens

    argv = _fill(argv, files, tmp_path)
    assert _fill([message], files, tmp_path)[0] in _refused(capsys, import_sapiens.main, argv)
    assert not (tmp_path / "out").exists()  # nothing written on refusal


def test_deprecated_spellings_still_work_with_a_warning(capsys, files, tmp_path):
    argv = ["--task", "seg", "--data", files["labelled"], "--output", str(tmp_path / "o"),
            "--input-size", "64", "48", "--steps", "7", "--warmup-steps", "1", "--grad-clip", "0.5", "--workers", "2",
            "--gpu", "--preset", "vit_test"]  # fmt: skip
    cfg = finetune.parse_args(argv)
    assert (cfg.dataset, cfg.image_size, cfg.total_steps) == (files["labelled"], (64, 48), 7)
    assert (cfg.clip_grad, cfg.num_workers, cfg.use_gpu) == (0.5, 2, True)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: --data is deprecated, use --dataset",
        "warning: --input-size is deprecated, use --image-size",
        "warning: --steps is deprecated, use --total-steps",
        "warning: --grad-clip is deprecated, use --clip-grad",
        "warning: --workers is deprecated, use --num-workers",
        "warning: --gpu is deprecated, use --use-gpu",
    ]
    assert finetune.parse_args([*argv[:-3], "--no-gpu", "--preset", "vit_test"]).use_gpu is False
    assert "warning: --no-gpu is deprecated, use --no-use-gpu" in capsys.readouterr().err
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"img_size": 64, "no_ray": True, "dataset": "d", "output": "o"}))
    cfg = pretrain.parse_args(["--config", str(path), "--preset", "vit_test"])
    assert (cfg.image_size, cfg.ray) == (64, False)
    assert capsys.readouterr().err.splitlines() == [
        "warning: config key no_ray is deprecated, use ray: false",
        "warning: config key img_size is deprecated, use image_size",
    ]
    out = str(tmp_path / "enc.pt")
    assert checkpoint.main([files["mae_run"], out]) == 0 and Path(out).is_file()
    assert "warning: positional SOURCE OUTPUT is deprecated, use --source --output" in (
        capsys.readouterr().err
    )


def test_sizes_take_one_form_everywhere():
    for argv in (["64", "48"], ["64,48"]):
        cfg = predict_config(["--image-size", *argv])
        assert cfg.image_size == (64, 48)
    cfg = predict_config(["--images", "a.png", "b.png", "--images", "c.png"])
    assert cfg.images == ("a.png", "b.png", "c.png")


def predict_config(flags: list[str]) -> config.PredictConfig:
    parser = cli.parser(config.PredictConfig, "predict", "")
    argv = ["--task", "seg", "--checkpoint", "c", *flags]
    argv += [] if "--images" in flags else ["--images", "x.png"]
    return cli.config(parser.parse_args(argv))


CONFIGS = [config.PretrainConfig, config.FinetuneConfig, config.EvaluateConfig,
           config.PredictConfig, config.CocoConvertConfig, config.FoldersConvertConfig,
           config.CheckpointConfig, config.SyntheticConfig,
           config.ImportSapiensConfig]  # fmt: skip


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_flag_has_help(cls):
    for f in dataclasses.fields(cls):
        assert len(f.metadata.get("help", "")) > 10, f"{cls.__name__}.{f.name} has no help"


def test_a_real_process_prints_one_line_and_no_traceback(files, tmp_path):
    """As a user sees it: ``python -m training.pretrain --where "nope > 1"``."""
    argv = _pretrain_argv(["--where", "nope > 1"], files)
    argv = _fill(argv, files, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "training.pretrain", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "INFO" not in line]
    assert len(lines) == 1 and 'column "nope" not found' in lines[0], proc.stderr
