import io

import numpy as np
import pytest
from PIL import Image

from curation.synthetic import encode, photo_jpeg, photo_like
from curation.validate import Rejected, ValidateConfig, decode, to_rgb
from schemas import Reason

CONFIG = ValidateConfig(min_side=32, max_pixels=4_000_000)


def _reason(data: bytes, config: ValidateConfig = CONFIG) -> Reason:
    with pytest.raises(Rejected) as info:
        decode(data, config)
    return info.value.reason


def test_plain_jpeg():
    decoded = decode(photo_jpeg(120, 80, seed=0), CONFIG)
    assert (decoded.width, decoded.height, decoded.format, decoded.mode) == (120, 80, "JPEG", "RGB")
    assert decoded.image.mode == "RGB" and decoded.image.size == (120, 80)


@pytest.mark.parametrize("orientation", [6, 8, 5, 7])
def test_exif_rotation_swaps_the_oriented_size(orientation):
    image = photo_like(120, 80, seed=1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, "JPEG", exif=exif.tobytes())
    decoded = decode(data, CONFIG)
    assert (decoded.width, decoded.height) == (80, 120)
    assert decoded.image.size == (80, 120)


def test_exif_rotation_moves_the_pixels():
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    data = encode(Image.fromarray(pixels), "PNG", exif=exif.tobytes())
    oriented = np.asarray(decode(data, CONFIG).image)
    assert oriented.shape == (80, 40, 3)
    assert oriented[:40].mean() > 200 and oriented[40:].mean() < 50  # white on top now


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Reason.NOT_AN_IMAGE),
        (b"<!doctype html><html></html>", Reason.NOT_AN_IMAGE),
        (photo_jpeg(120, 80, seed=2)[:600], Reason.TRUNCATED_IMAGE),
        (photo_jpeg(20, 80, seed=3), Reason.TOO_SMALL),
        (photo_jpeg(400, 40, seed=4), Reason.BAD_ASPECT_RATIO),
    ],
)
def test_rejections(data, reason):
    assert _reason(data) == reason


def test_corrupt_body_behind_a_valid_header():
    data = bytearray(encode(photo_like(120, 80, seed=5), "PNG"))
    start = bytes(data).find(b"IDAT") + 60
    data[start : start + 340] = bytes(range(256)) + bytes(range(84))  # garbage in the pixels
    assert _reason(bytes(data)) == Reason.CORRUPT_IMAGE


def test_decompression_bomb_is_refused_before_decoding():
    # a PNG that claims 30000 x 30000 pixels; only its header is ever read
    big = encode(Image.new("L", (3000, 3000)), "PNG")
    assert (
        _reason(big, ValidateConfig(min_side=32, max_pixels=1_000_000)) == Reason.DECOMPRESSION_BOMB
    )


def test_unsupported_format():
    data = io.BytesIO()
    Image.new("RGB", (64, 64)).save(data, "PPM")
    assert _reason(data.getvalue()) == Reason.UNSUPPORTED_FORMAT


def test_animated_images():
    frames = [Image.new("RGB", (64, 64), (i * 80, 0, 255 - i * 80)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    assert _reason(out.getvalue()) == Reason.ANIMATED
    kept = decode(out.getvalue(), ValidateConfig(min_side=32, allow_animated=True))
    assert kept.format == "GIF"


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L", "I;16"])
def test_modes_become_8bit_rgb(mode):
    base = photo_like(64, 64, seed=6)
    if mode == "I;16":
        gray = np.asarray(base.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray)  # uint16 -> mode I;16
        fmt = "PNG"
    else:
        image = base.convert(mode)
        fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    decoded = decode(encode(image, fmt), CONFIG)
    assert decoded.image.mode == "RGB"
    assert decoded.mode == mode
    if mode == "I;16":  # 16-bit scaled to 8-bit, not clipped to white
        assert 30 < np.asarray(decoded.image).mean() < 225


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert np.asarray(to_rgb(image)).min() == 255


def test_unknown_bytes_after_ultralytics_registered_its_openers():
    import ultralytics  # noqa: F401 - registers a HEIF opener whose decoder is not installed

    assert _reason(b"") == Reason.NOT_AN_IMAGE
    assert _reason(b"<!doctype html><html></html>") == Reason.NOT_AN_IMAGE


def test_large_jpegs_decode_at_reduced_scale_but_report_their_size():
    data = photo_jpeg(2400, 1800, seed=9)
    decoded = decode(data, ValidateConfig(decode_side=512))
    assert (decoded.width, decoded.height) == (2400, 1800)  # the original size
    assert 512 <= min(decoded.image.size) < 1800  # decoded at 1/2 or 1/4 scale
    full = decode(data, ValidateConfig(decode_side=0))
    assert full.image.size == (2400, 1800)
    assert decode(data, ValidateConfig(decode_side=512), min_long_side=2000).image.size[0] >= 2000
    # truncation is still found: the whole entropy-coded stream is read
    assert (
        _reason(data[: len(data) // 2], ValidateConfig(decode_side=512)) == Reason.TRUNCATED_IMAGE
    )


def test_large_rotated_jpeg_reports_the_oriented_size():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo_like(2400, 1800, seed=10), "JPEG", exif=exif.tobytes())
    decoded = decode(data, ValidateConfig(decode_side=512))
    assert (decoded.width, decoded.height) == (1800, 2400)
    assert decoded.image.height > decoded.image.width
