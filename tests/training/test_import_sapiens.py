"""Sapiens' released checkpoints in: state dicts built in Sapiens' exact key layout (the
mmpretrain VisionTransformer backbone, mmpose HeatmapHead, mmseg VitHead / VitDepthHead /
VitNormalHead) for small configs, imported, and checked against a forward written out
directly from the same tensors; then fine-tuned, evaluated and run by training.predict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models import encoder_file
from models.vit import VisionTransformer, load_encoder_state, vit_test
from schemas.labelled import NUM_CLASSES, NUM_KEYPOINTS, TASKS
from training import import_sapiens, lineage, predict
from training.config import FinetuneConfig
from training.evaluate import evaluate
from training.finetune import run
from training.tasks.model import build_model, load_checkpoint
from training.tasks.shards import write_dataset
from training.tasks.synthetic import synthetic_samples

CFG = vit_test()  # 64 wide, 2 blocks, 4 heads, MLP 256, patch 16
# Sapiens' heads per task: (deconvs, convs, outputs, patch padding of the backbone)
HEADS = {"pose": (2, 2, NUM_KEYPOINTS, 2), "seg": (3, 3, NUM_CLASSES, 0),
         "depth": (4, 2, 1, 0), "normal": (3, 3, 3, 2)}  # fmt: skip
HEAD_CHANNELS = 16
TASK_GRID = (4, 3)  # a 64x48 input, Sapiens' 4:3


@pytest.fixture(autouse=True)
def one_torch_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def sapiens_backbone(gen: torch.Generator, grid: tuple[int, int], cls: bool) -> dict:
    """Random tensors under the names of Sapiens' mmpretrain VisionTransformer."""
    d, m = CFG.embed_dim, CFG.mlp_dim

    def t(*shape, scale=0.05):
        return torch.randn(*shape, generator=gen) * scale

    state = {
        "backbone.patch_embed.projection.weight": t(d, 3, 16, 16, scale=0.02),
        "backbone.patch_embed.projection.bias": t(d),
        "backbone.pos_embed": t(1, int(cls) + grid[0] * grid[1], d, scale=0.5),
        "backbone.ln1.weight": 1 + t(d), "backbone.ln1.bias": t(d),
    }  # fmt: skip
    if cls:
        state["backbone.cls_token"] = t(1, 1, d, scale=0.5)
    for i in range(CFG.depth):
        p = f"backbone.layers.{i}."
        state |= {
            p + "ln1.weight": 1 + t(d), p + "ln1.bias": t(d),
            p + "attn.qkv.weight": t(3 * d, d, scale=0.15), p + "attn.qkv.bias": t(3 * d),
            p + "attn.proj.weight": t(d, d, scale=0.15), p + "attn.proj.bias": t(d),
            p + "ln2.weight": 1 + t(d), p + "ln2.bias": t(d),
            p + "ffn.layers.0.0.weight": t(m, d, scale=0.15), p + "ffn.layers.0.0.bias": t(m),
            p + "ffn.layers.1.weight": t(d, m, scale=0.1), p + "ffn.layers.1.bias": t(d),
        }  # fmt: skip
    return state


def sapiens_task(gen: torch.Generator, task: str) -> dict:
    """A task model as Sapiens saves it: no class token, a 4:3 table, mmpose/mmseg head."""
    deconvs, convs, outputs, _ = HEADS[task]
    prefix = "head." if task == "pose" else "decode_head."
    state = sapiens_backbone(gen, TASK_GRID, cls=False)
    c_in, c = CFG.embed_dim, HEAD_CHANNELS
    for i in range(deconvs):  # ConvTranspose2d weights are [in, out, k, k]; no bias
        state[f"{prefix}deconv_layers.{3 * i}.weight"] = (
            torch.randn(c_in, c, 4, 4, generator=gen) * 0.1
        )
        c_in = c
    for i in range(convs):
        state[f"{prefix}conv_layers.{3 * i}.weight"] = torch.randn(c, c, 1, 1, generator=gen) * 0.3
        state[f"{prefix}conv_layers.{3 * i}.bias"] = torch.randn(c, generator=gen) * 0.1
    final = "final_layer" if task == "pose" else "conv_seg"
    state[f"{prefix}{final}.weight"] = torch.randn(outputs, c, 1, 1, generator=gen) * 0.3
    state[f"{prefix}{final}.bias"] = torch.randn(outputs, generator=gen) * 0.1
    return state


def reference_features(state: dict, images: torch.Tensor, padding: int) -> torch.Tensor:
    """Sapiens' backbone written out from its tensors: [N, 3, H, W] -> patch tokens [N, L, D]."""
    s = {k.removeprefix("backbone."): v for k, v in state.items()}
    d, heads = CFG.embed_dim, CFG.num_heads
    x = F.conv2d(images, s["patch_embed.projection.weight"], s["patch_embed.projection.bias"],
                 stride=16, padding=padding)  # fmt: skip
    x = x.flatten(2).transpose(1, 2)  # [N, L, D]
    extra = 0
    if "cls_token" in s:
        x = torch.cat([s["cls_token"].expand(len(x), -1, -1), x], dim=1)
        extra = 1
    x = x + s["pos_embed"]
    n, length, _ = x.shape
    for i in range(CFG.depth):
        p = f"layers.{i}."
        h = F.layer_norm(x, (d,), s[p + "ln1.weight"], s[p + "ln1.bias"], 1e-6)
        qkv = F.linear(h, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(n, length, d)
        x = x + F.linear(out, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), s[p + "ln2.weight"], s[p + "ln2.bias"], 1e-6)
        h = F.gelu(F.linear(h, s[p + "ffn.layers.0.0.weight"], s[p + "ffn.layers.0.0.bias"]))
        x = x + F.linear(h, s[p + "ffn.layers.1.weight"], s[p + "ffn.layers.1.bias"])
    x = F.layer_norm(x, (d,), s["ln1.weight"], s["ln1.bias"], 1e-6)
    return x[:, extra:]


def reference_task(state: dict, task: str, images: torch.Tensor) -> torch.Tensor:
    """Sapiens' task model written out: backbone feature map, deconvs, convs, output conv."""
    deconvs, convs, _, padding = HEADS[task]
    tokens = reference_features(state, images, padding)
    gh, gw = images.shape[2] // 16, images.shape[3] // 16
    x = tokens.transpose(1, 2).reshape(len(images), -1, gh, gw)
    prefix = "head." if task == "pose" else "decode_head."
    for i in range(deconvs):
        x = F.conv_transpose2d(
            x, state[f"{prefix}deconv_layers.{3 * i}.weight"], stride=2, padding=1
        )
        x = F.silu(F.instance_norm(x))
    for i in range(convs):
        w, b = (
            state[f"{prefix}conv_layers.{3 * i}.weight"],
            state[f"{prefix}conv_layers.{3 * i}.bias"],
        )
        x = F.silu(F.instance_norm(F.conv2d(x, w, b)))
    final = "final_layer" if task == "pose" else "conv_seg"
    x = F.conv2d(x, state[f"{prefix}{final}.weight"], state[f"{prefix}{final}.bias"])
    return F.normalize(x, dim=1, eps=1e-6) if task == "normal" else x


def _images(n: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *hw, generator=torch.Generator().manual_seed(seed))


def test_pretrained_backbone_import_matches_the_written_out_forward(tmp_path, capsys):
    gen = torch.Generator().manual_seed(1)
    state = sapiens_backbone(gen, (4, 4), cls=True)  # a 64x64 pretraining checkpoint
    decoder = {
        "neck.mask_token": torch.zeros(1, 1, 8),
        "neck.decoder_embed.weight": torch.zeros(8, 64),
    }
    wrapped = {"meta": {"epoch": 1600, "mmengine_version": "0.10.3"},
               "state_dict": {**state, **decoder}}  # fmt: skip
    torch.save(wrapped, tmp_path / "sapiens.pth")
    assert import_sapiens.main([str(tmp_path / "sapiens.pth"), str(tmp_path / "enc.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "vit_test"
    stored = encoder_file.load(str(tmp_path / "enc.pt"))
    assert stored.preset == "vit_test" and stored.config.image_size == (64, 64)
    assert stored.config.cls_token and stored.config.patch_padding == 0
    saved = torch.load(tmp_path / "enc.pt", weights_only=True)["config"]
    assert saved["image_size"] == [64, 64] and "img_size" not in saved  # one glossary
    source = stored.lineage["imported_from"]
    assert source["uri"] == str(tmp_path / "sapiens.pth") and len(source["sha256"]) == 64
    model = VisionTransformer(stored.config).eval()
    assert load_encoder_state(model, stored.state) == ([], [])
    images = _images(2, (64, 64))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images),
                                   reference_features(state, images, 0), atol=1e-5, rtol=1e-4)  # fmt: skip
    # the same tensors without the "backbone." prefix and the wrapper: the same encoder
    bare = {k.removeprefix("backbone."): v for k, v in state.items()}
    torch.save(bare, tmp_path / "clean.pth")
    assert import_sapiens.main([str(tmp_path / "clean.pth"), str(tmp_path / "enc2.pt")]) == 0
    again = encoder_file.load(str(tmp_path / "enc2.pt")).state
    assert again.keys() == stored.state.keys()
    assert all(torch.equal(again[k], stored.state[k]) for k in again)


@pytest.mark.parametrize("task", TASKS)
def test_task_model_import_matches_the_written_out_forward(task, tmp_path):
    gen = torch.Generator().manual_seed(2)
    state = sapiens_task(gen, task)
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": ["a", "b"]}}},
               tmp_path / "task.pth")  # fmt: skip
    result = import_sapiens.run(str(tmp_path / "task.pth"), str(tmp_path / "task.pt"),
                                image_size=(64, 48))  # fmt: skip
    assert (result["kind"], result["task"], result["preset"]) == ("task", task, "vit_test")
    model, config = load_checkpoint(str(tmp_path / "task.pt"))
    assert config["task"] == task and config["patch_padding"] == HEADS[task][3]
    assert model.encoder.cls_token is None  # fine-tuned on the patch tokens only
    images = _images(2, (64, 48))
    with torch.no_grad():
        ours = model(images)
    expected = reference_task(state, task, images)
    scale = 2 ** HEADS[task][0]
    assert ours.shape == (2, HEADS[task][2], 4 * scale, 3 * scale) == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-3)
    # another input size: the same tensors, the position table interpolated to the new grid
    bigger = import_sapiens.run(str(tmp_path / "task.pth"), str(tmp_path / "big.pt"),
                                image_size=(128, 96))  # fmt: skip
    assert bigger["image_size"] == [128, 96] and "input_size" not in bigger  # what it prints
    model, _ = load_checkpoint(bigger["out"])
    assert model.encoder.pos_embed.shape[1] == 8 * 6
    assert model(_images(1, (128, 96))).shape[-2:] == (8 * scale, 6 * scale)


def _traced(state: dict) -> torch.jit.ScriptModule:
    """A traced module holding ``state`` under its dotted names, as Sapiens' lite exports
    hold their estimator's tensors (plus the data preprocessor's mean/std buffers)."""

    class Holder(torch.nn.Module):
        def forward(self, x):
            return x * 2

    root = Holder()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
    pre = Holder()
    pre.register_buffer("mean", torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1))
    pre.register_buffer("std", torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1))
    root.add_module("data_preprocessor", pre)
    return torch.jit.trace(root, torch.zeros(1))


def test_torchscript_lite_export_imports_like_the_pth(tmp_path):
    state = sapiens_task(torch.Generator().manual_seed(3), "seg")
    torch.jit.save(_traced(state), str(tmp_path / "seg_torchscript.pt2"))
    torch.save(state, tmp_path / "seg.pth")
    for name in ("seg_torchscript.pt2", "seg.pth"):
        import_sapiens.run(str(tmp_path / name), str(tmp_path / f"{name}.pt"), image_size=(64, 48))
    a, _ = load_checkpoint(str(tmp_path / "seg_torchscript.pt2.pt"))
    b, _ = load_checkpoint(str(tmp_path / "seg.pth.pt"))
    images = _images(1, (64, 48))
    with torch.no_grad():
        torch.testing.assert_close(a(images), b(images), atol=0, rtol=0)


def _refusal(tmp_path, capsys, state_or_bytes, *args) -> str:
    path = tmp_path / "bad.pth"
    if isinstance(state_or_bytes, bytes):
        path.write_bytes(state_or_bytes)
    else:
        torch.save(state_or_bytes, path)
    assert import_sapiens.main([str(path), str(tmp_path / "out.pt"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "out.pt").exists()
    return err


class Opaque:  # an mmengine meta holding objects weights_only will not unpickle
    pass


def test_bad_files_are_refused_with_one_line_naming_the_keys(tmp_path, capsys):
    gen = torch.Generator().manual_seed(4)
    good = sapiens_task(gen, "pose")
    extra = {**good, "backbone.layers.0.attn.rel_pos.weight": torch.zeros(3),
             "head.unknown.weight": torch.zeros(2)}  # fmt: skip
    err = _refusal(tmp_path, capsys, extra)
    assert "unexpected keys" in err and "backbone.layers.0.attn.rel_pos.weight" in err
    assert "head.unknown.weight" in err
    missing = {k: v for k, v in good.items()
               if k not in ("backbone.layers.1.ln2.weight", "head.conv_layers.3.bias")}  # fmt: skip
    err = _refusal(tmp_path, capsys, missing)
    assert err.endswith("missing keys backbone.layers.1.ln2.weight, head.conv_layers.3.bias")
    no_head_layer = {k: v for k, v in good.items() if not k.startswith("head.conv_layers.3")}
    assert "2 deconvs and 1 convs" in _refusal(tmp_path, capsys, no_head_layer)
    assert "holds a pose model, not seg" in _refusal(tmp_path, capsys, good, "--task", "seg")
    wrong = {**good, "backbone.pos_embed": torch.zeros(1, 13, CFG.embed_dim)}
    assert "neither square nor 4:3" in _refusal(tmp_path, capsys, wrong)

    err = _refusal(tmp_path, capsys, {"state_dict": good, "meta": {"cfg": Opaque()}})
    assert "weights_only=True" in err
    assert "not a torch checkpoint" in _refusal(tmp_path, capsys, b"not a model")


def test_backbone_missing_a_tensor_is_named_in_sapiens_terms(tmp_path, capsys):
    state = sapiens_backbone(torch.Generator().manual_seed(5), (4, 4), cls=True)
    del state["backbone.layers.1.ln2.weight"]
    err = _refusal(tmp_path, capsys, state)
    assert err.endswith("missing keys backbone.layers.1.ln2.weight")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("labelled")
    write_dataset(
        str(root / "d"), synthetic_samples(8, seed=1, height=96, width=72), list(TASKS), 8
    )
    return str(root / "d")


def test_an_encoder_file_written_before_the_rename_still_loads(tmp_path):
    """Encoder files exported before image_size was the one name hold ``img_size``."""

    config = vit_test(image_size=(64, 48))
    written = encoder_file.EncoderFile(config=config, preset="vit_test", lineage={},
                                       state=VisionTransformer(config).state_dict()).to_dict()  # fmt: skip
    old = dict(written, config={("img_size" if k == "image_size" else k): v
                                for k, v in written["config"].items()})  # fmt: skip
    assert old["config"]["img_size"] == [64, 48] and "image_size" not in old["config"]
    torch.save(old, tmp_path / "old.pt")
    stored = encoder_file.load(str(tmp_path / "old.pt"))
    assert stored.config == config and stored.preset == "vit_test"
    # fine-tuning reads it as --pretrained like a new one
    with_old = FinetuneConfig(task="seg", dataset="unused", output=str(tmp_path / "run"),
                              preset="vit_test", image_size=(64, 48),
                              pretrained=str(tmp_path / "old.pt"), head_channels=16, ray=False)  # fmt: skip
    encoder = build_model(with_old).encoder.state_dict()
    assert torch.equal(
        encoder["blocks.0.attn.qkv.weight"], stored.state["blocks.0.attn.qkv.weight"]
    )


def test_finetune_and_evaluate_from_a_sapiens_file(tmp_path, labelled):
    """--pretrained takes the Sapiens .pth itself (class token and its slot dropped, the 4x4
    table interpolated to 4x3); a short CPU run, then the run is evaluated."""
    state = sapiens_backbone(torch.Generator().manual_seed(6), (4, 4), cls=True)
    torch.save({"state_dict": state, "meta": {"epoch": 1600}}, tmp_path / "sapiens_0.pth")
    cfg = FinetuneConfig(task="seg", dataset=labelled, output=str(tmp_path / "run"),
                         preset="vit_test", image_size=(64, 48),
                         pretrained=str(tmp_path / "sapiens_0.pth"), head_channels=16, total_steps=3,
                         batch_size=2, warmup_steps=1, log_every=1, ray=False)  # fmt: skip
    model = build_model(cfg)
    enc = model.encoder.state_dict()
    torch.testing.assert_close(
        enc["blocks.1.mlp.fc2.weight"], state["backbone.layers.1.ffn.layers.1.weight"]
    )
    assert "cls_token" not in enc and enc["pos_embed"].shape == (1, 12, CFG.embed_dim)
    summary = run(cfg)
    assert summary["final_step"] == 3 and summary["image_size"] == [64, 48]
    assert "input_size" not in summary
    made_of = summary["lineage"]
    assert made_of["pretrained"]["uri"] == str(tmp_path / "sapiens_0.pth")
    assert made_of["dataset"] == labelled and made_of["samples_seen"] == 6
    assert lineage.read_lineage(str(tmp_path / "run")) == made_of
    trained, config = load_checkpoint(summary["checkpoint"])
    metrics = evaluate(trained, labelled, "seg", tuple(config["image_size"]), batch_size=4)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and np.isfinite(metrics["pixel_accuracy"])


def test_predict_runs_an_imported_pose_model(tmp_path):
    torch.save(sapiens_task(torch.Generator().manual_seed(7), "pose"), tmp_path / "pose.pth")
    import_sapiens.run(str(tmp_path / "pose.pth"), str(tmp_path / "pose.pt"), image_size=(64, 48))
    image = (np.random.default_rng(0).random((80, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "person.png")
    predict.main(["--task", "pose", "--checkpoint", str(tmp_path / "pose.pt"), "--images",
                  str(tmp_path / "person.png"), "--output", str(tmp_path / "out")])  # fmt: skip
    overlay = np.asarray(Image.open(tmp_path / "out" / "person.pose.png"))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)  # points drawn
    assert lineage.main([str(tmp_path / "pose.pt")]) == 0
    # the released file as it is, imported on the fly: the same overlay
    predict.main(["--task", "pose", "--checkpoint", str(tmp_path / "pose.pth"), "--images",
                  str(tmp_path / "person.png"), "--output", str(tmp_path / "direct"),
                  "--image-size", "64", "48"])  # fmt: skip
    direct = np.asarray(Image.open(tmp_path / "direct" / "person.pose.png"))
    np.testing.assert_array_equal(direct, overlay)
    backbone = sapiens_backbone(torch.Generator().manual_seed(8), (4, 4), cls=True)
    torch.save(backbone, tmp_path / "backbone.pth")
    # a backbone has no head to predict with: one line, exit 2
    assert predict.main(["--task", "pose", "--checkpoint", str(tmp_path / "backbone.pth"),
                         "--images", str(tmp_path / "person.png")]) == 2  # fmt: skip
