"""Task heads on the ViT feature map and the model that joins them to the backbone."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from models.vit import VisionTransformer


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    out_channels: int  # output maps
    num_deconv: int  # stride-2 transposed convolutions (each doubles the resolution)
    num_conv: int  # 1x1 convolutions after them, before the output layer
    channels: int  # Sapiens' width of the deconvolutions and convolutions


HEAD_KINDS = ("sapiens", "light")


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


def build_head(spec: HeadSpec, kind: str, in_dim: int, channels: int | None = None,
               light_deconv: int | None = None) -> nn.Module:  # fmt: skip
    """A head to ``spec``: ``kind`` "sapiens" (the default) or "light" (``light_deconv``
    deconvolutions, no 1x1 convs); ``channels`` None takes ``spec.channels`` (Sapiens')."""
    channels = channels or spec.channels
    if kind == "sapiens":
        return SapiensHead(in_dim, spec, channels)
    if kind == "light":
        light = HeadSpec(out_channels=spec.out_channels, num_deconv=light_deconv or spec.num_deconv,
                         num_conv=0, channels=channels)  # fmt: skip
        return DeconvHead(in_dim, light, channels)
    raise ValueError(f"unknown head {kind!r}; choose from {HEAD_KINDS}")


class TaskModel(nn.Module):
    """Backbone + head + the task's output layer (unit normals, positive depth, or none).

    The output layer holds no parameters, so checkpoints hold ``encoder.*`` and ``head.*``.
    """

    def __init__(
        self, encoder: VisionTransformer, head: nn.Module, output: nn.Module, task: str
    ) -> None:
        super().__init__()
        self.task = task
        self.encoder = encoder
        self.head = head
        self.output = output

    def forward(self, images: Tensor) -> Tensor:
        return self.output(self.head(self.encoder(images)))  # [N, out, h, w]
