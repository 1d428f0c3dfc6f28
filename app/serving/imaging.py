"""Untrusted image bytes -> 32x32 RGB uint8 arrays, refusing anything else with a 4xx reason.

Only PNG and JPEG reach a decoder: Pillow is asked for those two formats alone, so the many
other plugins (and their parsers' attack surface) are never tried. Dimensions come from the
header and are checked before `load()`, so a tiny file declaring a huge image is refused
without allocating its pixels.

`inspect_all` reads only headers (microseconds per image): the predictor counts what decoding
will cost before any decoding starts. A progressive JPEG's decoding time grows with its scan
count (each scan is a pass over every block: 20,000 scans in 257 KB cost ~3 s of CPU), so a JPEG
with more than `max_scans` start-of-scan markers is refused from the byte count alone.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import ImageRejected

IMAGE_SIZE = 32  # the models are trained on CIFAR-10's 32x32
ALLOWED_FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 2048 * 2048  # largest image decoded (resize=true): 12 MB of RGB, far below Pillow's own limit
# libjpeg's own progressive script has 10 scans (6 for grey); encoders that tune scans stay far
# below this. Markers are counted as the bytes FF DA: inside entropy-coded data every FF byte is
# followed by 00 or a restart marker, so each occurrence is a real start of scan.
MAX_JPEG_SCANS = 64
_SOS = b"\xff\xda"
_DATA_URL_MARK = ";base64,"


@dataclass(frozen=True)
class DecodeOptions:
    resize: bool = False  # scale any size to 32x32 instead of refusing it
    max_pixels: int = MAX_PIXELS
    max_scans: int = MAX_JPEG_SCANS


def decode_base64(text: str, index: int) -> bytes:
    """Strict base64 (a `data:image/...;base64,` prefix is allowed); garbage is a 422."""
    if text.startswith("data:") and _DATA_URL_MARK in text:
        text = text.split(_DATA_URL_MARK, 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(index, 422, "is not valid base64") from None


def decode_all(blobs: list[bytes], options: DecodeOptions) -> np.ndarray:
    """All images as one uint8 array N x 32 x 32 x 3 (RGB), in input order."""
    return np.stack([decode_image(blob, i, options) for i, blob in enumerate(blobs)])


def inspect_all(blobs: list[bytes], options: DecodeOptions, max_total_pixels: int) -> int:
    """Check every image's header (format, size, JPEG scans) without decoding; returns the pixels
    decoding will produce. 413 when together they exceed `max_total_pixels`."""
    total = 0
    for index, blob in enumerate(blobs):
        total += inspect_image(blob, index, options)
        if total > max_total_pixels:
            raise ImageRejected(
                index,
                413,
                f"brings the request to {total} pixels; at most {max_total_pixels} are decoded per request",
            )
    return total


def inspect_image(blob: bytes, index: int, options: DecodeOptions) -> int:
    """The pixel count of an image that passes every header check; ImageRejected otherwise."""
    if not blob:
        raise ImageRejected(index, 422, "is empty")
    with _open(blob, index) as image:
        _check_size(image, index, options)
        if image.format == "JPEG":
            scans = blob.count(_SOS)
            if scans > options.max_scans:
                raise ImageRejected(
                    index, 422, f"is a JPEG with {scans} scans; at most {options.max_scans} are decoded"
                )
        width, height = image.size
        return width * height


def decode_image(blob: bytes, index: int, options: DecodeOptions) -> np.ndarray:
    if not blob:
        raise ImageRejected(index, 422, "is empty")
    with _open(blob, index) as image:
        _check_size(image, index, options)
        _load(image, index, options)
        return _to_rgb_32(image, index)


def _load(image: Image.Image, index: int, options: DecodeOptions) -> None:
    if options.resize and image.format == "JPEG":
        image.draft("RGB", (IMAGE_SIZE, IMAGE_SIZE))  # DCT scaling: decode fewer pixels
    try:
        image.load()
    except (OSError, SyntaxError, ValueError):
        raise ImageRejected(index, 422, f"is a damaged or truncated {image.format} file") from None


def _open(blob: bytes, index: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(blob), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(index, 415, "is not a PNG or JPEG image") from None
    except Image.DecompressionBombError:
        # Pillow's own header check, for sizes beyond even ours: refused before any pixel is read.
        raise ImageRejected(index, 422, f"declares more than {MAX_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError):
        raise ImageRejected(index, 422, "has a damaged PNG or JPEG header") from None


def _check_size(image: Image.Image, index: int, options: DecodeOptions) -> None:
    width, height = image.size
    if width * height > options.max_pixels or width < 1 or height < 1:
        raise ImageRejected(
            index, 422, f"is {width}x{height}; at most {options.max_pixels} pixels are decoded"
        )
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE) and not options.resize:
        raise ImageRejected(
            index, 422, f"is {width}x{height}, expected {IMAGE_SIZE}x{IMAGE_SIZE} (or pass resize=true)"
        )


def _to_rgb_32(image: Image.Image, index: int) -> np.ndarray:
    # Grey, palette, CMYK and alpha images become plain RGB; alpha is dropped as CIFAR has none.
    try:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError):
        raise ImageRejected(index, 422, f"has pixel mode {image.mode}, which cannot become RGB") from None
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)
