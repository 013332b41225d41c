"""The sample drive: a small rosbag2 (mcap) of CamVid's labelled val clip, shipped with the package.

What the bag holds (101 frames of sequence 0016E5, every frame labelled):

==============================  ===============================  ===========================
topic                           type                             content
==============================  ===============================  ===========================
``/camera/image_raw/compressed``  sensor_msgs/msg/CompressedImage  480×360 JPEG (quality 90,
                                                                 4:4:4), format
                                                                 ``rgb8; jpeg compressed bgr8``
``/camera/gt_labels``            sensor_msgs/msg/Image            480×360 ``mono8`` CamVid
                                                                 class ids 0..10, 11 = void
==============================  ===============================  ===========================

Both topics share each frame's header: ``frame_id`` ``camera`` and a stamp derived from the
CamVid frame number (``0016E5_NNNNN``, numbered at the 30 fps of the source video; the val
clip keeps every second one, so consecutive frames are 1/15 s = 66.67 ms apart):
``stamp = START_NS + round((NNNNN - first NNNNN) * 1e9 / 30)`` with ``START_NS`` =
1 700 000 000 s (2023-11-14T22:13:20Z). The bag's receive time of each message equals its
header stamp. mcap chunks are zstd-compressed (the mono8 labels shrink ~40×).

The shipped files are ``msaf_ros/data/camvid_0016E5.mcap`` (self-contained: every rosbags
and ROS 2 reader opens it directly) and ``msaf_ros/data/metadata.yaml``, which makes
``msaf_ros/data/`` itself a rosbag2 folder for tools that want a folder.

Rebuild it (deterministic: the same CamVid files and the same Pillow/libjpeg, zstd and
rosbags versions give a byte-identical bag)::

    python -m msaf_ros.tools.sample_drive --camvid /path/to/camvid --out msaf_ros/data --force

Dataset credit: CamVid, G. J. Brostow, J. Shotton, J. Fauqueur, R. Cipolla, "Segmentation and
Recognition Using Structure from Motion Point Clouds", ECCV 2008 (research use).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..cli import run_cli
from ..errors import SampleDriveError
from ..resources import DATA_DIR

BAG_NAME = "camvid_0016E5"
SEQUENCE = "0016E5"
CAMERA_TOPIC = "/camera/image_raw/compressed"
LABELS_TOPIC = "/camera/gt_labels"
FRAME_ID = "camera"
START_NS = 1_700_000_000 * 1_000_000_000
SOURCE_FPS = 30            # CamVid frame numbers count frames of the 30 fps source video
JPEG_QUALITY = 90
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"   # image_transport's compressed format string
VOID_LABEL = 11
NUM_FRAMES = 101
MAX_BYTES = 10 * 1024 * 1024
CREDIT = ("CamVid: G. J. Brostow, J. Shotton, J. Fauqueur, R. Cipolla, 'Segmentation and "
          "Recognition Using Structure from Motion Point Clouds', ECCV 2008 (research use)")

_NAME = re.compile(r"^(?P<seq>[0-9A-Za-z]+)_(?P<num>\d+)\.png$")


def sample_drive_path() -> Path:
    """Path of the shipped sample drive (a self-contained .mcap file)."""
    path = DATA_DIR / f"{BAG_NAME}.mcap"
    if not path.is_file():
        raise SampleDriveError(
            f"{path}: the sample drive is not installed; rebuild it with "
            f"'python -m msaf_ros.tools.sample_drive --camvid /path/to/camvid --out {DATA_DIR}'")
    return path


def stamp_of(frame_number: int, first_number: int) -> int:
    """Header stamp (ns) of a CamVid frame number in the sample drive."""
    return START_NS + int(round((frame_number - first_number) * 1e9 / SOURCE_FPS))


def list_frames(camvid_root: Path, split: str = "val", sequence: str = SEQUENCE
                ) -> List[Tuple[int, Path, Path]]:
    """(frame number, image path, label path) of one sequence, in frame order."""
    img_dir, ann_dir = Path(camvid_root) / split, Path(camvid_root) / f"{split}annot"
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise SampleDriveError(f"{camvid_root}: expected '{split}/' and '{split}annot/' folders "
                               f"of CamVid (480×360 SegNet layout)")
    out = []
    for p in sorted(img_dir.glob("*.png")):
        m = _NAME.match(p.name)
        if not m or m.group("seq") != sequence:
            continue
        lab = ann_dir / p.name
        if not lab.is_file():
            raise SampleDriveError(f"{lab}: label file missing for frame {p.name}")
        out.append((int(m.group("num")), p, lab))
    if not out:
        raise SampleDriveError(f"{img_dir}: no frames of sequence {sequence}")
    out.sort(key=lambda t: t[0])
    return out


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    from PIL import Image  # noqa: PLC0415
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality, subsampling=0,
                                     optimize=True)
    return buf.getvalue()


def build(camvid_root: Path, out_dir: Path, *, max_frames: Optional[int] = None,
          quality: int = JPEG_QUALITY, force: bool = False) -> Path:
    """Write ``<out_dir>/camvid_0016E5.mcap`` and ``<out_dir>/metadata.yaml``; return the mcap.

    The bag is written in a temporary folder next to ``out_dir`` and moved into place at the
    end, so an interrupted build leaves the previous files alone.
    """
    from PIL import Image  # noqa: PLC0415
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    frames = list_frames(Path(camvid_root))
    if max_frames is not None:
        frames = frames[:max_frames]
    out_dir = Path(out_dir)
    mcap_dst, meta_dst = out_dir / f"{BAG_NAME}.mcap", out_dir / "metadata.yaml"
    if (mcap_dst.exists() or meta_dst.exists()) and not force:
        raise SampleDriveError(f"{mcap_dst} exists; pass --force to rebuild it")
    out_dir.mkdir(parents=True, exist_ok=True)

    ts = get_typestore(Stores.ROS2_JAZZY)
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    Image_ = ts.types["sensor_msgs/msg/Image"]
    Compressed = ts.types["sensor_msgs/msg/CompressedImage"]

    tmp_root = Path(tempfile.mkdtemp(prefix=".sample_drive.", dir=out_dir))
    try:
        bag = tmp_root / BAG_NAME
        writer = Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP)
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        writer.set_custom_data("dataset", CREDIT)
        writer.set_custom_data("sequence", f"CamVid val {SEQUENCE}, {len(frames)} frames, "
                                           f"15 Hz, every frame labelled (11 = void)")
        with writer:
            cam = writer.add_connection(CAMERA_TOPIC, Compressed.__msgtype__, typestore=ts)
            gt = writer.add_connection(LABELS_TOPIC, Image_.__msgtype__, typestore=ts)
            first = frames[0][0]
            for num, img_path, lab_path in frames:
                rgb = np.asarray(Image.open(img_path).convert("RGB"))
                lab = np.asarray(Image.open(lab_path))
                if lab.ndim != 2 or lab.shape != rgb.shape[:2]:
                    raise SampleDriveError(f"{lab_path}: label map {lab.shape} does not fit "
                                           f"the frame {rgb.shape[:2]}")
                if lab.max() > VOID_LABEL:
                    raise SampleDriveError(f"{lab_path}: label value {int(lab.max())} > "
                                           f"{VOID_LABEL}")
                stamp = stamp_of(num, first)
                header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9),
                                frame_id=FRAME_ID)
                jpeg = encode_jpeg(rgb, quality)
                cmsg = Compressed(header=header, format=JPEG_FORMAT,
                                  data=np.frombuffer(jpeg, np.uint8))
                h, w = lab.shape
                lmsg = Image_(header=header, height=h, width=w, encoding="mono8",
                              is_bigendian=0, step=w,
                              data=np.ascontiguousarray(lab, np.uint8).reshape(-1))
                writer.write(cam, stamp, ts.serialize_cdr(cmsg, cmsg.__msgtype__))
                writer.write(gt, stamp, ts.serialize_cdr(lmsg, lmsg.__msgtype__))
        os.replace(bag / f"{BAG_NAME}.mcap", mcap_dst)
        os.replace(bag / "metadata.yaml", meta_dst)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return mcap_dst


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m msaf_ros.tools.sample_drive",
        description="Build the sample drive bag (CamVid val sequence 0016E5, 101 labelled "
                    "frames at 15 Hz) from a CamVid folder.")
    env = os.environ.get("MSAF_CAMVID")
    p.add_argument("--camvid", type=Path, default=Path(env) if env else None,
                   required=not env,
                   help="CamVid root holding val/ and valannot/ (default: $MSAF_CAMVID)")
    p.add_argument("--out", type=Path, default=DATA_DIR,
                   help=f"output folder (default: {DATA_DIR})")
    p.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality (90)")
    p.add_argument("--max-frames", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace an existing sample drive")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the sample drive. Exit codes: 0 done, 1 an error (one line), 130/143 on a
    signal (the previous sample drive, if any, is unchanged)."""
    a = build_parser().parse_args(argv)
    return run_cli("sample_drive:", lambda: _build_and_report(a),
                   interrupted="the previous sample drive (if any) is unchanged")


def _build_and_report(a: argparse.Namespace) -> int:
    path = build(a.camvid, a.out, max_frames=a.max_frames, quality=a.quality, force=a.force)
    size = path.stat().st_size + (path.parent / "metadata.yaml").stat().st_size
    print(f"wrote {path} and {path.parent / 'metadata.yaml'} ({size / 1e6:.2f} MB)")
    if size > MAX_BYTES:
        print(f"warning: {size / 1e6:.2f} MB exceeds the 10 MB budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
