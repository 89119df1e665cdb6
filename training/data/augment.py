"""Decoding and the Sapiens pretraining augmentation.

RandomResizedCrop (scale 0.2-1.0, ratio 3/4-4/3, bicubic) to the configured size and a
horizontal flip run in the loader processes on uint8 pixels; the ImageNet normalisation runs
on the training device (``normalize``), which keeps the tensors crossing processes 4x smaller.
JPEGs are decoded at a reduced scale (``draft``) when the chosen crop is at least twice the
output size, so the loader does not pay for pixels the resize would throw away.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SapiensAugment:
    """bytes -> uint8 tensor [3, H, W]; raises on undecodable input (the caller counts it)."""

    def __init__(
        self,
        img_size: tuple[int, int],
        *,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.img_size = img_size
        self.scale = scale
        self.ratio = ratio
        self.flip = flip
        self.rng = rng or random.Random()

    def __call__(self, data: bytes) -> torch.Tensor:
        img = Image.open(io.BytesIO(data))
        orientation = _orientation(img)
        rotated = orientation in (5, 6, 7, 8)  # by 90 or 270 degrees
        width, height = (img.height, img.width) if rotated else (img.width, img.height)
        box = self.crop_box(width, height)  # in oriented full-resolution pixels
        reduction = min((box[2] - box[0]) / self.img_size[1], (box[3] - box[1]) / self.img_size[0])
        if img.format == "JPEG" and orientation in (None, 1):
            # decode straight to RGB, at 1/2, 1/4 or 1/8 scale when the crop stays large enough
            reduction = max(reduction, 1.0)
            img.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
        if orientation not in (None, 1):
            img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        sx, sy = img.width / width, img.height / height  # < 1 after a draft decode
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        out_size = (self.img_size[1], self.img_size[0])
        img = img.resize(out_size, Image.Resampling.BICUBIC, box=box)
        if self.rng.random() < self.flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.array(img, dtype=np.uint8)  # [H, W, 3], writable, one copy
        return torch.from_numpy(array).permute(2, 0, 1)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: a box of random area and aspect."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.rng.uniform(*self.scale)
            aspect = math.exp(self.rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                x0 = self.rng.randint(0, width - w)
                y0 = self.rng.randint(0, height - h)
                return x0, y0, x0 + w, y0 + h
        # fallback: a central crop with the aspect clamped into range
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        x0, y0 = (width - w) // 2, (height - h) // 2
        return x0, y0, x0 + w, y0 + h


def _orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is not worth a sample
        return None


def normalize(batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [N, 3, H, W] on any device -> ImageNet-normalised floats."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device, dtype=dtype).view(1, 3, 1, 1)
    return (batch.to(dtype) / 255.0 - mean) / std


def denormalize(batch: torch.Tensor) -> torch.Tensor:
    """Normalised floats -> [0, 1] floats (for pictures)."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch.float() * std + mean).clamp(0, 1)
