"""Surface normals of the person's pixels (Sapiens' normal task), scored by angular error."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.tasks import metrics as M
from training.tasks import transforms as T
from training.tasks.heads import HeadSpec
from training.tasks.losses import normal_loss
from training.tasks.shards import Sample
from training.tasks.task import DenseTask, Predict, foreground, resized


class UnitVectors(nn.Module):
    """Normalises the head's 3 channels to unit length at each pixel."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1, eps=1e-6)


class NormalTask(DenseTask):
    def output_layer(self, cfg) -> nn.Module:
        return UnitVectors()

    def targets(
        self, sample: Sample, matrix: np.ndarray, hw: tuple[int, int], flip: bool
    ) -> dict[str, Tensor]:
        normal = T.warp_image(sample.normal, matrix, hw, nearest=True)
        normal = T.mirror_normals(normal) if flip else normal
        return {"mask": torch.from_numpy(foreground(sample, matrix, hw)),
                "normal": torch.from_numpy(np.ascontiguousarray(normal.transpose(2, 0, 1)))}  # fmt: skip

    def loss(self, out: Tensor, batch: dict, cfg) -> Tensor:
        return normal_loss(out.float(), batch["normal"], batch["mask"])

    def evaluate(self, predict: Predict, loader: Iterable[dict], flip_test: bool) -> dict:
        metrics = M.NormalMetrics()
        for batch in loader:
            pred = resized(predict(batch["image"]), batch["mask"]).permute(0, 2, 3, 1).numpy()
            gt = batch["normal"].permute(0, 2, 3, 1).numpy()
            for p, g, m in zip(pred, gt, batch["mask"].numpy(), strict=True):
                metrics.update(p, g, m)
        return metrics.compute()

    def picture(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The image and, beside it, the normals as colours."""
        n = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-6)
        return np.concatenate([image, ((n * [1, -1, -1] + 1) * 127.5).astype(np.uint8)], axis=1)


NORMAL = NormalTask(
    name="normal",
    head=HeadSpec(out_channels=3, num_deconv=3, num_conv=3, channels=768),  # -> 1/2 input
    light_deconv=3,
    patch_padding=2,
    sapiens_prefix="decode_head.",
)
