"""msaf-demo: the whole offline path in one command, on the sample drive shipped with the package.

::

    msaf-demo [--checkpoint CKPT] [--out ./msaf_demo_out] [--force] [--max-frames N]
              [--device auto] [--rows 4]

1. segments the sample drive (CamVid val sequence 0016E5, 101 labelled frames at 15 Hz, see
   :mod:`msaf_ros.tools.sample_drive`) with the bundled default model (or ``--checkpoint``) into
   ``OUT/segmented_drive`` (a rosbag2 mcap: the input topics plus ``/camera/labels``,
   ``/camera/color_mask`` and ``/camera/overlay``; play it with ``ros2 bag play``);
2. draws ``OUT/msaf_demo.png``: input | predicted overlay | ground-truth overlay for a few
   frames spread over the drive, with a legend of the class colours;
3. prints the frames per second and the mIoU against the ground truth.

Exit codes: 0 done, 1 an error (e.g. the default model is not installed: a one-line message),
130 interrupted (no half-written output is left behind).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..bag.io import decode_image, decode_labels, header_key, read_topics
from ..bag.result import Frame
from ..bag.segment import segment_bag
from ..cli import run_cli, set_torch_threads
from ..errors import MsafRosError
from ..model import load_model
from .sample_drive import CAMERA_TOPIC, LABELS_TOPIC, sample_drive_path

BAG_DIR = "segmented_drive"
PNG = "msaf_demo.png"
TILE_W = 320


def _font(size: int):
    from PIL import ImageFont  # noqa: PLC0415
    try:
        return ImageFont.load_default(size=size)
    except TypeError:        # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _collect(bag: Path, keys: Sequence[Tuple[int, str]], camera_topic: str,
             overlay_topic: str, gt_topic: Optional[str]
             ) -> Dict[str, Dict[Tuple[int, str], np.ndarray]]:
    """Decoded images of the chosen (stamp, frame_id)s from the output bag, per kind."""
    want = set(keys)
    kinds = {camera_topic: "input", overlay_topic: "overlay"}
    if gt_topic:
        kinds[gt_topic] = "gt"
    out: Dict[str, Dict[Tuple[int, str], np.ndarray]] = {v: {} for v in kinds.values()}
    for conn, _, msg in read_topics(bag, kinds):
        key = header_key(msg)
        if key not in want:
            continue
        kind = kinds[conn.topic]
        try:
            decode = decode_labels if kind == "gt" else decode_image
            out[kind][key] = decode(msg, conn.msgtype)
        except ValueError:
            pass
    return out


def make_figure(bag: Path, frames: List[Frame], png: Path, *, seg, camera_topic: str,
                overlay_topic: str, gt_topic: Optional[str], rows: int = 4, alpha: float = 0.5,
                title: str = "") -> Path:
    """A rows × 3 picture (input | prediction overlay | ground-truth overlay) plus a legend."""
    from PIL import Image, ImageDraw  # noqa: PLC0415
    if not frames:
        raise MsafRosError("no frame was segmented; nothing to draw")
    rows = max(1, min(rows, len(frames)))
    picks = [frames[int(round(i))] for i in np.linspace(0, len(frames) - 1, rows)]
    keys = [(f.stamp_ns, f.frame_id) for f in picks]
    got = _collect(bag, keys, camera_topic, overlay_topic, gt_topic)
    k = int(seg.cfg.num_classes)

    first = got["input"].get(keys[0])
    h0, w0 = (first.shape[:2] if first is not None else (240, 320))
    tw = TILE_W
    th = max(1, int(round(h0 * tw / w0)))
    pad, head, foot_row = 6, 22, 20
    f_title, f_text = _font(16), _font(13)
    names = list(seg.class_names)
    per_row = 6
    legend_rows = (len(names) + per_row - 1) // per_row
    width = 3 * tw + 4 * pad
    top = (26 if title else 0) + head
    height = top + rows * (th + pad) + pad + legend_rows * foot_row + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 4), title, fill=(0, 0, 0), font=f_title)
    cols = ["input", "MSAF prediction (overlay)",
            "ground truth (overlay, void untinted)" if gt_topic else "ground truth (none)"]
    for c, name in enumerate(cols):
        draw.text((pad + c * (tw + pad), top - head + 3), name, fill=(0, 0, 0), font=f_text)

    t0 = frames[0].stamp_ns
    for r, key in enumerate(keys):
        rgb = got["input"].get(key)
        over = got["overlay"].get(key)
        gt = got.get("gt", {}).get(key)
        tiles = [rgb, over, None]
        if gt is not None and rgb is not None and gt.shape == rgb.shape[:2]:
            valid = gt < k
            g = seg.overlay(rgb, np.where(valid, gt, 0).astype(np.uint8), alpha)
            g[~valid] = rgb[~valid]
            tiles[2] = g
        y = top + r * (th + pad)
        for c, tile in enumerate(tiles):
            x = pad + c * (tw + pad)
            if tile is None:
                draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=(200, 200, 200))
                draw.text((x + 8, y + th // 2), "n/a", fill=(0, 0, 0), font=f_text)
                continue
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile)).resize(
                (tw, th), Image.BILINEAR), (x, y))
        label = f"t = {(key[0] - t0) / 1e9:.2f} s"
        bbox = draw.textbbox((pad + 4, y + 4), label, font=f_text)
        draw.rectangle([bbox[0] - 2, bbox[1] - 2, bbox[2] + 2, bbox[3] + 2], fill=(0, 0, 0))
        draw.text((pad + 4, y + 4), label, fill=(255, 255, 255), font=f_text)

    y0 = top + rows * (th + pad) + pad
    slot = (width - 2 * pad) // per_row
    for i, (name, colour) in enumerate(zip(names, seg.palette.tolist())):
        x = pad + (i % per_row) * slot
        y = y0 + (i // per_row) * foot_row
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + 20, y + 2), f"{i} {name}", fill=(0, 0, 0), font=f_text)

    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.name + ".tmp")
    canvas.save(tmp, "PNG", optimize=False)
    os.replace(tmp, png)
    return png


#: The sample drive is CamVid's val clip: a stretch of sequence 0016E5, whose other frames
#: are in CamVid's train split. Its mIoU says how well a model knows this street.
SEEN_NOTE_BUNDLED = ("      (the bundled model was trained on these frames: this is not a figure for a "
                     "drive it has never seen; see docs/model.md)")
SEEN_NOTE = ("      (the sample drive is CamVid sequence 0016E5, whose other frames are in CamVid's "
             "train split: a model trained on CamVid has seen this street)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msaf-demo",
        description="Segment the sample drive shipped with msaf_ros (CamVid 0016E5, 101 "
                    "labelled frames) with MSAF: writes a segmented bag and a picture, prints "
                    "frames per second and mIoU.")
    p.add_argument("--checkpoint", "-c", default=None,
                   help="model checkpoint (default: the bundled default model)")
    p.add_argument("--out", type=Path, default=Path("msaf_demo_out"),
                   help="output folder (default: ./msaf_demo_out)")
    p.add_argument("--force", "-f", action="store_true",
                   help="replace the outputs of an earlier run in --out")
    p.add_argument("--max-frames", type=int, default=None,
                   help="segment only the first N frames (a quick check)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--rows", type=int, default=4, help="frames shown in the picture (4)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0.5)")
    p.add_argument("--bag", type=Path, default=None,
                   help="another bag laid out like the sample drive (default: the sample drive)")
    p.add_argument("--topic", default=CAMERA_TOPIC, help=f"camera topic ({CAMERA_TOPIC})")
    p.add_argument("--labels-topic", default=LABELS_TOPIC,
                   help=f"ground-truth topic ({LABELS_TOPIC}); '' for none")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return p


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    bag_out, png = out / BAG_DIR, out / PNG
    set_torch_threads(args.threads)
    if args.rows < 1:
        raise MsafRosError(f"--rows must be >= 1, got {args.rows}")
    if not args.force:
        clash = [str(p) for p in (bag_out, png) if p.exists()]
        if clash:
            raise MsafRosError(f"{' and '.join(clash)} already exist"
                               f"{'s' if len(clash) == 1 else ''} (an earlier run); "
                               f"pass --force to replace, or --out DIR")
    if out.exists() and not out.is_dir():
        raise MsafRosError(f"{out} exists and is not a folder")
    bag_in = args.bag if args.bag is not None else sample_drive_path()
    seg = load_model(args.checkpoint or None, args.device)

    labels_topic = args.labels_topic or None
    print(f"msaf-demo: segmenting {bag_in} with {seg.checkpoint.get('path')} on {seg.device}"
          + (f" (first {args.max_frames} frames)" if args.max_frames else ""), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    res = segment_bag(bag_in, bag_out, [args.topic], segmenter=seg, labels_topic=labels_topic,
                      alpha=args.alpha, force=args.force, max_frames=args.max_frames,
                      progress=not args.no_progress and sys.stderr.isatty())
    print(res.report())
    miou = res.miou
    title = (f"MSAF on {Path(bag_in).name}: {res.n_frames} frames, "
             + (f"mIoU {100 * miou:.1f}%" if miou is not None else "no ground truth")
             + f", model {Path(str(seg.checkpoint.get('path'))).name}")
    try:
        make_figure(bag_out, res.frames, png, seg=seg, camera_topic=args.topic,
                    overlay_topic=res.topics[args.topic].outputs["overlay"],
                    gt_topic=labels_topic, rows=args.rows, alpha=args.alpha, title=title)
    except BaseException:
        # the bag is complete and valid; only the picture is missing
        print(f"msaf-demo: the picture could not be drawn; {bag_out} is complete",
              file=sys.stderr)
        raise
    print("")
    print(f"frames per second: {res.fps:.2f} end to end, {res.model_fps:.2f} in the model "
          f"({res.n_frames} frames on {seg.device})")
    print("mIoU: " + (f"{100 * miou:.2f}% over {res.gt_matched} labelled frames"
                      if miou is not None else "n/a (no ground truth matched)"))
    if args.bag is None and miou is not None:
        print(SEEN_NOTE_BUNDLED if args.checkpoint is None else SEEN_NOTE)
    print(f"segmented bag: {bag_out}  (ros2 bag play {bag_out})")
    print(f"picture: {png}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``msaf-demo``. Exit codes: 0 done, 1 an error (one line), 130 Ctrl-C
    and 143 SIGTERM (no half-written bag is left behind)."""
    args = build_parser().parse_args(argv)
    return run_cli("msaf-demo:", lambda: run(args), debug=args.debug,
                   interrupted="no half-written bag left behind")


if __name__ == "__main__":
    sys.exit(main())
