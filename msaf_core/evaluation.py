"""Streaming evaluation: score a :class:`~msaf_core.Segmenter` on a clip dataset in time
order, as the node would see the frames (mIoU, per-class IoU, frames per second, and
temporal consistency where the frames are video rate)."""

from __future__ import annotations

import sys
import time
from typing import Dict, Optional

import numpy as np

from .data import ClipDataset
from .metrics import TemporalConsistency, confusion, summarize


def evaluate_stream(seg, ds: ClipDataset, *, tc: bool = True, max_frames: Optional[int] = None,
                    progress: bool = False) -> Dict[str, object]:
    """Score ``seg`` (a :class:`~msaf_core.Segmenter`) on ``ds`` in time order.

    Each sequence starts a fresh stream. Where a sequence's first labelled frame has real
    predecessors (Cityscapes), they are streamed first, unscored. TC is accumulated over
    consecutive streamed frames of sequences that ``ds.video_rate(seq)`` says are video rate.
    """
    k = ds.num_classes
    cm = np.zeros((k, k), np.int64)
    tcm = None
    if tc:
        try:
            tcm = TemporalConsistency(k)
        except ImportError as e:
            print(f"[msaf-eval] temporal consistency skipped: {e}", file=sys.stderr)
    frames = 0
    t_model = 0.0
    seqs = ds.sequences()
    bar = None
    total = sum(len(s) for s in seqs) if max_frames is None else min(max_frames, sum(len(s) for s in seqs))
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="eval", unit="frame", leave=False)
        except ImportError:
            bar = None
    for si, seq in enumerate(seqs):
        stream = f"seq{si}"
        seg.reset(stream)
        prev_img = prev_pred = None
        video_rate = tc and tcm is not None and ds.video_rate(seq)
        for pos, idx in enumerate(seq):
            if max_frames is not None and frames >= max_frames:
                break
            clip, label = ds.raw(idx)
            to_stream = [clip[2]]
            if pos == 0:
                paths = ds.items[idx][0]
                hist = [c for c, p in zip(clip[:2], paths[:2]) if p != paths[2]]
                to_stream = hist + to_stream
            for j, img in enumerate(to_stream):
                t0 = time.perf_counter()
                pred = seg.segment(img, stream=stream)
                dt = time.perf_counter() - t0
                if video_rate and prev_img is not None:
                    tcm.add(prev_img, img, prev_pred, pred)  # type: ignore[union-attr]
                prev_img, prev_pred = img, pred
            t_model += dt  # the scored frame's own time
            cm += confusion(pred, label, k)
            frames += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    res = summarize(cm, ds.class_names)
    res["frames"] = frames
    res["fps"] = frames / t_model if t_model > 0 else float("nan")
    res["confusion"] = cm.tolist()
    if tcm is not None and tcm.pairs:
        res["tc"] = tcm.value()
        res["tc_pairs"] = tcm.pairs
        res["tc_method"] = tcm.method
    return res
