"""Property-based fuzzing of image conversion and decoding (``images/convert.py``).

Every input either converts exactly as an independent numpy reference written here says, or raises
:class:`ImageConversionError` with the reason the reference predicts; never another exception, a
hang (hypothesis ``deadline``) or a memory blow-up (the process' RSS peak is bounded).

Bounded by default (the file runs in well under a minute on two shared cores); a longer run:
``VLAD_FUZZ_EXAMPLES=20000 pytest test/test_fuzz_images.py``.
"""
from __future__ import annotations

import array
import os
import re
import resource
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlad_localization.images.convert import (
    ImageConversionError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
)

EXAMPLES = int(os.environ.get("VLAD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=not os.environ.get("VLAD_FUZZ_EXAMPLES"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_PIXELS = 4096  # fuzzed images stay small: a decode of more is a limit that did not hold
pytestmark = pytest.mark.timeout(max(300, EXAMPLES // 5))  # a hang fails, whatever the examples count
RSS_GROWTH_MB = 100  # over a whole test (a leak)
CALL_PEAK_MB = 32  # one conversion (a decompression bomb); the images decoded here are < 100 kB


@dataclass
class Raw:
    height: object
    width: object
    encoding: object
    is_bigendian: object
    step: object
    data: object


@dataclass
class Compressed:
    format: object
    data: object


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(autouse=True)
def no_leak():
    """The resident memory of the process does not grow by more than RSS_GROWTH_MB over a test."""
    before = psutil.Process().memory_info().rss / 2**20
    yield
    growth = psutil.Process().memory_info().rss / 2**20 - before
    assert growth < RSS_GROWTH_MB, f"RSS grew by {growth:.0f} MB"


def outcome(fn, *args, **kw):
    """The converted array, or the reason of the ImageConversionError (any other exception fails);
    the call may not raise the process' peak RSS by more than CALL_PEAK_MB."""
    before = peak_rss_mb()
    try:
        return fn(*args, **kw)
    except ImageConversionError as exc:
        return exc.reason
    finally:
        assert peak_rss_mb() - before < CALL_PEAK_MB, f"one conversion took {peak_rss_mb() - before:.0f} MB"


# ------------------------------------------------------------------------------ the numpy reference
def ref_layout(encoding):
    """(channels, bytes per channel, channel order) read from the encoding's name, or None."""
    if not isinstance(encoding, str):
        return None
    m = re.fullmatch(r"(rgb|bgr|rgba|bgra|mono|bayer_(?:rggb|bggr|gbrg|grbg))(8|16)", encoding)
    if m:
        name, nbytes = m.group(1), int(m.group(2)) // 8
        channels = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4}.get(name, 1)
        order = name[:3] if channels > 1 else name  # OpenCV's 8UCn are BGR(A)
        return channels, nbytes, order
    m = re.fullmatch(r"(8|16)UC([134])", encoding)
    if m:
        channels = int(m.group(2))
        return channels, int(m.group(1)) // 8, "mono" if channels == 1 else "bgr"
    return None


def ref_bytes(data) -> bytes | None:
    """The message's bytes, or None when data is not a byte container."""
    if isinstance(data, np.ndarray):
        return data.tobytes() if data.dtype == np.uint8 else None
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, array.array):
        return data.tobytes() if data.typecode in "Bb" else None
    if isinstance(data, memoryview):
        return data.tobytes() if data.itemsize == 1 and data.format in "Bbc" else None
    if isinstance(data, (list, tuple)):
        ok = all(type(v) is int and 0 <= v <= 255 for v in data)
        return bytes(data) if ok else None
    return None


def ref_int(value) -> int | None:
    if isinstance(value, (bool, int, np.integer)) and int(value) >= 0:
        return int(value)
    return None


def to8(v: np.ndarray) -> np.ndarray:
    """16 -> 8 bit as cv_bridge: /256, round half to even, saturate."""
    return np.clip(np.round(v / 256.0), 0, 255).astype(np.uint8)


def reference_raw(msg: Raw, max_pixels: int):
    """What ``image_msg_to_rgb`` must return: an H x W x 3 array, a reason, or ("bayer", expected
    sampled-channel values, mask) for Bayer (OpenCV demosaics; the sampled channel is checked)."""
    h, w, step = (ref_int(v) for v in (msg.height, msg.width, msg.step))
    if None in (h, w, step):
        return "bad_header"
    layout = ref_layout(msg.encoding)
    if layout is None:
        return "unknown_encoding"
    if h == 0 or w == 0:
        return "empty_image"
    if h * w > max_pixels:
        return "too_large"
    channels, nbytes, order = layout
    row = w * channels * nbytes
    if step < row:
        return "step_too_small"
    raw = ref_bytes(msg.data)
    if raw is None:
        return "bad_dtype"
    if len(raw) < step * h:
        return "data_too_short"
    rows = np.frombuffer(b"".join(raw[r * step : r * step + row] for r in range(h)), np.uint8).reshape(h, row)
    if nbytes == 2:
        big = ref_int(msg.is_bigendian)
        if big is None:
            return "bad_header"
        first, second = rows[:, 0::2].astype(np.int64), rows[:, 1::2].astype(np.int64)
        values = to8(first * 256 + second if big else second * 256 + first)
    else:
        values = rows
    px = values.reshape(h, w, channels)
    if order == "mono":
        return np.repeat(px, 3, axis=2)
    if order.startswith("bayer_"):
        return ("bayer", px[:, :, 0], order[len("bayer_"):])
    return px[:, :, [2, 1, 0]] if order == "bgr" else px[:, :, :3]


def check_raw(msg: Raw, max_pixels: int = MAX_PIXELS):
    expected = reference_raw(msg, max_pixels)
    got = outcome(image_msg_to_rgb, msg, max_pixels)
    if isinstance(expected, str):
        assert got == expected, (got if isinstance(got, str) else got.shape, expected)
        return
    assert not isinstance(got, str), f"refused ({got}), the reference converts it"
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    if isinstance(expected, tuple):  # Bayer: in the interior each pixel keeps its sampled channel
        _, mosaic, pattern = expected
        h, w = mosaic.shape
        assert got.shape == (h, w, 3)
        sampled = np.empty((h, w), np.int64)  # the RGB channel each pixel of the mosaic samples
        for k, letter in enumerate(pattern):
            sampled[k // 2 :: 2, k % 2 :: 2] = "rgb".index(letter)
        picked = np.take_along_axis(got, sampled[:, :, None], axis=2)[:, :, 0]
        np.testing.assert_array_equal(picked[1:-1, 1:-1], mosaic[1:-1, 1:-1])
        return
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------------ raw messages
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "8UC4", "rgb16", "bgr16", "rgba16",
             "bgra16", "mono16", "16UC1", "16UC3", "16UC4", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8",
             "bayer_grbg8", "bayer_rggb16", "bayer_grbg16"]
UNKNOWN = ["", "yuv422", "RGB8", "rgb8 ", "mono32", "bayer_rggb12", "8UC2", "16SC1", "32FC1", None, b"rgb8", 8]
ODD_INTS = [-1, 2**16, 2**31, 2**32 + 1, 10**12, 4.0, "4", None, True, np.uint32(3), np.int64(-2)]
CONTAINERS = ["bytes", "bytearray", "array_B", "array_b", "memoryview", "strided_memoryview", "ndarray",
              "ndarray_2d", "list", "array_H", "ndarray_int16", "str", "none", "list_bad"]


def container(kind: str, payload: bytes):
    """``payload`` in one of the forms a message's data field may take (some of them invalid)."""
    a = np.frombuffer(payload, np.uint8)
    return {
        "bytes": lambda: payload, "bytearray": lambda: bytearray(payload),
        "array_B": lambda: array.array("B", payload), "array_b": lambda: array.array("b", payload),
        "memoryview": lambda: memoryview(payload),
        "strided_memoryview": lambda: memoryview(np.repeat(a, 2))[::2],  # not C-contiguous
        "ndarray": lambda: a.copy(),
        "ndarray_2d": lambda: np.repeat(a[:, None], 2, axis=1)[:, :1],  # 2-D, not contiguous
        "list": lambda: list(payload), "array_H": lambda: array.array("H", payload[: len(payload) // 2 * 2]),
        "ndarray_int16": lambda: a.astype(np.int16), "str": lambda: payload.decode("latin-1"),
        "none": lambda: None, "list_bad": lambda: list(payload) + [256],
    }[kind]()


@st.composite
def raw_messages(draw):
    encoding = draw(st.one_of(st.sampled_from(ENCODINGS), st.sampled_from(UNKNOWN)))
    layout = ref_layout(encoding) or (3, 1, "rgb")
    dim = st.one_of(st.integers(0, 9), st.sampled_from(ODD_INTS))
    height, width = draw(dim), draw(dim)
    row = (width if isinstance(width, int) and 0 <= width < 2**16 else 4) * layout[0] * layout[1]
    step = draw(st.one_of(st.integers(-3, 7).map(lambda d: max(0, row + d)), st.integers(0, 80), dim))
    rows = height if isinstance(height, int) and 0 <= height < 64 else 4
    full = step * rows if isinstance(step, int) and 0 <= step < 4096 else 64
    size = draw(st.one_of(st.just(full), st.integers(-8, 16).map(lambda d: max(0, full + d)), st.integers(0, 300)))
    payload = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, size, np.uint8).tobytes()
    data = container(draw(st.sampled_from(CONTAINERS[:9] if draw(st.booleans()) else CONTAINERS)), payload)
    big = draw(st.sampled_from([0, 1, 2, True, False, -1, None, "1", np.uint8(1)]))
    return Raw(height, width, encoding, big, step, data)


@FUZZ
@given(msg=raw_messages())
def test_fuzzed_raw_images_convert_as_the_reference_or_are_refused_with_its_reason(msg):
    check_raw(msg)


@FUZZ
@given(encoding=st.sampled_from(ENCODINGS), height=st.integers(1, 12), width=st.integers(1, 12),
       padding=st.integers(0, 5), extra=st.integers(0, 9), big=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzzed_valid_raw_images_convert_exactly(encoding, height, width, padding, extra, big, seed):
    """Every valid layout (any padding, oversized data, either endianness) converts as the reference."""
    channels, nbytes, _ = ref_layout(encoding)
    step = width * channels * nbytes + padding
    data = np.random.default_rng(seed).integers(0, 256, step * height + extra, np.uint8).tobytes()
    msg = Raw(height, width, encoding, int(big), step, data)
    assert not isinstance(reference_raw(msg, MAX_PIXELS), str)
    check_raw(msg)


# ------------------------------------------------------------------------------ compressed messages
def png_bytes(pixels: np.ndarray, colour_type: int) -> bytes:
    """A PNG written here (zlib + CRCs; no OpenCV): grey 0, RGB 2, grey+alpha 4, RGBA 6; 8 or 16 bit."""
    h, w = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    body = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    scanlines = np.concatenate([np.zeros((h, 1), np.uint8), body], axis=1).tobytes()  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b"")


PNG_KINDS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> channels


@st.composite
def pngs(draw):
    """(PNG bytes, the RGB the decoder must return)."""
    colour_type = draw(st.sampled_from(sorted(PNG_KINDS)))
    depth16 = draw(st.booleans())
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pixels = rng.integers(0, 2**16 if depth16 else 256, (h, w, PNG_KINDS[colour_type]))
    pixels = pixels.astype(np.uint16 if depth16 else np.uint8)
    colour = to8(pixels.astype(np.int64)) if depth16 else pixels
    rgb = np.repeat(colour[:, :, :1], 3, axis=2) if colour_type in (0, 4) else colour[:, :, :3]
    return png_bytes(pixels, colour_type), rgb


@FUZZ
@given(png=pngs(), fmt=st.sampled_from(["png", "rgb8; png compressed bgr8", "jpeg", "", "x"]))
def test_fuzzed_valid_pngs_decode_exactly(png, fmt):
    data, rgb = png
    np.testing.assert_array_equal(outcome(compressed_msg_to_rgb, Compressed(fmt, data), MAX_PIXELS * 2), rgb)


def smooth_image(seed: int, h: int, w: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@st.composite
def compressed_files(draw):
    """(bytes, height, width) of a valid JPEG (any quality, progressive or not, grey or colour) or PNG."""
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    rgb = smooth_image(draw(st.integers(0, 2**32 - 1)), h, w)
    if draw(st.booleans()):
        params = [cv2.IMWRITE_JPEG_QUALITY, draw(st.integers(5, 100)),
                  cv2.IMWRITE_JPEG_PROGRESSIVE, int(draw(st.booleans()))]
        img = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if draw(st.booleans()) else rgb[:, :, ::-1]
        data = cv2.imencode(".jpg", img, params)[1].tobytes()
    else:
        data = png_bytes(rgb, 2)
    return data, h, w


@FUZZ
@given(file=compressed_files())
def test_fuzzed_valid_jpegs_and_pngs_decode_at_their_size(file):
    data, h, w = file
    out = outcome(compressed_msg_to_rgb, Compressed("jpeg", data), MAX_PIXELS)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


def mutate(data: bytes, draw) -> bytes:
    """Truncate, flip bits, overwrite, insert or append bytes (a few of them, anywhere)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "append"]))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "truncate":
            del buf[pos:]
        elif kind == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            buf += draw(st.binary(min_size=1, max_size=64))
    return bytes(buf)


@FUZZ
@given(file=compressed_files(), data=st.data(), max_pixels=st.sampled_from([16, 400, MAX_PIXELS]))
def test_fuzzed_corrupt_jpegs_and_pngs_are_refused_or_decoded_within_the_limit(file, data, max_pixels):
    """Corrupt files: an ImageConversionError, or an image within max_pixels (never more)."""
    corrupt = mutate(file[0], data.draw)
    got = outcome(compressed_msg_to_rgb, Compressed("jpeg", corrupt), max_pixels)
    if not isinstance(got, str):
        assert got.ndim == 3 and got.shape[2] == 3 and got.shape[0] * got.shape[1] <= max_pixels


JPEG_SEGMENTS = st.one_of(
    st.binary(max_size=6).map(lambda p: b"\xff\xe1" + struct.pack(">H", 2 + len(p)) + p),  # APP1
    st.binary(max_size=6).map(lambda p: b"\xff\xfe" + struct.pack(">H", 2 + len(p)) + p),  # COM
    st.integers(0, 40).map(lambda n: b"\xff\x00" + struct.pack(">H", n)),  # not a marker
    st.just(b"\xff\xff"),  # fill byte
    st.sampled_from([b"\xff\xd0", b"\xff\x01", b"\xff\xd8", b"\xff\xd9"]),
    st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1)).map(  # a frame header, any size
        lambda hw: b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", *hw) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"),
    st.tuples(st.integers(0x02, 0xBF), st.binary(max_size=6)).map(
        lambda mp: bytes([0xFF, mp[0]]) + struct.pack(">H", 2 + len(mp[1])) + mp[1]),  # reserved marker
    st.binary(min_size=1, max_size=4),  # garbage
)


@FUZZ
@given(segments=st.lists(JPEG_SEGMENTS, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_fuzzed_jpeg_marker_sequences_never_decode_past_the_limit(segments, seed):
    """Random marker sequences in front of a real JPEG's tables and scan: whatever frame header
    libjpeg ends up reading, nothing larger than max_pixels is decoded."""
    real = cv2.imencode(".jpg", smooth_image(seed, 16, 16))[1].tobytes()
    data = b"\xff\xd8" + b"".join(segments) + real[2:]
    got = outcome(compressed_msg_to_rgb, Compressed("jpeg", data), 400)
    if not isinstance(got, str):
        assert got.shape[0] * got.shape[1] <= 400


@FUZZ
@given(fmt=st.one_of(st.sampled_from(["jpeg", "png", "compressedDepth png", "", None, 7]), st.text(max_size=8)),
       data=st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"\xff\xd8\xff" + b),
                      st.binary(max_size=200).map(lambda b: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b)),
       kind=st.sampled_from(CONTAINERS))
def test_fuzzed_compressed_garbage_is_refused(fmt, data, kind):
    got = outcome(compressed_msg_to_rgb, Compressed(fmt, container(kind, data)), MAX_PIXELS)
    if not isinstance(got, str):
        assert got.ndim == 3 and got.shape[2] == 3 and got.shape[0] * got.shape[1] <= MAX_PIXELS


# ------------------------------------------------------------------------------ regressions found
def test_a_frame_header_hidden_behind_ff00_is_not_decoded_past_the_limit():
    """libjpeg skips ``FF 00`` byte by byte; the size check used to read it as a segment length,
    skip a 4000x4000 frame header libjpeg then decoded, and check a 16x16 one hidden in an APP1."""
    real = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    segments, i = [], 2
    while real[i + 1] != 0xDA:
        length = struct.unpack(">H", real[i + 2 : i + 4])[0]
        segments.append(real[i : i + 2 + length])
        i += 2 + length
    sof = next(s for s in segments if s[1] == 0xC0)
    big = sof[:5] + struct.pack(">HH", 4000, 4000) + sof[9:]
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 4 + len(sof)) + b"\0" * 4 + sof
    hidden_length = 6 + len(big) + 4 + 4 - 4  # from the FF00 "segment" to the small frame header
    data = (b"\xff\xd8\xff\x00" + struct.pack(">H", hidden_length) + big + app1
            + b"".join(s for s in segments if s[1] != 0xC0) + real[i:])
    assert outcome(compressed_msg_to_rgb, Compressed("jpeg", data), 10_000) == "decode_failed"


@pytest.mark.parametrize("data", [memoryview(np.arange(8, dtype=np.uint8).repeat(2))[::2],
                                  array.array("H", [1, 2, 3, 4]), memoryview(np.zeros(4, np.float32))])
def test_buffers_are_bytes_or_refused(data):
    """A strided buffer is read (it used to raise BufferError); a buffer of wider items is refused
    (it used to be reinterpreted as bytes) like an ndarray of another dtype."""
    check_raw(Raw(2, 2, "mono8", 0, 2, data))


def test_the_strict_size_check_reads_every_real_jpeg_and_png(datasets_dir):
    """Reading markers as libjpeg does refuses nothing real: every JPEG/PNG of the shared datasets
    (cameras, phones, dataset tools) gets its size checked and decodes at that size."""
    files = [p for p in sorted(datasets_dir.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    assert len(files) > 1000
    for path in files:
        data = path.read_bytes()
        out = compressed_msg_to_rgb(Compressed("jpeg" if path.suffix.lower() != ".png" else "png", data))
        assert out.shape[:2] == cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2], path
