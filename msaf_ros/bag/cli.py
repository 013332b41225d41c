"""msaf-bag: segment the camera topics of a rosbag2 offline with MSAF (no ROS graph, no rclpy).

::

    msaf-bag segment INPUT OUTPUT --topic /camera/image_raw [--topic ...] [--checkpoint CKPT]
                     [--namespace NS] [--labels-topic T] [--device auto] [--alpha 0.5]
                     [--format mcap|sqlite3] [--max-frames N] [--no-confidence] [--force]
    msaf-bag info INPUT
    msaf-bag play INPUT [--clock [HZ]] [--rate R] [--loop] [--topics T ...] [--start-offset S]

INPUT is a rosbag2 folder (metadata.yaml + .mcap or .db3) or a single .mcap / .db3 file;
it is only ever opened read-only. OUTPUT is a new rosbag2 folder holding every input message
(all topics, copied byte for byte) plus, for each ``--topic``:

- ``<ns>/labels``      sensor_msgs/Image ``mono8``, the class id of every pixel;
- ``<ns>/color_mask``  sensor_msgs/Image ``rgb8``, the classes in the model's palette;
- ``<ns>/overlay``     sensor_msgs/Image ``rgb8``, the mask blended over the frame
  (``(1 - alpha) * frame + alpha * mask``);
- ``<ns>/confidence``  sensor_msgs/Image ``mono8``, the winning class's softmax probability
  × 255 (not with ``--no-confidence``),

each with the header of the input frame (stamp and frame_id) and written at the input
frame's bag time. ``<ns>`` is ``--namespace`` when given, else the input topic's parent
after dropping an image_transport suffix: ``/camera/image_raw`` and
``/camera/image_raw/compressed`` both give ``/camera``; ``/image`` gives ``/`` (topics
``/labels``, ...). Output topics may not collide with each other or with input topics.

Each topic is its own stream (its own feature cache) and is fed to the model in header
stamp order (a zero stamp falls back to the bag time), whatever the order in the bag.

With ``--labels-topic``, ground-truth label images in the bag (``mono8``/``8UC1`` Image or an
8-bit grey PNG CompressedImage) are matched to predictions by header stamp and frame_id and
the mIoU is reported; ground-truth values >= the model's class count (CamVid's void = 11)
and 255 are ignored.

The output is written to ``OUTPUT.partial/`` and moved to ``OUTPUT`` only when complete; an
error or Ctrl-C removes it. ``--force`` replaces an existing OUTPUT (only a rosbag2 folder).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from ..cli import run_cli, set_torch_threads
from ..model import load_model
from . import play
from .io import FORMATS, IMAGE_TYPES, open_reader, storage_of
from .plan import output_topics
from .segment import segment_bag

PROG = "msaf-bag"


def bag_info(path: Path) -> str:
    """``msaf-bag info``: the bag's storage, message count, duration, and each topic with
    its type and count; image topics say where they would be segmented to."""
    reader = open_reader(Path(path))
    try:
        lines = [f"{path}: {storage_of(Path(path))}, {reader.message_count} messages, "
                 f"{reader.duration / 1e9:.2f} s"]
        for topic, info in sorted(reader.topics.items()):
            tag = ""
            if info.msgtype in IMAGE_TYPES:
                outs = output_topics(topic, info.msgtype)
                tag = f"  [image; would segment to {outs['labels'].rsplit('/', 1)[0] or '/'}/...]"
            lines.append(f"  {topic:<40} {info.msgtype:<36} {info.msgcount:>7}{tag}")
        return "\n".join(lines)
    finally:
        reader.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msaf-bag",
        description="Segment the camera topics of a rosbag2 (mcap or sqlite3) with MSAF, "
                    "offline; no ROS installation needed.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{segment,info,play}")
    s = sub.add_parser(
        "segment", help="write a copy of a bag with labels, color_mask, overlay and "
                        "confidence topics",
        description="Write OUTPUT, a copy of INPUT with <ns>/labels (mono8), <ns>/color_mask "
                    "(rgb8), <ns>/overlay (rgb8) and <ns>/confidence (mono8) for every --topic."
                    " <ns> is --namespace, or the parent of the input topic (image_transport "
                    "suffix dropped): /camera/image_raw -> /camera/labels, /camera/color_mask, "
                    "/camera/overlay, /camera/confidence.")
    s.add_argument("input", type=Path, help="input rosbag2 folder, or a .mcap / .db3 file")
    s.add_argument("output", type=Path, help="output rosbag2 folder (must not exist)")
    s.add_argument("--topic", "-t", action="append", default=[], required=True,
                   help="an Image or CompressedImage topic to segment (repeat for more)")
    s.add_argument("--checkpoint", "-c", default=None,
                   help="model checkpoint (default: the bundled default model)")
    s.add_argument("--namespace", "-n", default=None,
                   help="namespace of the output topics (default: the input topic's parent)")
    s.add_argument("--labels-topic", default=None,
                   help="ground-truth label images in the bag (mono8); reports the mIoU")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--backend", default="torch",
                   choices=("torch", "onnxruntime", "openvino", "tensorrt"),
                   help="what runs the network (default torch; docs/deploy.md)")
    s.add_argument("--output-stride", type=int, choices=(8, 16), default=None,
                   help="backbone output stride (default: the checkpoint's; 16 is about 3x "
                        "cheaper)")
    s.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (0.5)")
    s.add_argument("--format", dest="fmt", choices=FORMATS, default=None,
                   help="output storage (default: the input's)")
    s.add_argument("--compression", choices=("zstd", "none"), default="zstd",
                   help="mcap chunk compression (default zstd; sqlite3 output is never "
                        "compressed)")
    s.add_argument("--max-frames", type=int, default=None,
                   help="segment only the first N frames of each topic and cut the output "
                        "there (a short slice)")
    s.add_argument("--force", "-f", action="store_true",
                   help="replace OUTPUT if it exists (a rosbag2 folder only)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 can be much faster "
                        "on a CPU busy with other work)")
    s.add_argument("--no-confidence", action="store_true",
                   help="do not write <ns>/confidence (the winning class's softmax x 255)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    i = sub.add_parser("info", help="list a bag's topics and which ones are images")
    i.add_argument("input", type=Path)
    i.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    play.add_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``msaf-bag``. Exit codes: 0 done, 1 an error (one line), 2 usage,
    130 Ctrl-C and 143 SIGTERM (the partial output is removed)."""
    args = build_parser().parse_args(argv)
    if args.cmd == "play":          # Ctrl-C ends the play: exit code 0
        stop = threading.Event()
        return run_cli(f"{PROG}:", lambda: play.run(args, stop), stop=stop, debug=args.debug)
    return run_cli(f"{PROG}:", lambda: _run(args), debug=args.debug,
                   interrupted="no output written (partial output removed)")


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "info":
        print(bag_info(args.input))
        return 0
    set_torch_threads(args.threads)
    seg = (None if args.backend == "torch" and args.output_stride is None else
           load_model(args.checkpoint, args.device, args.backend, args.output_stride))
    res = segment_bag(args.input, args.output, args.topic, segmenter=seg,
                      checkpoint=args.checkpoint,
                      device=args.device, namespace=args.namespace,
                      labels_topic=args.labels_topic, alpha=args.alpha, fmt=args.fmt,
                      compression=args.compression, force=args.force, max_frames=args.max_frames,
                      progress=not args.no_progress and sys.stderr.isatty(),
                      confidence=not args.no_confidence)
    print(res.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
