"""Task heads on the ViT feature map and the model that joins them to the backbone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.vit import VisionTransformer
from schemas.labelled import NUM_CLASSES, NUM_KEYPOINTS


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    out_channels: int  # output maps
    num_deconv: int  # stride-2 transposed convolutions (each doubles the resolution)
    num_conv: int  # 1x1 convolutions after them, before the output layer
    channels: int  # Sapiens' width of the deconvolutions and convolutions


# Sapiens' heads (0.3B-2B configs): pose 2 deconvs + 2 convs -> 1/4 of the input (256x192
# heatmaps at 1024x768); seg and normals 3 + 3 -> 1/2; depth 4 deconvs + 2 convs of 384
# channels -> the full input resolution.
HEADS = {
    "pose": HeadSpec(out_channels=NUM_KEYPOINTS, num_deconv=2, num_conv=2, channels=768),
    "seg": HeadSpec(out_channels=NUM_CLASSES, num_deconv=3, num_conv=3, channels=768),
    "depth": HeadSpec(out_channels=1, num_deconv=4, num_conv=2, channels=384),
    "normal": HeadSpec(out_channels=3, num_deconv=3, num_conv=3, channels=768),
}
HEAD_KINDS = ("sapiens", "light")
# How the depth head's last conv becomes depth. Sapiens' depth head regresses depth directly
# ("linear": its released depth models are read that way). Heads trained here put a softplus on
# it: with a linear output about half of a fresh head's pixels start below SiLogLoss' clamp with
# no gradient, and short runs did not learn (40 steps on the synthetic figures: loss 8.2 -> 8.8).
DEPTH_OUTPUTS = ("softplus", "linear")
# The light head's deconvolutions: pose at 1/4 as above, the dense tasks at 1/2 (depth too).
LIGHT_DECONV = {"pose": 2, "seg": 3, "depth": 3, "normal": 3}
# Zero padding of the patch convolution in Sapiens' fine-tuning configs (patch_cfg): 2 for
# pose and normals, none for seg and depth. Imported task models need theirs to match.
SAPIENS_PATCH_PADDING = {"pose": 2, "seg": 0, "depth": 0, "normal": 2}


class SapiensHead(nn.Module):
    """Sapiens' head: ``num_deconv`` x (4x4 stride-2 deconv without bias, InstanceNorm, SiLU),
    ``num_conv`` x (1x1 conv, InstanceNorm, SiLU), then a 1x1 output conv.

    Module names follow Sapiens (mmpose ``HeatmapHead``, mmseg ``VitHead``): ``deconv_layers.
    {0,3,...}``, ``conv_layers.{0,3,...}`` (the norms and activations between hold no
    parameters) and ``final_layer`` (mmseg's ``conv_seg``), so a Sapiens checkpoint's head
    tensors map one-to-one. InstanceNorm has no statistics across the batch, which suits the
    few crops per worker of fine-tuning.
    """

    def __init__(self, in_dim: int, spec: HeadSpec, channels: int) -> None:
        super().__init__()
        deconvs: list[nn.Module] = []
        c_in = in_dim
        for _ in range(spec.num_deconv):
            deconvs += [
                nn.ConvTranspose2d(c_in, channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(channels),
                nn.SiLU(inplace=True),
            ]
            c_in = channels
        convs: list[nn.Module] = []
        for _ in range(spec.num_conv):
            convs += [nn.Conv2d(c_in, channels, kernel_size=1), nn.InstanceNorm2d(channels),
                      nn.SiLU(inplace=True)]  # fmt: skip
            c_in = channels
        self.deconv_layers = nn.Sequential(*deconvs)
        self.conv_layers = nn.Sequential(*convs)
        self.final_layer = nn.Conv2d(c_in, spec.out_channels, kernel_size=1)
        for module in self.modules():  # Sapiens' init: N(0, 0.001) kernels, zero biases
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: Tensor) -> Tensor:
        # [N, D, gh, gw] -> [N, out, gh * 2^num_deconv, gw * 2^num_deconv]
        return self.final_layer(self.conv_layers(self.deconv_layers(features)))


class DeconvHead(nn.Module):
    """The light head, for small runs: ``num_deconv`` x (4x4 stride-2 deconv, GroupNorm,
    ReLU), then a 1x1 conv.

    GroupNorm rather than BatchNorm: per-worker batches of a few crops make batch
    statistics noisy, and group statistics do not depend on the batch at all.
    """

    def __init__(self, in_dim: int, spec: HeadSpec, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_dim
        for _ in range(spec.num_deconv):
            layers += [
                nn.ConvTranspose2d(c_in, channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.GroupNorm(math.gcd(32, channels), channels),
                nn.ReLU(inplace=True),
            ]
            c_in = channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, spec.out_channels, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        # [N, D, gh, gw] -> [N, out, gh * 2^num_deconv, gw * 2^num_deconv]
        return self.final(self.deconv(features))


def build_head(task: str, kind: str, in_dim: int, channels: int | None = None) -> nn.Module:
    """The head of ``task``: ``kind`` "sapiens" (the default) or "light"; ``channels`` None
    takes Sapiens' width for the task (768; depth 384)."""
    if task not in HEADS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(HEADS)}")
    spec = HEADS[task]
    channels = channels or spec.channels
    if kind == "sapiens":
        return SapiensHead(in_dim, spec, channels)
    if kind == "light":
        light = HeadSpec(out_channels=spec.out_channels, num_deconv=LIGHT_DECONV[task],
                         num_conv=0, channels=channels)  # fmt: skip
        return DeconvHead(in_dim, light, channels)
    raise ValueError(f"unknown head {kind!r}; choose from {HEAD_KINDS}")


class TaskModel(nn.Module):
    """Backbone + head; normals come out unit length, depth as ``depth_output`` makes it."""

    def __init__(
        self,
        encoder: VisionTransformer,
        task: str,
        head_channels: int | None = None,
        head: str = "sapiens",
        depth_output: str = "softplus",
    ) -> None:
        super().__init__()
        if depth_output not in DEPTH_OUTPUTS:
            raise ValueError(f"unknown depth output {depth_output!r}; choose from {DEPTH_OUTPUTS}")
        self.task = task
        self.depth_output = depth_output
        self.encoder = encoder
        self.head = build_head(task, head, encoder.config.embed_dim, head_channels)

    def forward(self, images: Tensor) -> Tensor:
        out = self.head(self.encoder(images))  # [N, out, h, w]
        if self.task == "normal":
            out = F.normalize(out, dim=1, eps=1e-6)
        elif self.task == "depth" and self.depth_output == "softplus":
            out = F.softplus(out)
        return out


def load_pretrained(encoder: VisionTransformer, state: dict) -> int:
    """Load pretrained weights into ``encoder``; returns the tensors loaded.

    ``state`` is what ``torch.load`` returned for: an encoder file
    (``models.encoder_file``), a pretraining checkpoint (a bare state dict or one
    under "model" / "state_dict", ``encoder.`` prefixes, the MAE decoder dropped), or a
    Sapiens file (its backbone, mapped by ``training.import_sapiens``; a task model's head
    is dropped). The class token is dropped when ``encoder`` has none, and the position
    table is interpolated to this encoder's grid.
    """
    from models import encoder_file
    from models.vit import load_encoder_state
    from training import import_sapiens

    grid = None
    if encoder_file.is_encoder_file(state):
        stored = encoder_file.parse(state)
        state, grid = stored.state, stored.config.grid
    else:
        for key in ("model", "state_dict", "encoder"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
        if import_sapiens.is_sapiens(state):
            backbone = {
                k: v for k, v in state.items() if not k.startswith(("head.", "decode_head."))
            }
            imported = import_sapiens.convert(backbone)
            state, grid = imported.encoder, imported.grid
    own = set(encoder.state_dict()) | {"cls_token"}  # a stored class token is dropped below
    picked = {k.removeprefix("encoder."): v for k, v in state.items()}
    picked = {k: v for k, v in picked.items() if k in own}
    missing = own - set(picked) - ({"cls_token"} - set(encoder.state_dict()))
    if missing:
        raise ValueError(
            f"pretrained checkpoint lacks {len(missing)} encoder tensors, e.g. "
            f"{sorted(missing)[:3]}; is it a checkpoint of the same preset?"
        )
    with torch.no_grad():
        load_encoder_state(encoder, picked, strict=True, grid=grid)
    return len(picked)
