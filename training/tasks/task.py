"""What a fine-tuning task is: one object holding its data preparation, head, loss, metrics and
prediction rendering (``training.tasks.pose``, ``seg``, ``depth``, ``normal``; the registry
is ``training.tasks.registry``). Fine-tuning, evaluation, prediction and the Sapiens importer
ask the task instead of branching on its name; a new task is one more ``Task``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from training.tasks import transforms as T
from training.tasks.heads import HeadSpec, build_head
from training.tasks.shards import Sample

# images [N, 3, H, W] -> head output [N, C, h, w]: a model, or a baseline in the tests
Predict = Callable[[Tensor], Tensor]


@dataclass(kw_only=True)
class PrepareConfig:
    task: str  # pose | seg | depth | normal
    input_hw: tuple[int, int]  # network input (height, width), e.g. (1024, 768)
    train: bool  # random flip, scale and rotation when True
    heatmap_sigma: float | None = None  # None: 6 px at 256x192, scaled, at least 1
    box_padding: float = 1.25  # pose: box grown by this after the 4:3 expansion

    @property
    def sigma(self) -> float:
        if self.heatmap_sigma is not None:
            return self.heatmap_sigma
        return max(1.0, 6.0 * self.input_hw[0] / 1024)


def jitter(cfg: PrepareConfig, rng: random.Random) -> tuple[bool, float, float]:
    """Training augmentation of one item: (mirror, scale, rotation in degrees)."""
    if not cfg.train:
        return False, 1.0, 0.0
    return rng.random() < 0.5, rng.uniform(0.85, 1.15), rng.uniform(-15, 15)


@dataclass(frozen=True, kw_only=True)
class Task:
    """One fine-tuning task: its constants here, its behaviour in a subclass's methods."""

    name: str  # as in schemas.labelled.TASKS and --task
    head: HeadSpec  # Sapiens' head of the task (its 0.3B-2B configs)
    light_deconv: int  # deconvolutions of the light head (--head light)
    patch_padding: int  # zero padding of the patch conv in Sapiens' config
    sapiens_prefix: str  # the head's key prefix in a Sapiens file

    def build_head(self, kind: str, in_dim: int, channels: int | None = None) -> nn.Module:
        return build_head(self.head, kind, in_dim, channels, self.light_deconv)

    def output_layer(self, cfg: Any) -> nn.Module:
        """What the model puts on the head's output (``cfg``: the FinetuneConfig)."""
        return nn.Identity()

    def items(self, sample: Sample, cfg: PrepareConfig, rng: random.Random) -> list[dict]:
        """Training or evaluation items of one labelled sample (tensors, batched as dicts)."""
        raise NotImplementedError

    def loss(self, out: Tensor, batch: dict, cfg: Any) -> Tensor:
        """The training loss of the model's output ``out`` on ``batch`` (``cfg``: the
        FinetuneConfig)."""
        raise NotImplementedError

    def evaluate(self, predict: Predict, loader: Iterable[dict], flip_test: bool) -> dict:
        """The task's metrics of ``predict`` over evaluation batches."""
        raise NotImplementedError

    def render(
        self, model: Predict, image: np.ndarray, boxes: list, hw: tuple[int, int]
    ) -> np.ndarray:
        """An RGB picture of the model's prediction on ``image`` (pose: one per box)."""
        raise NotImplementedError


class DenseTask(Task):
    """A per-pixel task: the whole image fitted into the 4:3 input, one item per image."""

    def items(self, sample: Sample, cfg: PrepareConfig, rng: random.Random) -> list[dict]:
        h, w = cfg.input_hw
        flip, scale, _ = jitter(cfg, rng)  # no rotation: it would have to rotate normals too
        center, size = T.image_region(sample.meta.width, sample.meta.height, aspect=w / h)
        matrix = T.affine_to_crop(center, size * scale, (h, w), flip=flip)
        image = T.warp_image(sample.image, matrix, (h, w))
        item = {"image": torch.from_numpy(T.normalise_image(image))}
        return [{**item, **self.targets(sample, matrix, (h, w), flip)}]

    def targets(
        self, sample: Sample, matrix: np.ndarray, hw: tuple[int, int], flip: bool
    ) -> dict[str, Tensor]:
        """The labels of ``sample`` warped by ``matrix`` into the input (mirrored if ``flip``)."""
        raise NotImplementedError

    def render(
        self, model: Predict, image: np.ndarray, boxes: list, hw: tuple[int, int]
    ) -> np.ndarray:
        return self.picture(image, dense_output(model, image, hw))

    def picture(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """An RGB picture of the output ``out`` [H, W, C] on ``image`` [H, W, 3]."""
        raise NotImplementedError


def foreground(sample: Sample, matrix: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The sample's foreground mask warped into the input."""
    return T.warp_image(sample.mask.astype(np.uint8), matrix, hw, nearest=True) > 0


def resized(out: Tensor, like: Tensor) -> Tensor:
    """A head output [N, C, h, w] resized (bilinear) to the label's [..., H, W]."""
    return torch.nn.functional.interpolate(out.float(), size=like.shape[-2:], mode="bilinear")


def predict_crop(
    model: Predict, image: np.ndarray, center, size, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The model's output on the crop of ``image`` around (center, size), and the crop's
    affine matrix (image -> crop)."""
    matrix = T.affine_to_crop(center, size, hw)
    crop = T.warp_image(image, matrix, hw)
    with torch.no_grad():
        out = model(torch.from_numpy(T.normalise_image(crop))[None]).float()
    return out[0].numpy(), matrix


def dense_output(model: Predict, image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Head output resized back onto the image: [H, W, C]."""
    h, w = image.shape[:2]
    center, size = T.image_region(w, h, aspect=hw[1] / hw[0])
    out, matrix = predict_crop(model, image, center, size, hw)
    out = torch.nn.functional.interpolate(torch.from_numpy(out)[None], size=hw, mode="bilinear")[0]
    back = T.invert_affine(matrix)
    return T.warp_image(out.permute(1, 2, 0).numpy().copy(), back, (h, w))
