"""Decoding and checking one image: everything a broken or hostile file can do ends here.

The image is decoded once, fully (a truncated or corrupt file only shows itself when all of it
is decoded), oriented by its EXIF tag and converted to 8-bit RGB; signatures and the detector's
input are derived from that one decode by the caller.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas import Reason

# We check the pixel count ourselves, against the configured limit, before decoding.
Image.MAX_IMAGE_PIXELS = None

_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_EXIF_ORIENTATION = 0x0112


@dataclass(kw_only=True)
class ValidateConfig:
    max_pixels: int = field(
        default=100_000_000,
        metadata={"help": "decompression-bomb limit: images with more pixels are rejected"},
    )
    min_side: int = field(
        default=300,
        metadata={"help": "reject images whose shorter side (after EXIF rotation) is below this"},
    )
    max_aspect_ratio: float = field(
        default=4.0, metadata={"help": "reject images whose long/short side ratio is above this"}
    )
    allow_animated: bool = field(
        default=False, metadata={"help": "keep animated images (their first frame is used)"}
    )
    decode_side: int = field(
        default=128,
        metadata={
            "help": "large JPEGs decode at reduced scale down to this short side (the "
            "signatures need no more; the detector asks for its own input size); 0 decodes "
            "every image in full"
        },
    )
    formats: tuple[str, ...] = field(
        default=("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"),
        metadata={"help": "image formats (Pillow names) kept; others are rejected"},
    )

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.min_side < 0 or self.decode_side < 0:
            raise ValueError("max_pixels must be positive and min_side not negative")
        if self.max_aspect_ratio < 1:
            raise ValueError("max_aspect_ratio must be at least 1")
        self.formats = tuple(f.upper() for f in self.formats)


@dataclass
class Decoded:
    image: Image.Image  # 8-bit RGB, EXIF-oriented; large JPEGs at reduced scale
    format: str  # Pillow format name of the original
    mode: str  # Pillow mode of the original
    width: int  # oriented
    height: int


class Rejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def decode(data: bytes, config: ValidateConfig, min_long_side: int = 0) -> Decoded:
    """Decode and check ``data``; raises ``Rejected`` with a reason for anything unusable.

    ``width`` and ``height`` are the original oriented size; ``image`` may be smaller (large
    JPEGs decode at reduced scale, keeping at least ``config.decode_side`` on the short side and
    ``min_long_side`` on the long side).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF/ICC; we judge by errors
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise Rejected(Reason.NOT_AN_IMAGE, _head(data)) from exc
    except ImportError as exc:
        # a lazily registered opener (Ultralytics adds one for HEIF) probed the bytes and lacks
        # its decoder: no installed plugin recognised them
        raise Rejected(Reason.NOT_AN_IMAGE, f"{_head(data)}; {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure is a broken header
        raise _decode_failure(exc) from exc
    _check_header(image, config)
    fmt, mode, (width, height) = image.format or "", image.mode, image.size
    _reduce_jpeg_decode(image, config.decode_side, min_long_side)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            if image.getexif().get(_EXIF_ORIENTATION, 1) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            # in place: without an orientation tag the out-of-place form still copies the image
            ImageOps.exif_transpose(image, in_place=True)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on bad data
        raise _decode_failure(exc) from exc
    return Decoded(image=to_rgb(image), format=fmt, mode=mode, width=width, height=height)


def _reduce_jpeg_decode(image: Image.Image, short_side: int, long_side: int) -> None:
    """Let a large JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling).

    The signatures work at 128 pixels (pHash's 32x32 DCT from a 4x box reduction) and the
    detector at its input size (``long_side``), so decoding a web photo in full would be paid
    for and thrown away: at 1/8 scale the pixel work mostly goes and only the entropy decoding
    stays (3.6 against 5.5 ms for a 0.6 MP q90 photo here, the signatures then cost almost
    nothing). That data is still read to its end, so truncated and corrupt files fail exactly
    as in a full decode. The pixel hash of such a JPEG covers its reduced decode: a PNG of its
    full pixels no longer matches it there, and is left to the near (pHash) pass.
    """
    if image.format not in ("JPEG", "MPO") or short_side <= 0:
        return
    width, height = image.size
    scale = max(short_side / min(width, height), long_side / max(width, height))
    if scale <= 0.5:  # draft picks the smallest DCT scale that stays at or above this size
        image.draft(image.mode, (int(width * scale) + 1, int(height * scale) + 1))


def _decode_failure(exc: Exception) -> Rejected:
    detail = f"{type(exc).__name__}: {exc}"
    if "truncated" in str(exc).lower():
        return Rejected(Reason.TRUNCATED_IMAGE, detail)
    return Rejected(Reason.CORRUPT_IMAGE, detail)


def _check_header(image: Image.Image, config: ValidateConfig) -> None:
    """Checks that need no pixel decode: format, size, orientation, animation."""
    if (image.format or "").upper() not in config.formats:
        raise Rejected(Reason.UNSUPPORTED_FORMAT, str(image.format))
    width, height = image.size
    if width * height > config.max_pixels:
        raise Rejected(Reason.DECOMPRESSION_BOMB, f"{width}x{height} > {config.max_pixels} pixels")
    if width < 1 or height < 1:
        raise Rejected(Reason.CORRUPT_IMAGE, f"size {width}x{height}")
    # a 90-degree EXIF rotation changes neither the short side nor the ratio: no need to read
    # EXIF here (for PNG that would decode the whole image, and swallow its errors)
    short, long = min(width, height), max(width, height)
    if short < config.min_side:
        raise Rejected(Reason.TOO_SMALL, f"{width}x{height}, short side < {config.min_side}")
    if long / short > config.max_aspect_ratio:
        raise Rejected(
            Reason.BAD_ASPECT_RATIO, f"{width}x{height}, ratio > {config.max_aspect_ratio:g}"
        )
    if getattr(image, "is_animated", False) and not config.allow_animated:
        raise Rejected(Reason.ANIMATED, f"{getattr(image, 'n_frames', '?')} frames")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB for any mode: 16-bit and float scaled, transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        gray = np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _head(data: bytes) -> str:
    if not data:
        return "empty body"
    start = data[:24].decode("latin-1").encode("unicode_escape").decode()
    return f"{len(data)} bytes starting {start!r}"
