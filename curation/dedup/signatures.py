"""Per-image dedup signatures, computed once on the already-decoded image (no second decode).

``pixel_hash`` catches the same pixels in another encoding (PNG of a JPEG's decode, stripped
metadata); ``phash64`` is the classic DCT perceptual hash (as in the ``imagehash`` library:
32x32 grayscale, 2-D DCT-II, the 8x8 lowest frequencies thresholded at their median), which
survives re-encodes, resizes, small crops and colour shifts within a few bits.
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
    small = image.resize((DCT_SIZE, DCT_SIZE), Image.Resampling.BOX)
    return np.asarray(small.convert("L"), dtype=np.float64)


def phash_bits(image: Image.Image) -> np.ndarray:
    """The 64 perceptual-hash bits as a bool array (row-major over the 8x8 coefficients)."""
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
