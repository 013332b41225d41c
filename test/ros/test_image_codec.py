"""msaf_ros.image_codec: round trips, layouts, cross-checks against OpenCV, property tests."""
from __future__ import annotations

import array
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from msaf_ros import image_codec as ic
from msaf_ros.image_codec import (ENCODABLE, ENCODINGS, SUPPORTED_ENCODINGS, ImageDecodeError,
                                  check_compressed, compressed_to_rgb, image_fields, image_to_rgb,
                                  rgb_to_image)

RNG = np.random.default_rng(0)
MONO = {"mono8", "8UC1", "mono16", "16UC1"}


def msg(**kw):
    """A plain duck-typed Image message."""
    d = dict(height=0, width=0, encoding="rgb8", is_bigendian=0, step=0, data=b"")
    d.update(kw)
    return types.SimpleNamespace(**d)


def raw_msg(px: np.ndarray, encoding: str, pad: int = 0, big: bool = False):
    """Image message from raw samples px (H×W×C of uint8/uint16/float32), rows padded."""
    h, w = px.shape[:2]
    dt = px.dtype.newbyteorder(">" if big else "<") if px.dtype.itemsize > 1 else px.dtype
    rows = np.ascontiguousarray(px.astype(dt)).reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return msg(height=h, width=w, encoding=encoding, is_bigendian=int(big),
               step=rows.shape[1], data=rows.tobytes())


def test_no_rclpy_import():
    assert "msaf_ros.image_codec" in sys.modules
    # image_codec itself must not pull in rclpy (the bag tool uses it without ROS).
    import subprocess
    code = ("import sys, msaf_ros, msaf_ros.image_codec, msaf_ros.resources; "
            "print('rclpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("encoding", ENCODABLE)
def test_round_trip_every_encodable(encoding):
    rgb = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    m = rgb_to_image(rgb, encoding, msg_type=None)
    assert m.encoding == encoding and m.height == 7 and m.width == 9
    out = image_to_rgb(m)
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    if encoding in MONO:
        g = image_fields(rgb, "mono8")["data"]
        assert (out == np.frombuffer(g, np.uint8).reshape(7, 9)[..., None]).all()
    else:
        assert (out == rgb).all()


def test_rosbags_message_type():
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_HUMBLE)
    Img = ts.types["sensor_msgs/msg/Image"]
    hdr = ts.types["std_msgs/msg/Header"](
        stamp=ts.types["builtin_interfaces/msg/Time"](sec=3, nanosec=4), frame_id="cam")
    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    m = rgb_to_image(rgb, "rgb8", header=hdr, msg_type=Img)
    m2 = ts.deserialize_cdr(ts.serialize_cdr(m, Img.__msgtype__), Img.__msgtype__)
    assert m2.header.frame_id == "cam" and (image_to_rgb(m2) == rgb).all()
    with pytest.raises(ValueError, match="header"):
        rgb_to_image(rgb, "rgb8", msg_type=Img)


@pytest.mark.parametrize("container", [bytes, bytearray, lambda b: array.array("B", b),
                                       memoryview, lambda b: np.frombuffer(b, np.uint8).copy(),
                                       list])
def test_data_containers(container):
    rgb = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    f = image_fields(rgb, "rgb8")
    m = msg(**dict(f, data=container(f["data"])))
    assert (image_to_rgb(m) == rgb).all()


def test_output_owns_memory():
    f = image_fields(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8), "rgb8")
    buf = bytearray(f["data"])
    out = image_to_rgb(msg(**dict(f, data=buf)))
    buf[0] ^= 0xFF
    assert out[0, 0, 0] != buf[0] and out.flags.writeable and out.flags.owndata


LAYOUTS = [("rgb8", np.uint8, 3), ("bgra8", np.uint8, 4), ("mono16", np.uint16, 1),
           ("rgb16", np.uint16, 3), ("bgr16", np.uint16, 3), ("16UC3", np.uint16, 3),
           ("rgba16", np.uint16, 4), ("32FC1", np.float32, 1)]


@pytest.mark.parametrize("encoding,dtype,ch,big", [
    (e, d, c, big) for e, d, c in LAYOUTS for big in (False, True)
    if not (d == np.uint8 and big)])           # endianness is irrelevant for 8-bit
def test_step_padding_and_endianness(encoding, dtype, ch, big):
    h, w = 5, 7
    if dtype == np.float32:
        px = RNG.uniform(-3, 5, (h, w, 1)).astype(np.float32)
        px[0, 0, 0], px[0, 1, 0] = -3.0, 5.0
    else:
        px = RNG.integers(0, np.iinfo(dtype).max + 1, (h, w, ch), dtype=np.int64).astype(dtype)
    ref = image_to_rgb(raw_msg(px, encoding, pad=0, big=big))
    out = image_to_rgb(raw_msg(px, encoding, pad=5, big=big))
    assert (out == ref).all()
    if dtype == np.uint16:
        hi = (px >> 8).astype(np.uint8)
        exp = {"rgb16": hi, "bgr16": hi[..., ::-1], "16UC3": hi[..., ::-1],
               "rgba16": hi[..., :3], "mono16": np.repeat(hi, 3, 2)}[encoding]
        assert (out == exp).all()
    if dtype == np.float32:
        exp = np.clip((px[..., 0] + 3.0) * (255.0 / 8.0) + 0.5, 0, 255).astype(np.uint8)
        assert (out[..., 0] == exp).all() and (out[..., 1] == exp).all()


def test_float_nonfinite_and_constant():
    px = np.array([[[np.nan], [1.0]], [[np.inf], [3.0]]], np.float32)
    out = image_to_rgb(raw_msg(px, "32FC1"))
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == 0 and out[0, 1, 0] == 0 and out[1, 1, 0] == 255
    const = image_to_rgb(raw_msg(np.full((3, 3, 1), 7.0, np.float32), "32FC1"))
    assert (const == 0).all()
    allnan = image_to_rgb(raw_msg(np.full((3, 3, 1), np.nan, np.float32), "32FC1"))
    assert (allnan == 0).all()


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    (ry, rx), (by, bx) = ic.BAYER_OFFSETS[pattern]
    h, w = rgb.shape[:2]
    out = rgb[..., 1].copy()
    out[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
    out[by::2, bx::2] = rgb[by::2, bx::2, 2]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer(pattern):
    cv2 = pytest.importorskip("cv2")
    # A uniform colour survives demosaicing exactly, borders included, at odd sizes too.
    flat = np.empty((5, 7, 3), np.uint8)
    flat[:] = (200, 100, 30)
    assert (image_to_rgb(raw_msg(mosaic(flat, pattern)[..., None], f"bayer_{pattern}8"))
            == flat).all()
    # On a real-looking smooth image the result is close to OpenCV's bilinear demosaic
    # (ROS bayer_rggb is OpenCV's BayerBG, as cv_bridge maps it).
    yy, xx = np.mgrid[0:40, 0:48]
    rgb = np.stack([xx * 5, yy * 6, 255 - xx * 4], -1).astype(np.uint8)
    raw = mosaic(rgb, pattern)
    ours = image_to_rgb(raw_msg(raw[..., None], f"bayer_{pattern}8"))
    code = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
            "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB}[pattern]
    theirs = cv2.cvtColor(raw, code)
    diff = np.abs(ours[2:-2, 2:-2].astype(int) - theirs[2:-2, 2:-2].astype(int))
    assert diff.max() <= 3
    assert np.abs(ours.astype(int) - rgb.astype(int)).mean() < 4
    # 16-bit Bayer: >> 8 then the same demosaic.
    ours16 = image_to_rgb(raw_msg((raw.astype(np.uint16) * 257)[..., None],
                                  f"bayer_{pattern}16", big=True))
    assert (ours16 == ours).all()


@pytest.mark.parametrize("encoding,code", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUY2")])
def test_yuv422_against_opencv(encoding, code):
    cv2 = pytest.importorskip("cv2")
    h, w = 6, 10
    raw = RNG.integers(16, 240, (h, w, 2), dtype=np.uint8)
    ours = image_to_rgb(raw_msg(raw, encoding, pad=3))
    theirs = cv2.cvtColor(raw, getattr(cv2, f"COLOR_YUV2RGB_{code}"))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2
    with pytest.raises(ImageDecodeError, match="even width"):
        image_to_rgb(raw_msg(raw[:, :5], encoding))


def test_rosbags_image_cross_check():
    """The conversions agree with rosbags-image (cv_bridge's rules) on plain encodings."""
    from rosbags.image import message_to_cvimage
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    for enc in ("rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "mono8", "mono16"):
        m = rgb_to_image(rgb, enc, msg_type=None)
        ref = message_to_cvimage(m, "rgb8")
        assert (image_to_rgb(m) == ref).all(), enc


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("backend", ["cv2", "pil"])
def test_compressed(ext, backend, monkeypatch, val_frames):
    from io import BytesIO

    from PIL import Image
    rgb = val_frames[0][0][::4, ::4].copy()
    b = BytesIO()
    Image.fromarray(rgb).save(b, format="PNG" if ext == ".png" else "JPEG", quality=95)
    if backend == "pil":
        monkeypatch.setattr(ic, "_cv2", lambda: None)
    out = compressed_to_rgb(types.SimpleNamespace(format=ext[1:], data=b.getvalue()))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if ext == ".png":
        assert (out == rgb).all()
    else:
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 6
    for bad in (b"", b"\xff\xd8\xff garbage", b.getvalue()[: len(b.getvalue()) // 3][:20]):
        with pytest.raises(ImageDecodeError):
            compressed_to_rgb(types.SimpleNamespace(format="jpeg", data=bad))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_check_compressed_catches_truncated_and_mislabelled_data(ext, val_frames):
    from io import BytesIO

    from PIL import Image
    b = BytesIO()
    Image.fromarray(val_frames[0][0][::4, ::4].copy()).save(b, format="PNG" if ext == ".png" else "JPEG")
    data, fmt = b.getvalue(), ext[1:]
    check_compressed(types.SimpleNamespace(format=fmt, data=data))            # complete: ok
    check_compressed(types.SimpleNamespace(format=fmt, data=data + b"\0" * 16))  # padded: ok
    check_compressed(types.SimpleNamespace(format="16UC1; compressedDepth png",
                                           data=b"\0" * 12 + data) if ext == ".png" else
                     types.SimpleNamespace(format="bgr8; jpeg compressed bgr8", data=data))
    for bad, why in ((data[: len(data) // 2], "truncated"), (b"", "no data"),
                     (b"GIF89a....", "neither JPEG nor PNG")):
        with pytest.raises(ImageDecodeError, match=why) as e:
            check_compressed(types.SimpleNamespace(format=fmt, data=bad))
        assert e.value.reason == "compressed"
    # a format the decoder reads must have a readable header (its size is checked from it)
    with pytest.raises(ImageDecodeError, match="header") as e:
        check_compressed(types.SimpleNamespace(format="tiff", data=b"II*\0 no directory"))
    assert e.value.reason == "compressed"


def test_compressed_gray_and_16bit():
    cv2 = pytest.importorskip("cv2")
    g16 = (RNG.integers(0, 65536, (5, 6), dtype=np.int64)).astype(np.uint16)
    ok, png = cv2.imencode(".png", g16)
    out = compressed_to_rgb(types.SimpleNamespace(format="16UC1; png", data=png.tobytes()))
    assert (out[..., 0] == (g16 >> 8)).all() and (out[..., 2] == (g16 >> 8)).all()


@pytest.mark.parametrize("kw,why", [
    (dict(height=2, width=2, encoding="rgb8", step=6, data=b"\0" * 11),
     "data is 11 bytes, expected height\\*step = 2\\*6 = 12"),
    (dict(height=2, width=2, encoding="rgb8", step=6, data=b"\0" * 13), "data is 13 bytes"),
    (dict(height=2, width=4, encoding="rgb8", step=10, data=b"\0" * 20),
     "step 10 < width\\*bytes_per_pixel 12"),
    (dict(height=1, width=1, encoding="foo", step=3, data=b"\0" * 3), "unknown encoding 'foo'"),
    (dict(height=0, width=0, encoding="rgb8", step=0, data=b""), "image is 0x0"),
    (dict(height=3, width=0, encoding="rgb8", step=0, data=b""), "image is 0x3"),
    (dict(height=-1, width=2, encoding="rgb8", step=6, data=b""), "negative"),
    (dict(height=2, width=2, encoding="rgb8", step=6, data=None), "no data"),
    (dict(height=2, width=2, encoding="rgb8", step=6, data="abcdefghijkl"), "str"),
    (dict(height=1, width=1, encoding="rgb8", step=3, data=[1, 2, 300]), "bytes"),
    (dict(height="2", width=2, encoding="rgb8", step=6, data=b""), "'height' is str"),
    (dict(height=1, width=2, encoding="rgb8", step=6, is_bigendian="x", data=b"\0" * 6),
     "is_bigendian"),
])
def test_errors_say_why(kw, why):
    with pytest.raises(ImageDecodeError, match=why):
        image_to_rgb(msg(**kw))


def test_missing_fields():
    with pytest.raises(ImageDecodeError, match="encoding"):
        image_to_rgb(object())
    with pytest.raises(ImageDecodeError, match="height"):
        image_to_rgb(types.SimpleNamespace(encoding="rgb8"))


def test_one_pixel_decodes():
    # 1x1 is a valid image for the codec (the node drops it as too small for the model).
    out = image_to_rgb(msg(height=1, width=1, encoding="rgb8", step=3, data=b"\x01\x02\x03"))
    assert out.tolist() == [[[1, 2, 3]]]


def test_encoding_case_and_lists():
    assert set(SUPPORTED_ENCODINGS) >= {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16",
                                        "16UC1", "8UC1", "8UC3", "16UC3", "rgb16", "bgr16",
                                        "rgba16", "bgra16", "32FC1", "bayer_rggb8",
                                        "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
                                        "bayer_rggb16", "yuv422", "yuv422_yuy2"}
    m = rgb_to_image(np.zeros((2, 2, 3), np.uint8), "rgb8", msg_type=None)
    m.encoding = "RGB8"
    assert image_to_rgb(m).shape == (2, 2, 3)


# -- property tests ---------------------------------------------------------------------------
ENC_NAMES = sorted({e.name for e in ENCODINGS.values()})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(enc=st.one_of(st.sampled_from(ENC_NAMES), st.text(max_size=8)),
       h=st.integers(0, 9), w=st.integers(0, 9), pad=st.integers(-4, 6),
       dlen=st.integers(-3, 3), big=st.integers(0, 1), seed=st.integers(0, 2**16))
def test_property_decode_or_decode_error(enc, h, w, pad, dlen, big, seed):
    """Random encodings, sizes, strides and lengths: an RGB array exactly when the message is
    well formed, ImageDecodeError otherwise, never another exception."""
    info = ENCODINGS.get(enc.strip().lower())
    bpp = info.bytes_per_pixel if info else 3
    step = max(0, w * bpp + pad)
    data = np.random.default_rng(seed).integers(0, 256, max(0, h * step + dlen),
                                                dtype=np.uint8).tobytes()
    m = msg(height=h, width=w, encoding=enc, step=step, is_bigendian=big, data=data)
    valid = (info is not None and h > 0 and w > 0 and step >= w * bpp
             and len(data) == h * step and not (info.kind in ("uyvy", "yuyv") and w % 2))
    try:
        out = image_to_rgb(m)
    except ImageDecodeError as e:
        assert not valid, f"valid message rejected: {e}"
        assert str(e)
        return
    assert valid
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


@settings(max_examples=150, deadline=None)
@given(enc=st.sampled_from([e for e in ENCODABLE]), h=st.integers(1, 8), w=st.integers(1, 8),
       pad=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_property_round_trip_with_padding(enc, h, w, pad, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    f = image_fields(rgb, enc)
    rows = np.frombuffer(f["data"], np.uint8).reshape(h, f["step"])
    padded = np.concatenate([rows, np.full((h, pad), 7, np.uint8)], 1)
    out = image_to_rgb(msg(**dict(f, step=f["step"] + pad, data=padded.tobytes())))
    ref = image_to_rgb(msg(**f))
    assert (out == ref).all()
    if enc not in MONO:
        assert (out == rgb).all()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=64), fmt=st.sampled_from(["jpeg", "png", "", "bogus",
                                                         "16UC1; compressedDepth png"]))
def test_property_compressed_garbage(data, fmt):
    try:
        out = compressed_to_rgb(types.SimpleNamespace(format=fmt, data=data))
    except ImageDecodeError:
        return
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


# -- compressed headers: sizes before decoding (issue 16) ------------------------------------
def _spy_decoders(monkeypatch):
    """Make any decoding fail the test: OpenCV's imdecode and Pillow's open raise."""
    def boom(*a, **k):
        raise AssertionError("the decoder was called")
    monkeypatch.setattr(ic, "_cv2", lambda: types.SimpleNamespace(
        imdecode=boom, IMREAD_UNCHANGED=-1, error=RuntimeError))
    from PIL import Image
    monkeypatch.setattr(Image, "open", boom)


@pytest.mark.parametrize("bomb", ["png", "jpeg"])
def test_compressed_bombs_are_refused_from_their_header(bomb, monkeypatch):
    """A 109 KB PNG and a 1 KB JPEG that declare 30000x30000 pixels are refused from the size
    in their header (IHDR, SOF), before a byte is decoded (decoding took 4-6 GB)."""
    from msaf_ros.tools.hostile import jpeg_bomb, png_bomb
    data = png_bomb() if bomb == "png" else jpeg_bomb()
    m = types.SimpleNamespace(format=bomb, data=data)
    _spy_decoders(monkeypatch)
    with pytest.raises(ImageDecodeError, match="30000x30000 .*max_pixels = 8388608") as e:
        check_compressed(m, max_pixels=8_388_608)
    assert e.value.reason == "too-large"
    for limit in (8_388_608, None):          # None: the codec's own default limit
        with pytest.raises(ImageDecodeError, match="30000x30000") as e:
            compressed_to_rgb(m, max_pixels=limit)
        assert e.value.reason == "too-large"
    monkeypatch.setattr(ic, "_cv2", lambda: None)     # the Pillow path checks first too
    with pytest.raises(ImageDecodeError, match="30000x30000"):
        compressed_to_rgb(m, max_pixels=8_388_608)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tiff", ".bmp", ".webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_compressed_header_sizes_of_every_accepted_format(ext, channels):
    cv2 = pytest.importorskip("cv2")
    img = RNG.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    data = cv2.imencode(ext, img[..., 0] if channels == 1 else img)[1].tobytes()
    kind, w, h = ic.compressed_header(data)
    assert (w, h) == (37, 23) and kind == {".jpg": "JPEG", ".png": "PNG", ".tiff": "TIFF",
                                           ".bmp": "BMP", ".webp": "WebP"}[ext]
    assert check_compressed(types.SimpleNamespace(format=ext[1:], data=data))[1:] == (23, 37)
    assert compressed_to_rgb(types.SimpleNamespace(format=ext[1:], data=data)).shape == \
        (23, 37, 3)
    with pytest.raises(ImageDecodeError, match="above max_pixels") as e:
        check_compressed(types.SimpleNamespace(format=ext[1:], data=data), max_pixels=850)
    assert e.value.reason == "too-large"


def test_compressed_formats_without_a_readable_size_are_refused():
    cv2 = pytest.importorskip("cv2")
    img = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for ext in (".ppm", ".ras", ".hdr"):
        ok, enc = cv2.imencode(ext, img)
        with pytest.raises(ImageDecodeError, match="no format the node reads"):
            compressed_to_rgb(types.SimpleNamespace(format=ext[1:], data=enc.tobytes()))
    with pytest.raises(ImageDecodeError, match="no frame header"):
        ic.compressed_header(b"\xff\xd8\xff\xda\x00\x02\xff\xd9")


def _valid_compressed(ext, seed):
    import cv2
    img = np.random.default_rng(seed).integers(0, 256, (9 + seed % 7, 11 + seed % 5, 3),
                                               dtype=np.uint8)
    return cv2.imencode(ext, img)[1].tobytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ext=st.sampled_from([".jpg", ".png", ".tiff", ".bmp", ".webp"]),
       seed=st.integers(0, 50),
       edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 400)), limit=st.sampled_from([0, 150, 10**6]))
def test_property_mutated_compressed_headers(ext, seed, edits, cut, limit):
    """Valid images with bytes of their headers changed or cut off: the checks and the
    decoder raise ImageDecodeError or give an image of exactly the size the header
    declares, never above max_pixels, never another exception."""
    b = bytearray(_valid_compressed(ext, seed))
    for pos, val in edits:
        if pos < len(b):
            b[pos] = val
    if cut is not None:
        b = b[:cut]
    m = types.SimpleNamespace(format=ext[1:], data=bytes(b))
    try:
        kind, h, w = check_compressed(m, max_pixels=limit)
    except ImageDecodeError:
        kind = None
    try:
        out = compressed_to_rgb(m, max_pixels=limit)
    except ImageDecodeError:
        return
    hw = ic.compressed_header(bytes(b))[1:][::-1]
    assert out.shape == hw + (3,) and out.dtype == np.uint8
    assert not limit or out.shape[0] * out.shape[1] <= limit
    if kind is not None:
        assert (h, w) == hw


@settings(max_examples=200, deadline=None)
@given(fmt=st.one_of(st.text(max_size=30), st.binary(max_size=30), st.none(), st.integers(),
                     st.just("x" * 5000), st.just("rgb8; tiff compressed ")),
       data=st.one_of(st.binary(max_size=40), st.none(), st.text(max_size=5),
                      st.lists(st.integers(-5, 300), max_size=8),
                      st.integers(0, 2**40)))       # bytes(2**40) would be a 1 TB allocation
def test_property_compressed_message_fields(fmt, data):
    """Any format and data field: ImageDecodeError with a short message, or an image."""
    m = types.SimpleNamespace(format=fmt, data=data)
    for f in (check_compressed, compressed_to_rgb):
        try:
            f(m)
        except ImageDecodeError as e:
            assert len(str(e)) < 600


# -- compressed_image_transport's formats (issue 16, item 5) -----------------------------------
@pytest.mark.parametrize("backend", ["cv2", "pil"])
@pytest.mark.parametrize("fmt,stored", [
    ("rgb8; tiff compressed ", "rgb"),          # TIFF: the image's own bytes, no conversion
    ("rgb8; png compressed bgr8", "bgr"),
    ("bgr8; png compressed bgr8", "bgr"),
    ("rgba8; png compressed bgr8", "bgr"),
    ("png", "bgr"),                             # no ';': OpenCV's order
    ("mono8; png compressed ", "bgr")])
def test_compressed_channel_order_follows_the_format(fmt, stored, backend, monkeypatch):
    """compressed_image_transport's subscriber rule: a colour image holds BGR exactly when the
    format says 'compressed bgr'; TIFF output ('rgb8; tiff compressed ') holds RGB."""
    cv2 = pytest.importorskip("cv2")
    rgb = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    ext = ".tiff" if "tiff" in fmt else ".png"
    data = cv2.imencode(ext, rgb if stored == "rgb" else rgb[..., ::-1])[1].tobytes()
    if backend == "pil":
        monkeypatch.setattr(ic, "_cv2", lambda: None)
    out = compressed_to_rgb(types.SimpleNamespace(format=fmt, data=data))
    assert (out == rgb).all()


def test_compressed_32fc1_tiff_is_scaled_like_raw_32fc1():
    cv2 = pytest.importorskip("cv2")
    px = RNG.uniform(-3, 5, (6, 7)).astype(np.float32)
    px[0, 0], px[0, 1] = np.nan, np.inf
    data = cv2.imencode(".tiff", px)[1].tobytes()
    out = compressed_to_rgb(types.SimpleNamespace(format="32FC1; tiff compressed ", data=data))
    assert (out == image_to_rgb(raw_msg(px[..., None], "32FC1"))).all()


def test_float_extremes_decode_without_numpy_warnings():
    """A 32FC1 frame spanning ±3.4e38 is scaled like any other, and prints nothing (numpy's
    bare 'overflow encountered' warning reached the node's console; issue 16, item 4)."""
    import warnings
    f32 = np.finfo(np.float32)
    px = np.array([[[f32.min], [0.0]], [[f32.max], [np.nan]]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = image_to_rgb(raw_msg(px, "32FC1"))
    assert out[..., 0].tolist() == [[0, 128], [255, 0]]
