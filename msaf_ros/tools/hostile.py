"""Hostile camera input, and what it costs a running segment_node: ``python -m
msaf_ros.tools.hostile``.

The builders make what a broken or hostile camera driver can send (the tests use them too):
compressed "bombs" (:func:`png_bomb`, :func:`jpeg_bomb`: a few KB that declare 30000×30000
pixels) and undecodable frames from many cameras with long frame_ids.

The program starts a compressed-input node (``input_transport:=compressed``, the bundled
model, or ``--checkpoint``), waits for its first labels, then sends the two bombs and
``--bad`` undecodable frames, each from its own ``--id-bytes``-long frame_id, then one good
frame, and prints the node's peak RSS and RSS growth (from ``/proc``), the bytes it logged,
and how long the good frame took to come back labelled. Figures and the command line are in
docs/node.md (Faults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from typing import Any, Dict, List, Optional

import numpy as np

SIDE = 30000        # the bombs' declared width and height


def png_bomb(side: int = SIDE) -> bytes:
    """A valid 1-bit greyscale PNG of ``side``×``side`` zeros: about 109 KB for 30000²
    (decoded to RGB: 2.7 GB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    row = b"\0" * (1 + (side + 7) // 8)              # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])   # depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) \
        + chunk(b"IEND", b"")


def jpeg_bomb(side: int = SIDE) -> bytes:
    """A small JPEG whose frame header (SOF) declares ``side``×``side`` pixels; a decoder
    allocates the whole frame (2.7 GB for 30000² RGB) and fills what the scan lacks."""
    import cv2  # noqa: PLC0415
    ok, enc = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    b = bytearray(enc.tobytes())
    i = 2
    while b[i + 1] not in (0xC0, 0xC1, 0xC2):                    # find the SOF segment
        i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    b[i + 5:i + 7] = side.to_bytes(2, "big")                     # height
    b[i + 7:i + 9] = side.to_bytes(2, "big")                     # width
    return bytes(b)


def long_frame_id(i: int, n_bytes: int) -> str:
    """A distinct frame_id of ``n_bytes`` characters (a camera that sends garbage as id)."""
    head = f"cam{i:06d}_"
    return head + "x" * max(0, n_bytes - len(head))


def _rss_kb(pid: int) -> Dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def run(checkpoint: Optional[str], n_bad: int, id_bytes: int, domain: int = 93,
        timeout: float = 120.0) -> Dict[str, Any]:
    """Start the node, feed it the hostile input, return the figures."""
    from diagnostic_msgs.msg import DiagnosticArray  # noqa: PLC0415
    from sensor_msgs.msg import CompressedImage  # noqa: PLC0415

    import cv2  # noqa: PLC0415

    from .node_process import NodeProcess, Probe  # noqa: PLC0415
    from ..diagnostics import values_of  # noqa: PLC0415
    from ..msgs import set_stamp  # noqa: PLC0415

    params: Dict[str, Any] = {"input_transport": "compressed", "qos_reliability": "reliable",
                              "device": "cpu", "threads": 1}
    if checkpoint:
        params["checkpoint"] = checkpoint
    node = NodeProcess(params, domain, remaps=[("image", "/hostile/image")]).start()
    probe = Probe(domain, "hostile_probe")
    try:
        node.wait_ready()
        pub = probe.publisher(CompressedImage, "/hostile/image/compressed")
        labels = probe.subscribe(type_of_labels(), "/labels")
        diags = probe.subscribe(DiagnosticArray, "/diagnostics")
        probe.wait_matched([pub], ["/labels"])

        def received() -> int:
            vals = [values_of(d) for d in diags]
            vals = [v for v in vals if v is not None]
            return int(vals[-1]["frames_received"]) if vals else 0
        ok, good = cv2.imencode(".jpg", np.random.default_rng(0).integers(
            0, 256, (120, 160, 3), np.uint8))

        def send(data: bytes, frame_id: str, stamp: int, fmt: str = "jpeg") -> None:
            m = CompressedImage(format=fmt, data=data)
            m.header.frame_id = frame_id
            set_stamp(m.header.stamp, stamp)
            pub.publish(m)

        def wait_label(stamp: int) -> float:
            t0 = time.monotonic()
            if not probe.spin_until(lambda: any(
                    m.header.stamp.sec == stamp // 10**9 for m in labels), timeout):
                raise RuntimeError(f"no labels for the good frame:\n{node.output[-2000:]}")
            return time.monotonic() - t0

        send(good.tobytes(), "cam", 1 * 10**9)
        wait_label(1 * 10**9)
        time.sleep(1.0)
        before = _rss_kb(node.proc.pid)
        out0, err0 = len(node.stdout), len(node.stderr)
        log_before = out0 + err0
        send(png_bomb(), "bomb_png", 2 * 10**9, "png")
        send(jpeg_bomb(), "bomb_jpeg", 3 * 10**9, "jpeg")
        for i in range(n_bad):
            send(b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9", long_frame_id(i, id_bytes),
                 (10 + i) * 10**9)
            time.sleep(0.002)  # paced: every one reaches the node (its subscription keeps 5)
        probe.spin_until(lambda: received() >= n_bad + 3, 30.0)
        t_good = 10**6 * 10**9
        send(good.tobytes(), "cam", t_good)
        t_next = wait_label(t_good)
        time.sleep(1.0)
        after = _rss_kb(node.proc.pid)
        log_bytes = len(node.stdout) + len(node.stderr) - log_before
        log_lines = node.stdout[out0:].count("\n") + node.stderr[err0:].count("\n")
        warm = [ln.split("]: ", 1)[-1] for ln in node.output.splitlines() if "warm-up" in ln]
        return dict(rss_before_mb=before["VmRSS"] / 1024, rss_after_mb=after["VmRSS"] / 1024,
                    rss_growth_mb=(after["VmRSS"] - before["VmRSS"]) / 1024,
                    peak_rss_mb=after["VmHWM"] / 1024,
                    peak_growth_mb=(after["VmHWM"] - before["VmHWM"]) / 1024,
                    log_bytes=log_bytes, next_good_frame_s=t_next, bad_frames=n_bad,
                    id_bytes=id_bytes, frames_received_by_node=received(),
                    log_lines=log_lines, warm_up=warm[0] if warm else "")
    finally:
        probe.close()
        node.close()


def type_of_labels() -> Any:
    from sensor_msgs.msg import Image  # noqa: PLC0415
    return Image


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m msaf_ros.tools.hostile",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="model (default: the bundled one)")
    ap.add_argument("--bad", type=int, default=3000, help="undecodable frames to send")
    ap.add_argument("--id-bytes", type=int, default=10_000, help="length of their frame_ids")
    ap.add_argument("--domain", type=int, default=93, help="ROS domain id")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    a = ap.parse_args(argv)
    fig = run(a.checkpoint, a.bad, a.id_bytes, a.domain)
    for k, v in fig.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(fig, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
