"""What msaf-bag did: per-topic counts, the frames segmented, the timing and the mIoU.

:class:`SegmentResult` is what :func:`msaf_ros.bag.segment_bag` returns; ``report()`` is the
summary ``msaf-bag segment`` prints. No rclpy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from msaf_core.metrics import format_table


@dataclasses.dataclass
class TopicStats:
    topic: str
    msgtype: str
    outputs: Dict[str, str]
    messages: int = 0          # image messages of the topic copied (within --max-frames' cut)
    frames: int = 0            # segmented
    dropped: int = 0           # undecodable / unusable messages
    resets: int = 0            # feature-cache resets (gaps, loops, size changes)


@dataclasses.dataclass
class Frame:
    topic: str
    stamp_ns: int
    frame_id: str
    bag_ns: int


@dataclasses.dataclass
class SegmentResult:
    input: Path
    output: Path
    storage: str
    topics: Dict[str, TopicStats]
    copied: int = 0                        # input messages written to the output
    seconds: float = 0.0                   # wall time of the segmenting pass (decode, model,
    #                                        encode, write; not the model load or the scan)
    model_seconds: float = 0.0             # time inside Segmenter.segment
    frames: List[Frame] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)
    labels_topic: Optional[str] = None
    gt_frames: int = 0                     # ground-truth messages in the input
    gt_matched: int = 0                    # ... scored against a prediction
    gt_dropped: int = 0                    # undecodable, or size/values unusable
    gt_ignored_fraction: float = float("nan")
    confusion: Optional[np.ndarray] = None
    summary: Optional[Dict[str, Any]] = None   # msaf_core.metrics.summarize(), mIoU etc.
    class_names: Tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        return sum(t.frames for t in self.topics.values())

    @property
    def n_dropped(self) -> int:
        return sum(t.dropped for t in self.topics.values())

    @property
    def fps(self) -> float:
        return self.n_frames / self.seconds if self.seconds > 0 else float("nan")

    @property
    def model_fps(self) -> float:
        return self.n_frames / self.model_seconds if self.model_seconds > 0 else float("nan")

    @property
    def miou(self) -> Optional[float]:
        return None if self.summary is None else float(self.summary["miou"])

    def report(self) -> str:
        lines = [f"wrote {self.output} ({self.storage}): {self.copied} input messages copied"]
        for st in self.topics.values():
            lines.append(f"  {st.topic} -> {', '.join(st.outputs.values())}: {st.frames} frames"
                         f" segmented, {st.dropped} dropped (undecodable), {st.resets} cache "
                         f"resets")
        lines.append(f"frames: {self.n_frames} in {self.seconds:.1f} s = {self.fps:.2f} frames/s"
                     f" end to end ({self.model_fps:.2f} frames/s in the model); "
                     f"dropped: {self.n_dropped}")
        if self.labels_topic:
            if self.summary is None:
                lines.append(f"mIoU: n/a, no ground truth on {self.labels_topic} matched a "
                             f"prediction ({self.gt_frames} label messages, "
                             f"{self.gt_dropped} unusable)")
            else:
                lines.append(format_table(
                    self.summary, f"IoU (%) against {self.labels_topic}: {self.gt_matched} of "
                                  f"{self.gt_frames} label frames matched by stamp+frame_id, "
                                  f"{self.gt_dropped} unusable, "
                                  f"{100 * self.gt_ignored_fraction:.1f}% of pixels void"))
                lines.append(f"mIoU: {100 * self.summary['miou']:.2f}%")
        return "\n".join(lines)
