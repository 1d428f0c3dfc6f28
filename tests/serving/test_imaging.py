"""Untrusted bytes -> 32x32 RGB arrays: what is accepted, what is refused and with which status."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from app.errors import ImageRejected
from app.serving.imaging import (
    MAX_JPEG_SCANS,
    MAX_PIXELS,
    DecodeOptions,
    decode_all,
    decode_base64,
    decode_image,
    inspect_all,
    inspect_image,
)
from tests.served_models import encode, jpeg_scan_bomb, png_declaring

STRICT = DecodeOptions()
RESIZE = DecodeOptions(resize=True)


def noise(size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def rejected(blob: bytes, options: DecodeOptions = STRICT, index: int = 0) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(blob, index, options)
    assert 400 <= info.value.status < 500
    return info.value


def test_png_round_trips_pixels_exactly() -> None:
    pixels = noise()
    assert np.array_equal(decode_image(encode(pixels), 0, STRICT), pixels)


def test_jpeg_decodes_close_to_the_source() -> None:
    pixels = np.full((32, 32, 3), (200, 40, 90), np.uint8)
    decoded = decode_image(encode(pixels, "JPEG"), 0, STRICT)
    assert decoded.shape == (32, 32, 3) and np.abs(decoded.astype(int) - pixels).max() < 12


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I;16"])
def test_grey_palette_and_alpha_images_become_rgb(mode: str) -> None:
    pixels = noise()
    decoded = decode_image(encode(pixels, mode=mode), 0, STRICT)
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    if mode == "L":  # grey -> three equal channels holding the grey value
        assert np.array_equal(
            decoded[..., 0], np.asarray(Image.fromarray(pixels).convert("L"))
        ) and np.array_equal(decoded[..., 0], decoded[..., 2])


def test_rgba_drops_alpha_keeping_colour() -> None:
    rgba = np.dstack([noise(), np.full((32, 32), 7, np.uint8)])
    assert np.array_equal(decode_image(encode(rgba), 0, STRICT), rgba[..., :3])


def test_cmyk_jpeg_becomes_rgb() -> None:
    assert decode_image(encode(noise(), "JPEG", mode="CMYK"), 0, STRICT).shape == (32, 32, 3)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "ICO"])
def test_other_formats_are_refused_as_unsupported(fmt: str) -> None:
    error = rejected(encode(noise(), fmt), index=4)
    assert error.status == 415 and error.index == 4 and "PNG or JPEG" in str(error)


@pytest.mark.parametrize("blob", [b"hello, not an image", b"\x00" * 100, b"%PDF-1.4 ...", b"<svg></svg>"])
def test_non_images_are_refused(blob: bytes) -> None:
    assert rejected(blob).status == 415


def test_empty_file_is_refused() -> None:
    assert rejected(b"").status == 422


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused_not_half_decoded(fmt: str) -> None:
    blob = encode(noise(), fmt)
    error = rejected(blob[: len(blob) // 2])
    assert error.status == 422 and "truncated" in error.reason


def test_wrong_size_names_the_size() -> None:
    error = rejected(encode(noise((64, 48))))
    assert error.status == 422 and "64x48" in error.reason and "32x32" in error.reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_resize_scales_other_sizes(fmt: str) -> None:
    red = np.zeros((100, 70, 3), np.uint8)
    red[..., 0] = 230
    decoded = decode_image(encode(red, fmt), 0, RESIZE)
    assert decoded.shape == (32, 32, 3) and abs(int(decoded[..., 0].mean()) - 230) < 8


@pytest.mark.parametrize("side", [5_000, 100_000])
def test_decompression_bomb_is_refused_from_the_header(side: int) -> None:
    # 5,000^2 is over our limit but under Pillow's; 100,000^2 is over both. Neither gets decoded.
    error = rejected(png_declaring(side, side), RESIZE)
    assert error.status == 422 and str(MAX_PIXELS) in error.reason


def test_pixel_limit_is_checked_before_load() -> None:
    blob = encode(noise((64, 64)))
    error = rejected(blob, DecodeOptions(resize=True, max_pixels=64 * 64 - 1))
    assert "64x64" in error.reason


def test_decode_all_keeps_order_and_reports_the_bad_index() -> None:
    arrays = [noise(seed=i) for i in range(3)]
    blobs = [encode(a) for a in arrays]
    assert np.array_equal(decode_all(blobs, STRICT), np.stack(arrays))
    with pytest.raises(ImageRejected) as info:
        decode_all([*blobs, b"junk"], STRICT)
    assert info.value.index == 3


def test_base64_accepts_plain_and_data_urls() -> None:
    blob = encode(noise())
    text = base64.b64encode(blob).decode()
    assert decode_base64(text, 0) == blob
    assert decode_base64("data:image/png;base64," + text, 0) == blob


@pytest.mark.parametrize("text", ["not base64 !!", "abc", "Zm9v\x00"])
def test_base64_garbage_is_refused(text: str) -> None:
    with pytest.raises(ImageRejected) as info:
        decode_base64(text, 2)
    assert info.value.status == 422 and info.value.index == 2


def test_a_progressive_jpeg_with_absurd_scan_counts_is_refused_from_its_bytes() -> None:
    bomb = jpeg_scan_bomb(scans=20_000)
    assert len(bomb) < 300_000 and bomb.count(b"\xff\xda") == 20_000
    with pytest.raises(ImageRejected) as refused:
        inspect_image(bomb, 3, RESIZE)  # from the header and a byte count: nothing is decoded
    assert (refused.value.status, refused.value.index) == (422, 3)
    assert "20000 scans" in str(refused.value) and f"at most {MAX_JPEG_SCANS}" in str(refused.value)
    ordinary = jpeg_scan_bomb(scans=12, size=64)  # libjpeg's script plus two: decodes as usual
    assert inspect_image(ordinary, 0, RESIZE) == 64 * 64
    assert decode_image(ordinary, 0, RESIZE).shape == (32, 32, 3)


def test_inspect_all_counts_pixels_and_refuses_a_request_over_its_total() -> None:
    blobs = [encode(np.zeros((64, 64, 3), np.uint8)) for _ in range(3)]
    assert inspect_all(blobs, RESIZE, max_total_pixels=3 * 64 * 64) == 3 * 64 * 64
    with pytest.raises(ImageRejected) as refused:
        inspect_all(blobs, RESIZE, max_total_pixels=2 * 64 * 64 + 1)
    assert (refused.value.status, refused.value.index) == (413, 2)
