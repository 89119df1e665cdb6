"""Decoding and the Sapiens pretraining augmentation.

RandomResizedCrop (scale 0.2-1.0, ratio 3/4-4/3, bicubic) to the configured size and a
horizontal flip run in the loader processes on uint8 pixels; the ImageNet normalisation runs
on the training device (``normalize``), which keeps the tensors crossing processes 4x smaller.

The path is built for 1024 px outputs, where the resize writes 1M pixels per image:
- JPEGs are decoded by OpenCV's libjpeg-turbo (the same library and output as Pillow's) straight
  into a numpy array, at 1/2, 1/4 or 1/8 scale when the chosen crop is at least twice the
  output, so the loader neither pays for pixels the resize would throw away nor for Pillow's
  RGBX-to-RGB copy. Other formats go through Pillow (any mode, EXIF orientation) then numpy.
- The crop is a numpy view (no copy); ``cv2.resize`` writes the output pixels straight into the
  caller's buffer (a slot of the batch). Upscales use bicubic interpolation (OpenCV's a=-0.75
  kernel, SIMD; Pillow's bicubic is a=-0.5 and ~6x slower here); downscales, which a reduced
  decode keeps under 2x for JPEGs, use INTER_AREA, which antialiases like Pillow's resize does
  (mean absolute difference to Pillow's antialiased bicubic ~0.5-0.8 grey levels on
  photo-like images, see tests and BENCHMARKS.md, pretraining).
- The flip is done in place on the output; the result stays uint8 and height x width x
  channel in memory, handed on as a [3, H, W] view (channels-last strides) without a copy.
"""

from __future__ import annotations

import io
import math
import random

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# cv2.imdecode flags: RGB channel order (not OpenCV's default BGR); the IMREAD_REDUCED_* bits
# without their colour bit, which cannot be combined with IMREAD_COLOR_RGB
_RGB = cv2.IMREAD_COLOR_RGB
_REDUCED = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}  # fmt: skip


class SapiensAugment:
    """bytes -> uint8 [3, H, W]; raises on undecodable input (the caller counts it)."""

    def __init__(
        self,
        image_size: tuple[int, int],
        *,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.image_size = image_size
        self.scale = scale
        self.ratio = ratio
        self.flip = flip
        self.rng = rng or random.Random()
        # the loader parallelises over processes, one per core; OpenCV's own thread pool on
        # top would oversubscribe the cores (and makes per-core figures meaningless)
        cv2.setNumThreads(1)

    def __call__(self, data: bytes, out: np.ndarray | None = None) -> torch.Tensor:
        """Augment one encoded image into ``out`` (uint8 [H, W, 3], C-contiguous) if given.

        Returns the pixels as a [3, H, W] view of ``out`` (channels-last strides, no copy).
        """
        height, width = self.image_size
        if out is None:
            out = np.empty((height, width, 3), dtype=np.uint8)
        if out.shape != (height, width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous uint8 array of shape {(height, width, 3)}"
            )
        pixels, (x0, y0, x1, y1), _ = self.decode_crop(data)
        crop = pixels[y0:y1, x0:x1]  # a view: only the crop's pixels are ever read
        # antialiased area resampling when shrinking on both axes, bicubic otherwise
        shrink = crop.shape[1] >= width and crop.shape[0] >= height
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        result = cv2.resize(crop, (width, height), dst=out, interpolation=interpolation)
        if not np.may_share_memory(result, out):  # OpenCV reallocated: never seen, but be safe
            np.copyto(out, result)
        if self.rng.random() < self.flip:
            cv2.flip(out, 1, dst=out)  # in place
        return torch.from_numpy(out).permute(2, 0, 1)

    def decode_crop(self, data: bytes) -> tuple[np.ndarray, tuple[int, int, int, int], int]:
        """RGB uint8 [h, w, 3] pixels, the crop box in them and the decode's scale factor.

        ``pixels`` is at 1/factor of the full resolution; ``box x factor`` (clipped to the full
        size) is the crop in full-resolution oriented pixels.
        """
        img = Image.open(io.BytesIO(data))  # parses the header only
        orientation = _orientation(img)
        rotated = orientation in (5, 6, 7, 8)  # by 90 or 270 degrees
        width, height = (img.height, img.width) if rotated else (img.width, img.height)
        box = self.crop_box(width, height)  # in oriented full-resolution pixels
        pixels, factor = None, 1
        if img.format == "JPEG":
            reduction = min(
                (box[2] - box[0]) / self.image_size[1], (box[3] - box[1]) / self.image_size[0]
            )
            factor = next(f for f in (8, 4, 2, 1) if f <= max(reduction, 1.0))
            # libjpeg-turbo decodes at 1/factor scale (sizes rounded up) and OpenCV applies
            # the EXIF orientation, as Pillow's exif_transpose does; None when undecodable
            # or truncated
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _RGB | _REDUCED[factor])
            expected = (math.ceil(height / factor), math.ceil(width / factor))
            if pixels is not None and pixels.shape[:2] != expected:
                pixels, factor = None, 1  # orientation handled differently: let Pillow decide
        if pixels is None:
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
            pixels, factor = np.asarray(img), 1  # raises on undecodable or truncated input
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"decoded to shape {pixels.shape}, expected [h, w, 3]")
        # after a reduced decode the box snaps to the nearest whole decoded pixels (moves it by
        # less than factor/2 full-resolution pixels: another random box, as good as the first)
        # so the crop is an exact view; without snapping, the sub-pixel offset a view cannot
        # express would shift the output by up to half a pixel
        x0, y0, x1, y1 = (round(v / factor) for v in box)
        x1, y1 = min(max(x1, x0 + 1), pixels.shape[1]), min(max(y1, y0 + 1), pixels.shape[0])
        return pixels, (x0, y0, x1, y1), factor

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
