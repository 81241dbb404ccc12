"""ROS image message <-> RGB conversion (cv_bridge semantics) on real images, and every bad input."""
from __future__ import annotations

import array
import struct
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlad_localization.images import convert
from vlad_localization.images.convert import (
    REASONS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    peek_compressed_size,
    rgb_to_compressed,
    rgb_to_image_fields,
)
from vlad_localization.images.io import load_rgb


@dataclass
class RawImage:
    """The fields of sensor_msgs/Image (as rclpy / rosbags messages have them)."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: object


@dataclass
class Compressed:
    format: str
    data: object


@pytest.fixture(scope="module")
def colour(datasets_dir) -> np.ndarray:
    """A real, colourful street image (Tokyo 24/7), cropped to an odd size to catch stride bugs."""
    return load_rgb(datasets_dir / "tokyo_pair" / "ref" / "tokyo_db.png")[100:341, 50:372]


def msg_of(rgb, encoding="rgb8", **kw) -> RawImage:
    return RawImage(**rgb_to_image_fields(rgb, encoding, **kw))


def grey3(rgb):
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


def reason_of(fn, *args, **kw) -> str:
    with pytest.raises(ImageConversionError) as info:
        fn(*args, **kw)
    assert info.value.reason in REASONS
    return info.value.reason


# --- round trips --------------------------------------------------------------------------------

EXACT = [e for e in SUPPORTED_ENCODINGS if not e.startswith("bayer")]


@pytest.mark.parametrize("encoding", EXACT)
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("padding", [0, 5])
def test_every_encoding_round_trips_a_real_image(colour, encoding, bigendian, padding):
    msg = msg_of(colour, encoding, bigendian=bigendian, row_padding=padding)
    per_px = {"1": 1, "3": 3, "4": 4}[str(convert.ENCODING_LAYOUTS[encoding].channels)]
    assert msg.step == colour.shape[1] * per_px * (2 if "16" in encoding else 1) + padding
    out = image_msg_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == colour.shape and out.flags.c_contiguous
    grey = encoding.startswith("mono") or encoding.endswith("UC1")
    np.testing.assert_array_equal(out, grey3(colour) if grey else colour)


def test_channel_order_is_honoured(colour):
    bgr_as_rgb = RawImage(**{**rgb_to_image_fields(colour, "bgr8"), "encoding": "rgb8"})
    np.testing.assert_array_equal(image_msg_to_rgb(bgr_as_rgb), colour[:, :, ::-1])
    # 8UC3 has no colour order; like OpenCV (and cv_bridge's CV_8UC3 images) it is read as BGR
    np.testing.assert_array_equal(image_msg_to_rgb(msg_of(colour, "bgr8")), image_msg_to_rgb(
        RawImage(**{**rgb_to_image_fields(colour, "bgr8"), "encoding": "8UC3"})))


def test_rclpy_style_data_containers(colour):
    """rclpy gives data as array.array('B'); lists, bytearrays and memoryviews work too."""
    fields = rgb_to_image_fields(colour[:20, :30], "bgra8")
    for data in (array.array("B", fields["data"]), bytearray(fields["data"]), memoryview(fields["data"]),
                 list(fields["data"]), np.frombuffer(fields["data"], np.uint8)):
        np.testing.assert_array_equal(image_msg_to_rgb(RawImage(**{**fields, "data": data})), colour[:20, :30])


def test_real_rclpy_message_if_available(colour):
    msgs = pytest.importorskip("sensor_msgs.msg")
    fields = rgb_to_image_fields(colour, "bgr8", row_padding=3)
    msg = msgs.Image(**{k: v for k, v in fields.items()})
    np.testing.assert_array_equal(image_msg_to_rgb(msg), colour)
    fmt, data = rgb_to_compressed(colour, "png")
    np.testing.assert_array_equal(compressed_msg_to_rgb(msgs.CompressedImage(format=fmt, data=data)), colour)


# --- 16 bit ------------------------------------------------------------------------------------

SIXTEEN = [0, 127, 128, 129, 255, 256, 383, 384, 640, 65280, 65407, 65535]
# cv_bridge: convertTo(CV_8U, 1/256): round half to even, saturate
EIGHT = [0, 0, 0, 1, 1, 1, 1, 2, 2, 255, 255, 255]


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16_bit_scales_by_1_over_256_with_cv_rounding(big, encoding):
    values = np.array(SIXTEEN, np.uint16)
    data = values.astype(">u2" if big else "<u2").tobytes()
    msg = RawImage(1, len(values), encoding, int(big), 2 * len(values), data)
    out = image_msg_to_rgb(msg)
    assert out[0, :, 0].tolist() == EIGHT and (out == out[:, :, :1]).all()
    wrong_endian = image_msg_to_rgb(replace(msg, is_bigendian=int(not big)))
    assert wrong_endian[0, :, 0].tolist() != EIGHT


def test_16_bit_colour_big_endian_with_padding(colour):
    rgb16 = colour.astype(np.uint16) * 256 + 77  # low byte must not matter
    rows = rgb16.astype(">u2").reshape(colour.shape[0], -1).view(np.uint8)
    data = np.concatenate([rows, np.full((colour.shape[0], 6), 9, np.uint8)], axis=1).tobytes()
    msg = RawImage(colour.shape[0], colour.shape[1], "rgb16", 1, rows.shape[1] + 6, data)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), colour)


# --- bayer -------------------------------------------------------------------------------------

PATTERNS = ["rggb", "bggr", "gbrg", "grbg"]
OPENCV_CODES = [cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerRG2RGB, cv2.COLOR_BayerGR2RGB, cv2.COLOR_BayerGB2RGB]


def mosaic(rgb, pattern):
    """A ROS bayer mosaic: ``pattern`` names the top-left 2x2 block row by row."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for k, letter in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(letter)]
    return out


@pytest.mark.parametrize("pattern", PATTERNS)
def test_bayer_mosaic_of_a_real_image_demosaics_back(colour, pattern):
    m = mosaic(colour, pattern)
    msg = RawImage(m.shape[0], m.shape[1], f"bayer_{pattern}8", 0, m.shape[1], m.tobytes())
    assert rgb_to_image_fields(colour, f"bayer_{pattern}8")["data"] == m.tobytes()
    out = image_msg_to_rgb(msg)
    err = np.abs(out.astype(int) - colour).mean()
    others = [np.abs(cv2.cvtColor(m, code).astype(int) - colour).mean() for code in OPENCV_CODES]
    assert err <= min(others) + 1e-9 and err < 0.7 * sorted(others)[1]  # the right code, clearly


@pytest.mark.parametrize("pattern", PATTERNS)
def test_bayer_solid_colours(pattern):
    for colour_index in range(3):
        rgb = np.zeros((8, 10, 3), np.uint8)
        rgb[:, :, colour_index] = 200
        out = image_msg_to_rgb(msg_of(rgb, f"bayer_{pattern}8"))[2:-2, 2:-2]
        assert (out[:, :, colour_index] == 200).all() and (np.delete(out, colour_index, axis=2) == 0).all()


def test_bayer_16_bit_big_endian(colour):
    out8 = image_msg_to_rgb(msg_of(colour, "bayer_grbg8"))
    out16 = image_msg_to_rgb(msg_of(colour, "bayer_grbg16", bigendian=True, row_padding=2))
    assert np.abs(out16.astype(int) - out8).max() <= 1


# --- compressed --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jpeg", "png", "bgr8; jpeg compressed bgr8", "rgb8; png compressed", "PNG"])
def test_compressed_formats(colour, fmt):
    kind = "png" if "png" in fmt.lower() else "jpeg"
    _, data = rgb_to_compressed(colour, kind)
    out = compressed_msg_to_rgb(Compressed(fmt, data))
    err = np.abs(out.astype(int) - colour).mean()
    assert err == 0 if kind == "png" else err < 3


def test_rgb_to_compressed_format_string_and_size_peek(colour):
    fmt, data = rgb_to_compressed(colour)
    assert fmt == "rgb8; jpeg compressed bgr8"
    assert peek_compressed_size(data) == (colour.shape[1], colour.shape[0])
    assert peek_compressed_size(rgb_to_compressed(colour, "png")[1]) == (colour.shape[1], colour.shape[0])


def test_compressed_grey_and_16_bit_png(colour):
    grey = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)
    ok, png8 = cv2.imencode(".png", grey)
    np.testing.assert_array_equal(compressed_msg_to_rgb(Compressed("mono8; png compressed mono8", png8.tobytes())),
                                  grey3(colour))
    ok, png16 = cv2.imencode(".png", grey.astype(np.uint16) * 256)
    np.testing.assert_array_equal(compressed_msg_to_rgb(Compressed("mono16; png compressed mono16", png16)),
                                  grey3(colour))


# --- bad input -----------------------------------------------------------------------------------

def test_bad_raw_images_raise_with_their_reason(colour):
    good = msg_of(colour[:10, :12], "bgr8")
    assert reason_of(image_msg_to_rgb, replace(good, data=good.data[:-1])) == "data_too_short"
    assert reason_of(image_msg_to_rgb, replace(good, step=good.step - 1)) == "step_too_small"
    assert reason_of(image_msg_to_rgb, replace(good, encoding="yuv422_yuy2")) == "unknown_encoding"
    assert reason_of(image_msg_to_rgb, replace(good, encoding="")) == "unknown_encoding"
    assert reason_of(image_msg_to_rgb, replace(good, width=0, step=0, data=b"")) == "empty_image"
    assert reason_of(image_msg_to_rgb, replace(good, height=0, data=b"")) == "empty_image"
    assert reason_of(image_msg_to_rgb, replace(good, height=-1)) == "bad_header"
    assert reason_of(image_msg_to_rgb, replace(good, data=None)) == "bad_dtype"
    assert reason_of(image_msg_to_rgb, replace(good, data=np.zeros(400, np.float32))) == "bad_dtype"
    assert reason_of(image_msg_to_rgb, replace(good, data=[1000] * len(good.data))) == "bad_dtype"
    # the limit is checked before the data, so a huge header never allocates
    assert reason_of(image_msg_to_rgb, replace(good, width=8000, height=6000, step=24000)) == "too_large"
    assert reason_of(image_msg_to_rgb, good, max_pixels=119) == "too_large"
    assert image_msg_to_rgb(good, max_pixels=120).shape == (10, 12, 3)


def test_error_messages_are_actionable(colour):
    good = msg_of(colour[:10, :12], "rgb8")
    with pytest.raises(ImageConversionError, match=r"got encoding 'foo'.*expected one of .*rgb8.*bayer_rggb8"):
        image_msg_to_rgb(replace(good, encoding="foo"))
    with pytest.raises(ImageConversionError, match=r"step 35 < width 12 x 3 channel\(s\) x 1 byte\(s\) = 36"):
        image_msg_to_rgb(replace(good, step=35))
    with pytest.raises(ImageConversionError, match=r"data has 359 bytes, step 36 x height 10 needs 360"):
        image_msg_to_rgb(replace(good, data=good.data[:-1]))


def _patch_png_size(png: bytes, width: int, height: int) -> bytes:
    return png[:16] + struct.pack(">II", width, height) + png[24:]


def _patch_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9 :]


def test_oversized_compressed_rejected_before_decoding(colour, monkeypatch):
    _, png = rgb_to_compressed(colour[:16, :16], "png")
    _, jpeg = rgb_to_compressed(colour[:16, :16], "jpeg")

    def no_decode(*a, **k):
        raise AssertionError("imdecode must not be called for an oversized image")

    monkeypatch.setattr(convert.cv2, "imdecode", no_decode)
    for data in (_patch_png_size(png, 8000, 6000), _patch_jpeg_size(jpeg, 8000, 6000)):
        assert peek_compressed_size(data) == (8000, 6000)
        assert reason_of(compressed_msg_to_rgb, Compressed("jpeg", data)) == "too_large"


def test_other_formats_are_never_decoded_and_big_jpeg_metadata_is_walked(colour, monkeypatch):
    """A TIFF/BMP/WebP size cannot be checked before decoding: refused undecoded. A JPEG with 2 MB
    of APP segments before its frame header still has its size read (and checked) first."""
    _, jpeg = rgb_to_compressed(colour[:16, :16], "jpeg")
    app = b"\xff\xe1" + struct.pack(">H", 65535) + bytes(65533)  # one maximal APP1 segment
    padded = jpeg[:2] + app * 32 + jpeg[2:]
    assert len(padded) > 2 * 2**20 and peek_compressed_size(padded) == (16, 16)
    np.testing.assert_array_equal(compressed_msg_to_rgb(Compressed("jpeg", padded)),
                                  compressed_msg_to_rgb(Compressed("jpeg", jpeg)))
    assert reason_of(compressed_msg_to_rgb, Compressed("jpeg", _patch_jpeg_size(padded, 8000, 6000))) == "too_large"
    others = [cv2.imencode(ext, colour[:16, :16])[1].tobytes() for ext in (".tiff", ".bmp")]

    def no_decode(*a, **k):
        raise AssertionError("imdecode must not be called on data whose size was not checked")

    monkeypatch.setattr(convert.cv2, "imdecode", no_decode)
    for data in others:
        assert peek_compressed_size(data) is None
        assert reason_of(compressed_msg_to_rgb, Compressed("tiff", data)) == "decode_failed"


def test_bad_compressed_images_raise_with_their_reason(colour):
    _, jpeg = rgb_to_compressed(colour, "jpeg")
    assert reason_of(compressed_msg_to_rgb, Compressed("jpeg", b"")) == "empty_image"
    assert reason_of(compressed_msg_to_rgb, Compressed("jpeg", b"not an image at all")) == "decode_failed"
    assert reason_of(compressed_msg_to_rgb, Compressed("jpeg", jpeg[:200])) == "decode_failed"
    assert reason_of(compressed_msg_to_rgb, Compressed("png", b"\x89PNG\r\n\x1a\n" + bytes(40))) in (
        "decode_failed", "empty_image")
    assert reason_of(compressed_msg_to_rgb, Compressed("16UC1; compressedDepth png", jpeg)) == "unknown_encoding"
    assert reason_of(compressed_msg_to_rgb, Compressed("jpeg", jpeg), max_pixels=1000) == "too_large"


def test_bad_arrays_for_publishing():
    assert reason_of(rgb_to_image_fields, np.zeros((4, 4), np.uint8)) == "bad_dtype"
    assert reason_of(rgb_to_image_fields, np.zeros((4, 4, 3), np.float32)) == "bad_dtype"
    assert reason_of(rgb_to_image_fields, np.zeros((0, 4, 3), np.uint8)) == "empty_image"
    assert reason_of(rgb_to_image_fields, np.zeros((4, 4, 3), np.uint8), "yuv") == "unknown_encoding"
    assert reason_of(rgb_to_compressed, np.zeros((4, 4, 3), np.uint8), "webp") == "unknown_encoding"


# --- fuzzing -------------------------------------------------------------------------------------

ENCODINGS = st.sampled_from(list(SUPPORTED_ENCODINGS) + ["", "yuv422", "RGB8", "rgb8 "])
SMALL = st.integers(min_value=-2, max_value=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(height=SMALL, width=SMALL, step=st.integers(-2, 200), encoding=ENCODINGS,
       big=st.sampled_from([0, 1, 2, True, None, -1]), data=st.binary(max_size=3000))
def test_fuzz_raw_headers_only_raise_conversion_errors(height, width, step, encoding, big, data):
    try:
        out = image_msg_to_rgb(RawImage(height, width, encoding, big, step, data), max_pixels=1000)
    except ImageConversionError as exc:
        assert exc.reason in REASONS
    else:
        assert out.shape == (height, width, 3) and out.dtype == np.uint8


@settings(max_examples=200, deadline=None)
@given(fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "", "x"]),
       data=st.one_of(st.binary(max_size=500),
                      st.binary(max_size=300).map(lambda b: b"\xff\xd8\xff" + b),
                      st.binary(max_size=300).map(lambda b: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b)))
def test_fuzz_compressed_only_raise_conversion_errors(fmt, data):
    try:
        out = compressed_msg_to_rgb(Compressed(fmt, data), max_pixels=10_000)
    except ImageConversionError as exc:
        assert exc.reason in REASONS
    else:
        assert out.ndim == 3 and out.shape[2] == 3
