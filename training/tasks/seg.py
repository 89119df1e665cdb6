"""Body-part segmentation: 28 classes per pixel (Sapiens' seg task), scored by IoU per class."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from schemas.labelled import IGNORE_INDEX, NUM_CLASSES, SEG_CLASSES
from training.tasks import metrics as M
from training.tasks import transforms as T
from training.tasks.heads import HeadSpec
from training.tasks.losses import seg_loss
from training.tasks.shards import Sample
from training.tasks.task import DenseTask, Predict, resized

# A fixed, distinct colour per class (Background black).
CLASS_COLOURS = np.array(
    [[0, 0, 0]]
    + [[(37 * i) % 256, (91 * i + 80) % 256, (151 * i + 40) % 256] for i in range(1, NUM_CLASSES)],
    dtype=np.uint8,
)


class SegTask(DenseTask):
    def targets(
        self, sample: Sample, matrix: np.ndarray, hw: tuple[int, int], flip: bool
    ) -> dict[str, Tensor]:
        seg = T.warp_image(sample.seg, matrix, hw, nearest=True, fill=IGNORE_INDEX)
        return {"label": torch.from_numpy((T.mirror_seg(seg) if flip else seg).astype(np.int64))}

    def loss(self, out: Tensor, batch: dict, cfg) -> Tensor:
        weights = torch.tensor(cfg.class_weights, device=out.device) if cfg.class_weights else None
        return seg_loss(out.float(), batch["label"], weights)

    def evaluate(self, predict: Predict, loader: Iterable[dict], flip_test: bool) -> dict:
        metrics = M.SegMetrics(SEG_CLASSES)
        for batch in loader:
            logits = resized(predict(batch["image"]), batch["label"])
            metrics.update(logits.argmax(1).numpy(), batch["label"].numpy())
        return metrics.compute()

    def picture(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The coloured part map blended onto the image."""
        return (0.5 * image + 0.5 * CLASS_COLOURS[out.argmax(-1)]).astype(np.uint8)


SEG = SegTask(
    name="seg",
    # 3 deconvs + 3 convs -> 1/2 of the input
    head=HeadSpec(out_channels=NUM_CLASSES, num_deconv=3, num_conv=3, channels=768),
    light_deconv=3,
    patch_padding=0,
    sapiens_prefix="decode_head.",  # mmseg's VitHead
)
