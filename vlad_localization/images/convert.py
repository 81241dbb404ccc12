"""ROS image messages <-> RGB uint8 arrays, with cv_bridge's semantics but no cv_bridge / rclpy.

Works on any object with the message fields (rclpy messages, rosbags-deserialised messages,
dataclasses): ``sensor_msgs/Image`` (height, width, encoding, is_bigendian, step, data) and
``sensor_msgs/CompressedImage`` (format, data).

Conventions (the same as ``cv_bridge.toCvCopy(msg, "rgb8")``):

* 16-bit -> 8-bit divides by 256 with OpenCV ``convertTo`` rounding (round half to even, saturate):
  0..127 -> 0, 128..383 -> 1 (128 -> 0 by half-to-even), 65535 -> 255.
* ``8UC1`` / ``16UC1`` are grey; ``8UC3`` / ``8UC4`` carry no colour order, read as BGR(A),
  OpenCV's order (cv_bridge refuses to colour-convert them).
* Alpha is dropped. ``bayer_XXXX8/16`` are demosaiced (bilinear), ``XXXX`` naming the top-left
  2x2 block row by row as ROS does (``bayer_rggb8``: R G / G B).
* Compressed JPEG/PNG data is decoded as a standard image file (BGR order), whatever the format
  string's encodings say, as image_transport's compressed publisher always encodes BGR/grey.

Every rejected input raises :class:`ImageConversionError` whose ``reason`` is a short, stable key
(usable as a diagnostics counter name): see :data:`REASONS`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from .frames import NS_PER_S
from .io import to_rgb8

DEFAULT_MAX_PIXELS = 24_000_000

REASONS = (
    "bad_header",  # width/height/step/is_bigendian not non-negative integers
    "empty_image",  # zero width or height, or empty compressed data
    "too_large",  # width*height over max_pixels (checked before anything is allocated)
    "unknown_encoding",  # encoding / compressed format not supported
    "step_too_small",  # step < width * channels * bytes per channel
    "data_too_short",  # len(data) < step * height
    "bad_dtype",  # data is not bytes-like / uint8
    "decode_failed",  # corrupt or unsupported JPEG/PNG
    "no_valid_depth",  # a depth image without a single valid (positive, finite) pixel
)


class ImageConversionError(ValueError):
    """An image message that cannot be converted; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class _Layout:
    channels: int
    bytes_per_channel: int
    colour: str  # 'rgb' | 'bgr' | 'grey' | 'bayer_rggb' | ... (order of the channels in memory)


def _build_layouts() -> dict[str, _Layout]:
    layouts = {}
    for depth, nbytes in (("8", 1), ("16", 2)):
        layouts.update(
            {
                f"rgb{depth}": _Layout(3, nbytes, "rgb"),
                f"bgr{depth}": _Layout(3, nbytes, "bgr"),
                f"rgba{depth}": _Layout(4, nbytes, "rgb"),
                f"bgra{depth}": _Layout(4, nbytes, "bgr"),
                f"mono{depth}": _Layout(1, nbytes, "grey"),
                f"{depth}UC1": _Layout(1, nbytes, "grey"),
                f"{depth}UC3": _Layout(3, nbytes, "bgr"),
                f"{depth}UC4": _Layout(4, nbytes, "bgr"),
            }
        )
        for pattern in ("rggb", "bggr", "gbrg", "grbg"):
            layouts[f"bayer_{pattern}{depth}"] = _Layout(1, nbytes, f"bayer_{pattern}")
    return layouts


ENCODING_LAYOUTS: dict[str, _Layout] = _build_layouts()
SUPPORTED_ENCODINGS = tuple(ENCODING_LAYOUTS)

# ROS names the top-left 2x2 block (R G / G B = rggb); OpenCV names the 2x2 block starting at the
# second row and column, so ROS rggb is OpenCV "BG" (the mapping cv_bridge uses).
_BAYER_TO_RGB = {
    "bayer_rggb": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg": cv2.COLOR_BayerGB2RGB,
}
# Which RGB channel each pixel of the top-left 2x2 block samples (row-major), for mosaicking.
_BAYER_CHANNELS = {"r": 0, "g": 1, "b": 2}


def image_msg_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/Image`` (any supported encoding) -> H x W x 3 RGB uint8 (a new array)."""

    def layout_of(encoding: str) -> _Layout:
        if encoding not in ENCODING_LAYOUTS:
            raise ImageConversionError(
                "unknown_encoding", f"got encoding {encoding!r}, expected one of {', '.join(SUPPORTED_ENCODINGS)}")
        return ENCODING_LAYOUTS[encoding]

    rows, layout = _pixel_rows(msg, layout_of, max_pixels)
    if layout.bytes_per_channel == 2:
        pixels = np.ascontiguousarray(rows).view(">u2" if _big_endian(msg) else "<u2").astype(np.uint16)
    else:
        pixels = rows
    pixels = pixels.reshape(rows.shape[0], -1, layout.channels)
    if layout.colour.startswith("bayer_"):
        return to_rgb8(cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), _BAYER_TO_RGB[layout.colour]))
    return to_rgb8(pixels, bgr=layout.colour == "bgr")


def msg_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (it has ``format``) or ``Image`` -> H x W x 3 RGB uint8."""
    convert = compressed_msg_to_rgb if hasattr(msg, "format") else image_msg_to_rgb
    return convert(msg, max_pixels)


# depth image encodings (REP 118): 16-bit unsigned in the sensor's unit (millimetres), or float metres
DEPTH_ENCODINGS = {"16UC1": np.dtype(np.uint16), "mono16": np.dtype(np.uint16), "32FC1": np.dtype(np.float32)}


def depth_msg_to_array(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A depth ``sensor_msgs/Image`` -> (H, W) uint16 (``16UC1``/``mono16``, millimetres in ROS) or
    float32 metres (``32FC1``); zero, negative and non-finite pixels are unknown. Raises
    :class:`ImageConversionError` (reason ``no_valid_depth`` when no pixel has a depth)."""

    def layout_of(encoding: str) -> _Layout:
        if encoding not in DEPTH_ENCODINGS:
            raise ImageConversionError("unknown_encoding", f"got encoding {encoding!r} for a depth image, "
                                       f"expected {' or '.join(DEPTH_ENCODINGS)}")
        return _Layout(1, DEPTH_ENCODINGS[encoding].itemsize, "depth")

    rows, _ = _pixel_rows(msg, layout_of, max_pixels)
    dtype = DEPTH_ENCODINGS[msg.encoding]
    depth = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if _big_endian(msg) else "<")).astype(dtype)
    with np.errstate(invalid="ignore"):
        if not np.any(depth > 0):  # NaN compares False
            raise ImageConversionError("no_valid_depth", f"no pixel of the {msg.encoding} depth image has a depth "
                                       "(all zero, negative or NaN)")
    return depth


def depth_to_image_fields(depth: np.ndarray) -> dict:
    """A depth image (uint16 -> ``16UC1``, float32 -> ``32FC1``) as ``sensor_msgs/Image`` fields."""
    depth = np.asarray(depth)
    encoding = {np.dtype(np.uint16): "16UC1", np.dtype(np.float32): "32FC1"}.get(depth.dtype)
    if encoding is None or depth.ndim != 2:
        raise ImageConversionError("bad_dtype", f"a depth image is (H, W) uint16 or float32, got {depth.dtype} "
                                   f"of shape {depth.shape}")
    rows = np.ascontiguousarray(depth.astype(depth.dtype.newbyteorder("<"))).view(np.uint8).reshape(depth.shape[0], -1)
    return {"height": depth.shape[0], "width": depth.shape[1], "encoding": encoding, "is_bigendian": 0,
            "step": rows.shape[1], "data": rows.tobytes()}


def _pixel_rows(msg, layout_of, max_pixels: int) -> tuple[np.ndarray, _Layout]:
    """(the pixel bytes as (height, width x bytes per pixel) uint8 without row padding, the layout
    ``layout_of(encoding)`` gives) after checking the header, size, step and data length."""
    height, width, step = (_header_int(msg, name) for name in ("height", "width", "step"))
    encoding = str(getattr(msg, "encoding", ""))
    layout = layout_of(encoding)
    _check_size(width, height, max_pixels)
    row_bytes = width * layout.channels * layout.bytes_per_channel
    if step < row_bytes:
        raise ImageConversionError(
            "step_too_small",
            f"step {step} < width {width} x {layout.channels} channel(s) x "
            f"{layout.bytes_per_channel} byte(s) = {row_bytes} for encoding {encoding}",
        )
    buf = _as_uint8(getattr(msg, "data", None))
    if buf.size < step * height:
        raise ImageConversionError(
            "data_too_short",
            f"data has {buf.size} bytes, step {step} x height {height} needs {step * height}",
        )
    return buf[: step * height].reshape(height, step)[:, :row_bytes], layout


def _big_endian(msg) -> bool:
    return bool(_header_int(msg, "is_bigendian")) if hasattr(msg, "is_bigendian") else False


def compressed_msg_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (JPEG or PNG, any format string) -> H x W x 3 RGB uint8.

    The image size is read from the PNG/JPEG header and checked against ``max_pixels`` before
    decoding; data whose size cannot be read that way (other formats, a JPEG without a frame
    header) is refused undecoded. 16-bit PNGs are scaled to 8 bit like raw 16-bit images.
    """
    fmt = str(getattr(msg, "format", "")).strip().lower()
    if "compresseddepth" in fmt:
        raise ImageConversionError(
            "unknown_encoding",
            f"got format {fmt!r}: compressedDepth (depth images) is not supported, "
            "expected a colour/grey JPEG or PNG (e.g. 'jpeg', 'rgb8; jpeg compressed bgr8')",
        )
    buf = _as_uint8(getattr(msg, "data", None))
    if buf.size == 0:
        raise ImageConversionError("empty_image", "compressed image has no data")
    size = peek_compressed_size(buf)
    if size is None:  # never decode what could not be size-checked first (a TIFF or WebP "bomb")
        raise ImageConversionError(
            "decode_failed",
            f"{buf.size} bytes of format {fmt or '(empty)'!r} are not a JPEG or PNG with a readable size "
            "(corrupt or truncated data, or another format: publish JPEG or PNG)",
        )
    _check_size(*size, max_pixels)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        img, detail = None, f" ({str(exc).strip().splitlines()[-1]})"
    else:
        detail = ""
    if img is None or img.size == 0:
        raise ImageConversionError(
            "decode_failed",
            f"could not decode {buf.size} bytes of format {fmt or '(empty)'!r} as JPEG/PNG "
            f"(corrupt or truncated data?){detail}",
        )
    if (img.shape[1], img.shape[0]) != tuple(size) or img.ndim not in (2, 3) or img.shape[2:] not in ((), (1,), (3,), (4,)):
        raise ImageConversionError(
            "decode_failed",
            f"{buf.size} bytes of format {fmt or '(empty)'!r} decoded as {img.shape[1]}x{img.shape[0]} "
            f"with shape {img.shape}, but the header says {size[0]}x{size[1]} (corrupt data)",
        )
    return to_rgb8(img, bgr=True)


def peek_compressed_size(data) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding, or None if not found.

    A JPEG's segments are walked by their lengths up to the frame header, however large the
    metadata before it (a few reads, not a scan of the data). The walk reads the markers as
    libjpeg does and gives up (None) on anything libjpeg would read differently: a byte that is
    not a marker, ``FF 00`` (libjpeg skips it byte by byte, so a frame header hidden in what
    looks like a segment's length would be the one decoded), or a marker libjpeg refuses."""
    buf = _as_uint8(data)

    def read(start: int, size: int) -> bytes:
        return buf[start : start + size].tobytes()

    head = read(0, 24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24 and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= buf.size:
        segment = read(i, 9)
        if segment[0] != 0xFF:
            return None
        marker = segment[1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack(">HH", segment[5:9])
            return width, height
        elif marker in _JPEG_BARE_MARKERS:
            i += 2
        elif marker in _JPEG_SKIPPED_MARKERS:
            i += 2 + struct.unpack(">H", segment[2:4])[0]
        else:
            return None
    return None


# Markers before the frame header, as libjpeg's read_markers treats them (anything else: refused).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15
_JPEG_BARE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0..7: no length
_JPEG_SKIPPED_MARKERS = frozenset([0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)])  # DHT DAC DQT DRI COM APPn


def rgb_to_image_fields(
    rgb: np.ndarray, encoding: str = "rgb8", *, bigendian: bool = False, row_padding: int = 0
) -> dict:
    """RGB uint8 -> ``sensor_msgs/Image`` fields (height, width, encoding, is_bigendian, step, data).

    Any supported encoding: grey via ``cv2.COLOR_RGB2GRAY``, 8 -> 16 bit by x256 (exactly inverted
    by the /256 read), alpha 255, bayer by sampling the pattern. ``row_padding`` adds bytes per row.
    """
    rgb = _check_rgb(rgb)
    layout = ENCODING_LAYOUTS.get(encoding)
    if layout is None:
        raise ImageConversionError(
            "unknown_encoding",
            f"got encoding {encoding!r}, expected one of {', '.join(SUPPORTED_ENCODINGS)}",
        )
    pixels = _rgb_to_channels(rgb, layout)
    if layout.bytes_per_channel == 2:
        pixels = (pixels.astype(np.uint16) << 8).astype(">u2" if bigendian else "<u2")
    height, width = rgb.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((height, row_padding), np.uint8)], axis=1)
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": int(bigendian and layout.bytes_per_channel == 2),
        "step": rows.shape[1],
        "data": np.ascontiguousarray(rows).tobytes(),
    }


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """RGB uint8 -> (``CompressedImage.format``, data), as image_transport's compressed publisher."""
    rgb = _check_rgb(rgb)
    fmt = fmt.lower()
    if fmt in ("jpeg", "jpg"):
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        fmt = "jpeg"
    elif fmt == "png":
        ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    else:
        raise ImageConversionError("unknown_encoding", f"got compression {fmt!r}, expected 'jpeg' or 'png'")
    if not ok:
        raise ImageConversionError("decode_failed", f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return f"rgb8; {fmt} compressed bgr8", buf.tobytes()


def _rgb_to_channels(rgb: np.ndarray, layout: _Layout) -> np.ndarray:
    """RGB uint8 -> H x W x channels uint8 in the layout's channel order."""
    if layout.colour == "grey":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    if layout.colour.startswith("bayer_"):
        pattern = layout.colour[len("bayer_") :]
        mosaic = np.empty(rgb.shape[:2], np.uint8)
        for k, letter in enumerate(pattern):
            dy, dx = divmod(k, 2)
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, _BAYER_CHANNELS[letter]]
        return mosaic[:, :, None]
    out = rgb[:, :, ::-1] if layout.colour == "bgr" else rgb
    if layout.channels == 4:
        out = np.concatenate([out, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return np.ascontiguousarray(out)


def _check_rgb(rgb) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(
            "bad_dtype", f"expected an H x W x 3 uint8 RGB array, got {rgb.dtype} of shape {rgb.shape}"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageConversionError("empty_image", f"image has shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width == 0 or height == 0:
        raise ImageConversionError("empty_image", f"image is {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageConversionError(
            "too_large",
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(raise max_pixels if such images are expected)",
        )


def _header_int(msg, name: str) -> int:
    value = getattr(msg, name, None)
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise ImageConversionError("bad_header", f"field {name} must be a non-negative integer, got {value!r}")
    return int(value)


def _as_uint8(data) -> np.ndarray:
    """Message data (bytes, bytearray, memoryview, array.array('B'), uint8 ndarray, list) as 1-D uint8."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageConversionError("bad_dtype", f"data must be uint8, got a {data.dtype} array")
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray)):
        return np.frombuffer(data, np.uint8)
    try:
        view = memoryview(data)
    except TypeError:
        view = None
    if view is not None:  # a buffer (array.array('B'), memoryview, ...): bytes only, any layout
        if view.itemsize != 1 or view.format not in ("B", "b", "c"):
            raise ImageConversionError(
                "bad_dtype", f"data must be a buffer of bytes, got items of format {view.format!r} "
                f"({view.itemsize} bytes each) in a {type(data).__name__}")
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        return np.frombuffer(view.cast("B"), np.uint8)
    if isinstance(data, (list, tuple)):
        try:
            arr = np.asarray(data)
        except (ValueError, TypeError, OverflowError):
            arr = np.zeros((0, 0))
        if arr.size == 0 and arr.ndim == 1:
            return np.zeros(0, np.uint8)
        if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 255:
            return arr.astype(np.uint8)
    raise ImageConversionError("bad_dtype", f"data must be bytes or a uint8 sequence, got {type(data).__name__}")


def stamp_to_ns(stamp) -> int:
    """A ``builtin_interfaces/Time`` (any object with ``sec`` and ``nanosec``) as int nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """(sec, nanosec) of a ``builtin_interfaces/Time`` for a stamp in ns."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return int(sec), int(nanosec)
