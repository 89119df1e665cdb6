"""Per-image dedup signatures, computed once on the already-decoded image (no second decode).

``pixel_hash`` catches the same pixels in another encoding (PNG of a JPEG's decode, stripped
metadata); ``phash64`` is the classic DCT perceptual hash (as in the ``imagehash`` library:
32x32 grayscale, 2-D DCT-II, the 8x8 lowest frequencies thresholded at their median), which
survives re-encodes, resizes, small crops, blur, noise, grey and colour shifts within a few
bits, taken after uniform borders are trimmed (``content_box``), so that a padded, framed or
letterboxed copy hashes like its source (16-26 bits away untrimmed). Rotations of a few
degrees, crops past ~10%, mirrors and pasted logos move it further than the near pass's radius:
those are the semantic pass's (BENCHMARKS.md, "what pHash catches").
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIZE = 8  # 8x8 low-frequency coefficients -> 64 bits
DCT_SIZE = 32  # working resolution; 4x the hash side, as in the usual pHash


# Largest short side hashed pixel for pixel; larger images are box-reduced to about this first.
PIXEL_HASH_SIDE = 512


def _hashable(image: Image.Image) -> Image.Image:
    """The RGB image the pixel hash covers: itself up to PIXEL_HASH_SIDE, else its box reduction.

    Copying out and hashing every pixel of a 12-megapixel photo costs more than decoding it;
    identical pixels still give identical box averages, so re-encodes of the same pixels still
    match (so do pictures differing only below the averages' rounding: duplicates by any measure).
    """
    factor = max(1, min(image.width, image.height) // PIXEL_HASH_SIDE)
    if factor > 1:
        image = image.reduce(factor)
    return image if image.mode == "RGB" else image.convert("RGB")


def _digest(size: tuple[int, int], image: Image.Image) -> str:
    # SHA-256 rather than BLAKE2b: OpenSSL's runs on the CPU's SHA extensions, about twice as
    # fast here (1.2 vs 2.2 ms for a 1024x768 image), ~6% of the whole per-image cost
    digest = hashlib.sha256()
    digest.update(f"{size[0]}x{size[1]}:".encode())  # same bytes reshaped must differ
    digest.update(image.tobytes())
    return digest.hexdigest()[:32]


def pixel_hash(image: Image.Image) -> str:
    """Hex digest (SHA-256, first 128 bits) of the decoded RGB pixels (see ``_hashable``) and the
    size."""
    return _digest(image.size, _hashable(image))


def signatures(image: Image.Image) -> tuple[str, int]:
    """``(pixel_hash, phash64)`` of a decoded image from one shared pass over its pixels."""
    small = _hashable(image)
    return _digest(image.size, small), phash64(small)


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II basis rows for the first HASH_SIZE frequencies: [HASH_SIZE, DCT_SIZE]."""
    n = np.arange(DCT_SIZE)
    k = np.arange(HASH_SIZE)[:, None]
    basis = np.cos(np.pi * (2 * n + 1) * k / (2 * DCT_SIZE)) * np.sqrt(2.0 / DCT_SIZE)
    basis[0] /= np.sqrt(2.0)
    return basis


def _small_gray(image: Image.Image) -> np.ndarray:
    """The image as a [DCT_SIZE, DCT_SIZE] float grayscale array, cheaply.

    ``reduce`` (integer box binning) first brings big images near the target in one fast pass;
    the BOX resize then averages areas, which is what makes the hash stable across resizes.
    Resizing before the grayscale conversion touches 1024 pixels instead of the whole image.
    """
    factor = min(image.width, image.height) // (4 * DCT_SIZE)
    if factor >= 2:
        image = image.reduce(factor)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    box = content_box(image)  # found on the reduced image: ~0.3 ms, not ~4 on the full one
    if box is not None:
        image = image.crop(box)
    small = image.resize((DCT_SIZE, DCT_SIZE), Image.Resampling.BOX)
    return np.asarray(small.convert("L"), dtype=np.float64)


# Border trimming. A band along an edge is a border when at most 2% of each of its lines
# differs by more than TRIM_FUZZ grey levels from the edge line's median, its colour is near
# grey (channels within TRIM_NEUTRAL: black, white and grey bars; a flat coloured wall at the
# edge of a photo is content), it is at least TRIM_MIN of the side, and at least half of the
# line after it steps away from the band's colour by twice the fuzz: a smooth gradient (sky)
# drifts from its edge colour gradually, and a plain backdrop ends where an object starts on
# part of the line only, so both are kept; JPEG ringing at a bar's edge stays within the fuzz.
TRIM_FUZZ = 10
TRIM_NEUTRAL = 24
TRIM_MIN = 0.02


def _band(rgb: np.ndarray, gray: np.ndarray) -> int:
    """Lines of a uniform grey border along the top of ``rgb`` ([H, W, 3]) and its grey
    levels ``gray`` ([H, W]); 0 if none. Only the top half is read: no border may be longer."""
    half = len(gray) // 2 + 1
    deviation = np.abs(gray[:half] - np.median(gray[0]))
    uniform = np.mean(deviation > TRIM_FUZZ, axis=1) <= 0.02
    lines = int(np.argmin(uniform)) if not uniform.all() else half
    step = max(1, len(gray) // 50)
    if lines < TRIM_MIN * len(gray) or lines + step > half:
        return 0
    if np.ptp(np.median(rgb[:lines].reshape(-1, 3), axis=0)) > TRIM_NEUTRAL:
        return 0
    return lines if np.mean(deviation[lines : lines + step] > 2 * TRIM_FUZZ) >= 0.5 else 0


def content_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of ``image`` inside uniform grey borders (padding,
    letterbox or pillarbox bars, a plain frame), or None when no edge has one. Borders that
    would leave less than half of a side are not trimmed (an almost uniform picture is its own
    content). Pass a thumbnail (~100-200 px): every pixel is read."""
    rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float32)
    height, width = rgb.shape[:2]
    if min(height, width) < 16:
        return None
    # the same float32 values as rgb.mean(axis=2), whose reduction over a last axis of three
    # cost more than the rest of the pHash together (~10% of a fetch task's CPU)
    gray = (rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) / np.float32(3)
    across, gray_across = rgb.transpose(1, 0, 2), gray.T
    top, bottom = _band(rgb, gray), _band(rgb[::-1], gray[::-1])
    left, right = _band(across, gray_across), _band(across[::-1], gray_across[::-1])
    if not (top or bottom or left or right) or top + bottom > height // 2:
        return None
    if left + right > width // 2:
        return None
    return left, top, width - right, height - bottom


def phash_bits(image: Image.Image) -> np.ndarray:
    """The 64 perceptual-hash bits as a bool array (row-major over the 8x8 coefficients) of
    the image inside its uniform borders (``content_box``)."""
    basis = _dct_matrix()
    coefficients = basis @ _small_gray(image) @ basis.T  # [8, 8], lowest frequencies
    flat = coefficients.ravel()
    return flat > np.median(flat)


def phash64(image: Image.Image) -> int:
    """64-bit DCT perceptual hash as an unsigned int (< 2**64); bit 63 is coefficient (0, 0).

    Compare two hashes with ``hamming(a, b)``; re-encodes and resizes of one picture land
    within a few bits, unrelated pictures near 32.
    """
    return int.from_bytes(np.packbits(phash_bits(image)).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()
