"""sensor_msgs/Image and CompressedImage <-> numpy RGB, without cv_bridge and without rclpy.

Duck-typed: works on rclpy messages, rosbags message objects and anything with the same
fields (``height, width, encoding, is_bigendian, step, data``; compressed: ``format, data``).
``data`` may be ``bytes``, ``bytearray``, ``array.array('B')``, ``memoryview``, a numpy array
or a list of ints.

Decoding (:func:`image_to_rgb`) always returns a new C-contiguous H×W×3 ``uint8`` RGB array
that owns its memory. Conventions:

- 16-bit encodings are reduced to 8 bits by ``value >> 8`` (the high byte); ``is_bigendian``
  is honoured for 16-bit and float data.
- ``32FC1`` is scaled per frame: finite values map linearly from [min, max] to [0, 255]
  (a constant image becomes 0); NaN and ±inf become 0.
- mono encodings are replicated to three channels; alpha is dropped.
- ``8UC3``/``16UC3`` are BGR (the OpenCV convention cv_bridge follows); ``8UC4``/``16UC4``
  are BGRA.
- Bayer images are demosaiced bilinearly in numpy (16-bit Bayer: ``>> 8`` first).
- ``yuv422`` is UYVY and ``yuv422_yuy2`` is YUYV, both BT.601 studio range; the width must
  be even.
- ``step`` (row stride, bytes) may exceed ``width × bytes_per_pixel`` (row padding); the
  data must be exactly ``height × step`` bytes long.

Compressed images (:func:`compressed_to_rgb`): JPEG, PNG, TIFF, BMP and WebP. Their size is
read from the header first (:func:`compressed_header`) and a frame above ``max_pixels`` is
refused without decoding, so a few KB that declare 30000×30000 pixels cost nothing. 16-bit
images are reduced with ``>> 8`` and float ones scaled per frame, as raw ones are; the
channel order follows compressed_image_transport's format string.

Every problem with a message raises :class:`~msaf_ros.errors.ImageDecodeError` (a
``ValueError``) whose message says why; no other exception type escapes the decoders.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from .errors import ImageDecodeError

__all__ = [
    "ImageDecodeError", "Encoding", "ENCODINGS", "SUPPORTED_ENCODINGS", "ENCODABLE",
    "encoding_info", "check_image", "image_to_rgb", "check_compressed", "compressed_header",
    "compressed_to_rgb", "COMPRESSED_FORMATS", "MAX_PIXELS_DEFAULT", "max_message_bytes",
    "image_fields",
    "rgb_to_image",
    "labels_to_image", "build_image",
]


@dataclass(frozen=True)
class Encoding:
    """Layout of one sensor_msgs/Image encoding."""

    name: str
    channels: int      # samples per pixel (yuv422: 2 bytes per pixel, modelled as 2 x uint8)
    depth: int         # bytes per sample: 1, 2 or 4
    kind: str          # 'rgb' 'bgr' 'rgba' 'bgra' 'mono' 'float' 'bayer' 'uyvy' 'yuyv'
    pattern: str = ""  # bayer pattern, e.g. 'rggb'

    @property
    def bytes_per_pixel(self) -> int:
        return self.channels * self.depth


def _table() -> Dict[str, Encoding]:
    t: Dict[str, Encoding] = {}

    def add(name: str, ch: int, depth: int, kind: str, pattern: str = "") -> None:
        t[name.lower()] = Encoding(name, ch, depth, kind, pattern)

    add("rgb8", 3, 1, "rgb")
    add("bgr8", 3, 1, "bgr")
    add("rgba8", 4, 1, "rgba")
    add("bgra8", 4, 1, "bgra")
    add("mono8", 1, 1, "mono")
    add("8UC1", 1, 1, "mono")
    add("8UC3", 3, 1, "bgr")
    add("8UC4", 4, 1, "bgra")
    add("rgb16", 3, 2, "rgb")
    add("bgr16", 3, 2, "bgr")
    add("rgba16", 4, 2, "rgba")
    add("bgra16", 4, 2, "bgra")
    add("mono16", 1, 2, "mono")
    add("16UC1", 1, 2, "mono")
    add("16UC3", 3, 2, "bgr")
    add("16UC4", 4, 2, "bgra")
    add("32FC1", 1, 4, "float")
    for p in ("rggb", "bggr", "gbrg", "grbg"):
        add(f"bayer_{p}8", 1, 1, "bayer", p)
        add(f"bayer_{p}16", 1, 2, "bayer", p)
    add("yuv422", 2, 1, "uyvy")
    add("uyvy", 2, 1, "uyvy")
    add("yuv422_yuy2", 2, 1, "yuyv")
    add("yuyv", 2, 1, "yuyv")
    return t


ENCODINGS: Dict[str, Encoding] = _table()
#: Encodings :func:`image_to_rgb` accepts (canonical spelling).
SUPPORTED_ENCODINGS = tuple(e.name for e in ENCODINGS.values())


def encoding_info(encoding: Any) -> Encoding:
    """The :class:`Encoding` of a name (case-insensitive). ImageDecodeError if unknown."""
    name = encoding.decode("utf-8", "replace") if isinstance(encoding, (bytes, bytearray)) \
        else str(encoding)
    e = ENCODINGS.get(name.strip().lower())
    if e is None:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise ImageDecodeError(f"unknown encoding {shown!r}; supported: "
                               f"{', '.join(SUPPORTED_ENCODINGS)}", "encoding")
    return e


# -- raw bytes -----------------------------------------------------------------------------
def _as_bytes(data: Any) -> np.ndarray:
    """Any supported ``data`` container → 1-D uint8 array (a view where possible)."""
    if data is None:
        raise ImageDecodeError("message has no data", "data")
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "uib" or data.dtype.itemsize != 1:
            raise ImageDecodeError(f"data is a numpy array of {data.dtype}, expected uint8",
                                   "data")
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        try:
            return np.frombuffer(data, dtype=np.uint8)
        except (TypeError, ValueError, BufferError) as e:
            raise ImageDecodeError(f"data cannot be read as bytes ({e})", "data") from None
    if isinstance(data, str):
        raise ImageDecodeError("data is a str, expected bytes", "data")
    if isinstance(data, (int, float, np.number)):   # bytes(n) would allocate n zero bytes
        raise ImageDecodeError(f"data is a {type(data).__name__}, expected bytes", "data")
    try:
        return np.frombuffer(bytes(data), dtype=np.uint8)
    except (TypeError, ValueError, OverflowError) as e:
        raise ImageDecodeError(f"data cannot be read as bytes ({e})", "data") from None


def _int_field(msg: Any, name: str) -> int:
    try:
        v = getattr(msg, name)
    except AttributeError:
        raise ImageDecodeError(f"message has no '{name}' field") from None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ImageDecodeError(f"'{name}' is {type(v).__name__}, expected an integer")
    return int(v)


def _rows(msg: Any) -> tuple:
    """Validate the fields of an Image message; return (encoding, h, w, rows as uint8 2-D).

    ``rows`` is (height, width * bytes_per_pixel), the row padding cut off.
    """
    try:
        enc_field = msg.encoding
    except AttributeError:
        raise ImageDecodeError("message has no 'encoding' field") from None
    h, w, step = _int_field(msg, "height"), _int_field(msg, "width"), _int_field(msg, "step")
    enc = encoding_info(enc_field)
    if h < 0 or w < 0 or step < 0:
        raise ImageDecodeError(f"negative size: height {h}, width {w}, step {step}")
    if h == 0 or w == 0:
        raise ImageDecodeError(f"image is {w}x{h}", "empty")
    row_bytes = w * enc.bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} < width*bytes_per_pixel {row_bytes} "
                               f"({w} x {enc.bytes_per_pixel} for {enc.name})", "step")
    if enc.kind in ("uyvy", "yuyv") and w % 2:
        raise ImageDecodeError(f"{enc.name} needs an even width, got {w}")
    buf = _as_bytes(getattr(msg, "data", None))
    if buf.size != h * step:
        raise ImageDecodeError(f"data is {buf.size} bytes, expected height*step = {h}*{step} = "
                               f"{h * step}", "length")
    rows = buf.reshape(h, step)[:, :row_bytes]
    return enc, h, w, rows


def _big(msg: Any) -> bool:
    v = getattr(msg, "is_bigendian", 0)
    try:
        return bool(int(v))
    except (TypeError, ValueError):
        raise ImageDecodeError(f"'is_bigendian' is {v!r}, expected 0 or 1") from None


def _samples(enc: Encoding, rows: np.ndarray, h: int, w: int, big: bool) -> np.ndarray:
    """rows (h, w*bpp) uint8 → (h, w, channels) samples, 16-bit reduced to uint8 by >> 8."""
    if enc.depth == 1:
        return rows.reshape(h, w, enc.channels)
    if enc.depth == 2:
        # The high byte of each little- or big-endian 16-bit sample is value >> 8.
        pairs = rows.reshape(h, w, enc.channels, 2)
        return pairs[..., 0 if big else 1]
    raise AssertionError(enc)  # float handled by the caller


def _float_to_u8(rows: np.ndarray, h: int, w: int, big: bool) -> np.ndarray:
    dt = np.dtype(">f4" if big else "<f4")
    return _float_to_u8_array(np.ascontiguousarray(rows).view(dt).reshape(h, w))


def _float_to_u8_array(v: np.ndarray) -> np.ndarray:
    """(h, w) floats → uint8 scaled from [min, max] of the finite values; NaN/inf → 0."""
    v = v.astype(np.float32)
    h, w = v.shape
    finite = np.isfinite(v)
    out = np.zeros((h, w), np.uint8)
    if finite.any():
        lo, hi = float(v[finite].min()), float(v[finite].max())
        if hi > lo:
            # halved first: (v - lo) of values near ±3.4e38 would overflow float32 (and numpy
            # would print a bare warning); halving is exact, so the result is the same
            scaled = (np.where(finite, v, lo) * 0.5 - lo * 0.5) * (510.0 / (hi - lo))
            out = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
            out[~finite] = 0
    return out


def _gray3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


BAYER_OFFSETS = {  # (row, col) of R and of B in the 2x2 tile
    "rggb": ((0, 0), (1, 1)), "bggr": ((1, 1), (0, 0)),
    "gbrg": ((1, 0), (0, 1)), "grbg": ((0, 1), (1, 0)),
}


def _conv3(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """3x3 correlation of a padded (h+2, w+2) array → (h, w)."""
    h, w = x.shape[0] - 2, x.shape[1] - 2
    out = np.zeros((h, w), np.float32)
    for dy in range(3):
        for dx in range(3):
            if k[dy, dx]:
                out += k[dy, dx] * x[dy:dy + h, dx:dx + w]
    return out


def _demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaic of an (h, w) uint8 Bayer mosaic → (h, w, 3) uint8 RGB."""
    h, w = raw.shape
    (ry, rx), (by, bx) = BAYER_OFFSETS[pattern]
    yy = (np.arange(h) % 2)[:, None]
    xx = (np.arange(w) % 2)[None, :]
    r_mask = (yy == ry) & (xx == rx)
    b_mask = (yy == by) & (xx == bx)
    g_mask = ~(r_mask | b_mask)
    # Normalised convolution: sum of known neighbours / sum of their weights. Works at the
    # borders and for any size (zero padding, weights padded alike).
    k_rb = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
    k_g = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32)
    v = raw.astype(np.float32)
    out = np.empty((h, w, 3), np.uint8)
    for c, (mask, k) in enumerate(((r_mask, k_rb), (g_mask, k_g), (b_mask, k_rb))):
        m = mask.astype(np.float32)
        num = _conv3(np.pad(v * m, 1), k)
        den = _conv3(np.pad(m, 1), k)
        with np.errstate(invalid="ignore", divide="ignore"):
            val = np.where(den > 0, num / np.maximum(den, 1e-6), 0.0)
        val = np.where(mask, v, val)  # keep measured samples exactly
        out[..., c] = np.clip(val + 0.5, 0, 255).astype(np.uint8)
    return out


def _yuv422(rows: np.ndarray, h: int, w: int, order: str) -> np.ndarray:
    """UYVY / YUYV (BT.601, studio range) → RGB uint8."""
    q = rows.reshape(h, w // 2, 4).astype(np.float32)
    if order == "uyvy":
        u, y0, v, y1 = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    else:
        y0, u, y1, v = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    y = np.empty((h, w), np.float32)
    y[:, 0::2], y[:, 1::2] = y0, y1
    u = np.repeat(u, 2, axis=1) - 128.0
    v = np.repeat(v, 2, axis=1) - 128.0
    c = 1.164 * (y - 16.0)
    rgb = np.stack([c + 1.596 * v, c - 0.813 * v - 0.391 * u, c + 2.018 * u], axis=-1)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def check_image(msg: Any) -> tuple:
    """Validate an Image message without decoding it (cheap: no pixel is copied).

    Returns ``(encoding_name, height, width)``; raises :class:`ImageDecodeError` exactly
    when :func:`image_to_rgb` would reject the layout."""
    try:
        enc, h, w, _ = _rows(msg)
        _big(msg)
        return enc.name, h, w
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"invalid image message ({type(e).__name__}: {e})") from None


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (any object with its fields) → new H×W×3 uint8 RGB array.

    Raises :class:`ImageDecodeError` for anything it cannot decode (unknown encoding,
    ``0×0``, ``step`` below ``width × bytes_per_pixel``, data not ``height × step`` bytes).
    """
    try:
        enc, h, w, rows = _rows(msg)
        big = _big(msg)
        if enc.kind == "float":
            return _gray3(_float_to_u8(rows, h, w, big))
        if enc.kind == "uyvy" or enc.kind == "yuyv":
            return _yuv422(rows, h, w, enc.kind)
        s = _samples(enc, rows, h, w, big)
        if enc.kind == "mono":
            return _gray3(s[..., 0])
        if enc.kind == "bayer":
            return _demosaic(np.ascontiguousarray(s[..., 0]), enc.pattern)
        if enc.kind in ("rgb", "rgba"):
            return s[..., :3].copy(order="C")  # always a copy: never aliases msg.data
        return s[..., 2::-1].copy(order="C")  # bgr, bgra
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("image too large to decode (out of memory)") from None
    except Exception as e:  # noqa: BLE001 - the contract: only ImageDecodeError escapes
        raise ImageDecodeError(f"cannot decode image ({type(e).__name__}: {e})") from None


# -- compressed ----------------------------------------------------------------------------
def _cv2():
    try:
        import cv2  # noqa: PLC0415
        return cv2
    except Exception:  # noqa: BLE001 - missing or broken OpenCV: use PIL
        return None


_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
_TIFF_STARTS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")

#: Compressed formats the decoders accept: the ones whose size :func:`compressed_header`
#: reads from the header, so that a frame is measured before a byte of it is decoded.
COMPRESSED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WebP")
#: Largest frame (width × height) the compressed decoder takes when its caller sets no limit
#: (``max_pixels=None``): 64 Mpx, about 200 MB of RGB.
MAX_PIXELS_DEFAULT = 1 << 26
#: Bytes per pixel of the widest raw encoding (rgba16): ``max_pixels × this`` bounds the size
#: of any message the node accepts (see :func:`max_message_bytes`).
MAX_BYTES_PER_PIXEL = 8


def max_message_bytes(max_pixels: int) -> int:
    """The largest message (data bytes) worth taking when frames may have ``max_pixels``
    pixels: the widest encoding (8 bytes per pixel) at that size, plus 1 MiB of row padding.
    0 (no pixel limit) = no byte limit either."""
    return int(max_pixels) * MAX_BYTES_PER_PIXEL + (1 << 20) if max_pixels else 0


def _compressed_payload(msg: Any) -> tuple:
    """(payload bytes as uint8 array, lower-case format) of a CompressedImage."""
    buf = _as_bytes(getattr(msg, "data", None))
    fmt = str(getattr(msg, "format", "") or "")[:200].lower()    # for the checks and errors
    if buf.size == 0:
        raise ImageDecodeError("compressed image has no data", "compressed")
    if "compresseddepth" in fmt and buf.size > 12:
        buf = buf[12:]                                  # compressedDepth's 12-byte header
    return buf, fmt


def _u(b: Any, off: int, n: int, order: str = "big") -> int:
    """The unsigned integer of ``n`` bytes at ``off`` of ``b`` (bytes or a memoryview)."""
    if off < 0 or off + n > len(b):
        raise ImageDecodeError("header is truncated", "compressed")
    return int.from_bytes(b[off:off + n], order)


def _jpeg_size(b: Any) -> tuple:
    """(width, height) from the first start-of-frame segment before the scan."""
    i = 2
    while True:
        if _u(b, i, 1) != 0xFF:
            raise ImageDecodeError(f"JPEG marker expected at byte {i}", "compressed")
        while _u(b, i, 1) == 0xFF:               # fill bytes
            i += 1
        marker = _u(b, i, 1)
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue                              # no length field
        if marker in (0xD9, 0xDA):
            raise ImageDecodeError("JPEG has no frame header (SOF) before its scan",
                                   "compressed")
        length = _u(b, i, 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = _u(b, i + 3, 2), _u(b, i + 5, 2)
            if h == 0:
                raise ImageDecodeError("JPEG frame header gives height 0 (DNL is not "
                                       "supported)", "compressed")
            return w, h
        if length < 2:
            raise ImageDecodeError(f"JPEG segment of length {length}", "compressed")
        i += length


def _tiff_size(b: Any) -> tuple:
    """(width, height) of the first image (IFD) of a TIFF or BigTIFF file."""
    order = "little" if bytes(b[:2]) == b"II" else "big"
    big = _u(b, 2, 2, order) == 43
    if big:
        ifd, count_n, entry_n, val_off = _u(b, 8, 8, order), 8, 20, 12
    else:
        ifd, count_n, entry_n, val_off = _u(b, 4, 4, order), 2, 12, 8
    n = _u(b, ifd, count_n, order)
    if n > 4096:
        raise ImageDecodeError(f"TIFF directory of {n} entries", "compressed")
    tags: Dict[int, int] = {}
    for k in range(n):
        e = ifd + count_n + k * entry_n
        tag, typ = _u(b, e, 2, order), _u(b, e + 2, 2, order)
        if tag in (256, 257, 277):               # ImageWidth, ImageLength, SamplesPerPixel
            size = {3: 2, 4: 4, 16: 8}.get(typ)
            if size is None:
                raise ImageDecodeError(f"TIFF tag {tag} has type {typ}", "compressed")
            tags[tag] = _u(b, e + val_off, size, order)
    if 256 not in tags or 257 not in tags:
        raise ImageDecodeError("TIFF has no ImageWidth/ImageLength", "compressed")
    if tags.get(277, 1) > 4:
        raise ImageDecodeError(f"TIFF has {tags[277]} samples per pixel (at most 4 are "
                               f"supported)", "compressed")
    return tags[256], tags[257]


def _bmp_size(b: bytes) -> tuple:
    if _u(b, 14, 4, "little") == 12:             # OS/2 BITMAPCOREHEADER
        return _u(b, 18, 2, "little"), _u(b, 20, 2, "little")
    w = int.from_bytes(b[18:22], "little", signed=True)
    h = int.from_bytes(b[22:26], "little", signed=True)    # negative: rows top-down
    return abs(w), abs(h)


def _webp_size(b: bytes) -> tuple:
    kind = b[12:16]
    if kind == b"VP8X":
        return _u(b, 24, 3, "little") + 1, _u(b, 27, 3, "little") + 1
    if kind == b"VP8L":
        if _u(b, 20, 1) != 0x2F:
            raise ImageDecodeError("WebP lossless signature missing", "compressed")
        v = _u(b, 21, 4, "little")
        return (v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":
        if b[23:26] != b"\x9d\x01\x2a":
            raise ImageDecodeError("WebP start code missing", "compressed")
        return _u(b, 26, 2, "little") & 0x3FFF, _u(b, 28, 2, "little") & 0x3FFF
    raise ImageDecodeError(f"WebP chunk {kind!r} is not VP8, VP8L or VP8X", "compressed")


def compressed_header(data: Any) -> tuple:
    """``(format, width, height)`` read from the header of compressed image bytes (a
    CompressedImage's payload), without decoding: JPEG (the frame header, SOF), PNG (IHDR),
    TIFF (the first directory), BMP and WebP. Raises :class:`ImageDecodeError` (reason
    ``compressed``) for any other format and for headers that cannot be read."""
    buf = _as_bytes(data)
    b = buf[:64].tobytes()                       # the signatures and the short headers
    whole = memoryview(buf)                      # JPEG and TIFF headers may lie further in
    try:
        if b.startswith(_JPEG_START):
            return ("JPEG",) + _jpeg_size(whole)
        if b.startswith(_PNG_START):
            if b[12:16] != b"IHDR":
                raise ImageDecodeError("PNG does not start with IHDR", "compressed")
            return "PNG", _u(b, 16, 4), _u(b, 20, 4)
        if b[:4] in _TIFF_STARTS:
            return ("TIFF",) + _tiff_size(whole)
        if b.startswith(b"BM") and len(b) >= 26:
            return ("BMP",) + _bmp_size(b)
        if b.startswith(b"RIFF") and b[8:12] == b"WEBP":
            return ("WebP",) + _webp_size(b)
    except ImageDecodeError as e:
        raise ImageDecodeError(f"unreadable image header ({e})", "compressed") from None
    raise ImageDecodeError(f"{buf.size} bytes of compressed data in no format the node reads "
                           f"(it reads {', '.join(COMPRESSED_FORMATS)})", "compressed")


def _check_pixels(kind: str, w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{kind} header gives an image of {w}x{h}", "empty")
    if max_pixels and w * h > max_pixels:
        raise ImageDecodeError(f"{kind} header gives {w}x{h} = {w * h} pixels, above "
                               f"max_pixels = {max_pixels} (not decoded)", "too-large")


def check_compressed(msg: Any, max_pixels: int = 0) -> tuple:
    """Cheap checks of a sensor_msgs/CompressedImage, without decoding (the node runs them in
    the subscription callback, so that a broken frame never displaces a good one waiting for
    the model): data present; a format the decoder reads (:data:`COMPRESSED_FORMATS`) with a
    readable header; a JPEG payload ends with its end-of-image marker and a PNG payload with
    its IEND chunk (a truncated transfer fails here); a format naming JPEG or PNG holds such
    data; and the size the header declares is at most ``max_pixels`` (0 = no limit).

    Returns ``(format, height, width)`` as the header declares them. Raises
    :class:`ImageDecodeError`: reason ``compressed``, ``empty`` (a 0-pixel header) or
    ``too-large``."""
    buf, fmt = _compressed_payload(msg)
    head, tail = buf[:8].tobytes(), buf[-1024:].tobytes()   # end markers: allow padding
    if head.startswith(_JPEG_START):
        if _JPEG_END not in tail:
            raise ImageDecodeError(f"JPEG data of {buf.size} bytes has no end-of-image marker "
                                   f"(truncated?)", "compressed")
    elif head.startswith(_PNG_START):
        if _PNG_END not in tail:
            raise ImageDecodeError(f"PNG data of {buf.size} bytes has no IEND chunk "
                                   f"(truncated?)", "compressed")
    elif any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ImageDecodeError(f"format {fmt!r} but the {buf.size} bytes are neither JPEG nor "
                               f"PNG data", "compressed")
    kind, w, h = compressed_header(buf)
    _check_pixels(kind, w, h, max_pixels)
    return kind, h, w


def _flip_channels(fmt: str) -> bool:
    """Whether a decoded colour image is BGR (OpenCV's order) rather than RGB.

    compressed_image_transport's rule: a format ``"<encoding>; <codec> compressed <target>"``
    with a colour encoding holds BGR exactly when it says ``compressed bgr``
    (``"rgb8; jpeg compressed bgr8"``); otherwise (``"rgb8; tiff compressed "``) the pixels
    were stored in the image's own RGB order. A format without ``;`` (``"jpeg"``) is BGR,
    as OpenCV writes it."""
    enc, sep, rest = fmt.partition(";")
    if not sep:
        return True
    if enc.strip() not in ("rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16",
                           "bgra16"):
        return True                    # mono/depth or unknown: grey, or OpenCV's order
    return "compressed bgr" in rest


def _to_u8(img: np.ndarray) -> np.ndarray:
    """Decoded samples → uint8, as the raw decoder does: 16 bit ``>> 8``, float min-max."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype.kind == "f":
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        if img.ndim == 2:
            return _float_to_u8_array(img)
        return np.stack([_float_to_u8_array(img[..., c]) for c in range(img.shape[2])], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def compressed_to_rgb(msg: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG, PNG, TIFF, BMP, WebP) → new H×W×3 uint8 RGB array.

    The header is read first and a frame of more than ``max_pixels`` pixels is refused
    without decoding (reason ``too-large``; None = :data:`MAX_PIXELS_DEFAULT`, 0 = no limit).
    Uses OpenCV when importable, else Pillow. 16-bit images are reduced to 8 bits with
    ``>> 8`` and float images (``32FC1; tiff``) scaled per frame from [min, max], as raw
    images are. Channel order follows compressed_image_transport (:func:`_flip_channels`).
    ``compressedDepth`` payloads (a 12-byte header before the PNG) are accepted too.
    Raises :class:`ImageDecodeError` when the data cannot be decoded.
    """
    try:
        buf, fmt = _compressed_payload(msg)
        kind, w, h = compressed_header(buf)
        _check_pixels(kind, w, h, MAX_PIXELS_DEFAULT if max_pixels is None else max_pixels)
        bgr = _flip_channels(fmt)
        cv2 = _cv2()
        if cv2 is not None:
            img = None
            try:
                img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            except cv2.error:
                img = None
            if img is None or img.size == 0:
                raise ImageDecodeError(f"cannot decode {buf.size} bytes of compressed data "
                                       f"(format {fmt or 'unset'!r})", "compressed")
            img = _to_u8(img)
            if img.ndim == 2:
                return _gray3(img)
            if img.shape[2] < 3:
                return _gray3(img[..., 0])
            return np.ascontiguousarray(img[..., 2::-1] if bgr else img[..., :3])
        import io  # noqa: PLC0415
        from PIL import Image as PILImage  # noqa: PLC0415
        try:
            with PILImage.open(io.BytesIO(buf.tobytes())) as im:
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    a = np.asarray(im).astype(np.uint32) >> 8
                    return _gray3(np.clip(a, 0, 255).astype(np.uint8))
                if im.mode == "F":
                    return _gray3(_float_to_u8_array(np.asarray(im, np.float32)))
                rgb = np.array(im.convert("RGB"), dtype=np.uint8)
                # Pillow gives the file's RGB: the reverse of OpenCV's order.
                return rgb if bgr else np.ascontiguousarray(rgb[..., ::-1])
        except Exception as e:  # noqa: BLE001
            raise ImageDecodeError(f"cannot decode {buf.size} bytes of compressed data "
                                   f"(format {fmt or 'unset'!r}: {e})", "compressed") from None
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("compressed image too large to decode (out of memory)",
                               "too-large") from None
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"cannot decode compressed image ({type(e).__name__}: {e})",
                               "compressed") from None


# -- encoding ------------------------------------------------------------------------------
#: Encodings :func:`image_fields` can write.
ENCODABLE = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "8UC4", "rgb16",
             "bgr16", "rgba16", "bgra16", "mono16", "16UC1", "16UC3", "16UC4")


def image_fields(arr: np.ndarray, encoding: str = "rgb8") -> Dict[str, Any]:
    """Fields of a sensor_msgs/Image holding ``arr`` in ``encoding``.

    ``arr`` is H×W×3 uint8 RGB, or H×W (or H×W×1) uint8 for a mono encoding (an RGB array
    given for a mono encoding is converted to luma, BT.601). 16-bit encodings store
    ``value * 257`` so that ``>> 8`` gives the value back. Returns
    ``dict(height, width, encoding, is_bigendian=0, step, data: bytes)``, rows unpadded.
    """
    enc = encoding_info(encoding)
    if enc.kind not in ("rgb", "bgr", "rgba", "bgra", "mono") or enc.name not in ENCODABLE:
        raise ValueError(f"cannot encode to {encoding!r}; supported: {', '.join(ENCODABLE)}")
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        raise ValueError(f"array must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if enc.kind == "mono":
        if a.ndim == 3 and a.shape[2] >= 3:
            a = np.clip(a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114 + 0.5,
                        0, 255).astype(np.uint8)
        if a.ndim != 2:
            raise ValueError(f"mono array must be H×W, got {a.shape}")
        px = a[..., None]
    else:
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ValueError(f"array must be H×W×3 RGB, got {a.shape}")
        rgb = a[..., :3]
        if enc.kind in ("bgr", "bgra"):
            rgb = rgb[..., ::-1]
        if enc.kind in ("rgba", "bgra"):
            alpha = a[..., 3:4] if a.shape[2] == 4 else np.full(a.shape[:2] + (1,), 255, np.uint8)
            px = np.concatenate([rgb, alpha], axis=2)
        else:
            px = rgb
    h, w = px.shape[:2]
    if enc.depth == 2:
        px = px.astype("<u2") * np.uint16(257)
    data = np.ascontiguousarray(px).tobytes()
    return dict(height=int(h), width=int(w), encoding=enc.name, is_bigendian=0,
                step=int(w * enc.bytes_per_pixel), data=data)


def _is_rosbags_type(msg_type: Any) -> bool:
    return hasattr(msg_type, "__msgtype__") or type(msg_type).__module__.startswith("rosbags") \
        or getattr(msg_type, "__module__", "").startswith("rosbags")


def build_image(fields: Dict[str, Any], header: Any = None, msg_type: Any = None) -> Any:
    """A message of ``msg_type`` from :func:`image_fields` output.

    ``msg_type``: rclpy's ``sensor_msgs.msg.Image`` (the default when importable), a rosbags
    Image class (``header`` required then), or any class taking the fields as keywords.
    Without ROS message packages a ``types.SimpleNamespace`` is returned.
    """
    if msg_type is None:
        try:
            from sensor_msgs.msg import Image as msg_type  # noqa: PLC0415,N813
        except Exception:  # noqa: BLE001 - no ROS 2 message packages
            import types  # noqa: PLC0415
            return types.SimpleNamespace(header=header, **fields)
    if _is_rosbags_type(msg_type):
        if header is None:
            raise ValueError("a header is needed to build a rosbags Image message")
        kw = dict(fields, data=np.frombuffer(fields["data"], np.uint8).copy())
        return msg_type(header=header, **kw)
    msg = msg_type()
    if header is not None:
        msg.header = header
    msg.height, msg.width = fields["height"], fields["width"]
    msg.encoding, msg.is_bigendian, msg.step = fields["encoding"], fields["is_bigendian"], \
        fields["step"]
    data = array.array("B")
    data.frombytes(fields["data"])  # one memcpy; rclpy's setter accepts array('B') as is
    msg.data = data
    return msg


def rgb_to_image(arr: np.ndarray, encoding: str = "rgb8", header: Any = None,
                 msg_type: Any = None) -> Any:
    """H×W×3 uint8 RGB (or H×W mono) → sensor_msgs/Image in ``encoding`` (image_fields)."""
    return build_image(image_fields(arr, encoding), header, msg_type)


def mono8_to_image(plane: np.ndarray, header: Any = None, msg_type: Any = None,
                   what: str = "image") -> Any:
    """An H×W uint8 plane (class ids, confidence) → mono8 sensor_msgs/Image."""
    plane = np.asarray(plane)
    if plane.dtype != np.uint8 or plane.ndim != 2:
        raise ValueError(f"{what} must be H×W uint8, got {plane.shape} {plane.dtype}")
    return build_image(image_fields(plane, "mono8"), header, msg_type)


def labels_to_image(labels: np.ndarray, header: Any = None, msg_type: Any = None) -> Any:
    """H×W uint8 class ids → mono8 sensor_msgs/Image."""
    return mono8_to_image(labels, header, msg_type, "labels")
