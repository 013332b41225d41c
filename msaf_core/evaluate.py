"""msaf-eval: stream each sequence through the Segmenter, as the node does, and score it.

    msaf-eval --dataset camvid --data-root ../shared/camvid --split val [--checkpoint CKPT]
              [--json FILE] [--no-tc] [--size H W] [--device cpu]

Prints per-class IoU, mIoU, frames per second and, where consecutive frames are video rate,
temporal consistency (TC) labelled with the flow method.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from .data import ClipDataset, build_dataset
from .metrics import TemporalConsistency, confusion, format_table, summarize


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msaf-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["camvid", "cityscapes"], default="camvid")
    p.add_argument("--data-root", required=True, help="dataset folder")
    p.add_argument("--split", default="val", help="val or test (train also works)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the bundled model)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="inference resolution (labels are scored at the label resolution)")
    p.add_argument("--half", action="store_true", help="float16 on CUDA")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast on the CPU (fast where the CPU has AMX/AVX-512 BF16)")
    p.add_argument("--no-tc", action="store_true", help="skip temporal consistency")
    p.add_argument("--max-frames", type=int, default=None, help="score only the first N frames")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from .errors import CheckpointError
    from .segmenter import Segmenter
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        seg = Segmenter.from_checkpoint(args.checkpoint, device=args.device,
                                        size=tuple(args.size) if args.size else None,
                                        half=args.half, bf16=args.bf16, max_gap_s=None)
    except (CheckpointError, ValueError) as e:
        print(f"msaf-eval: error: {e}", file=sys.stderr)
        return 1
    try:
        ds = build_dataset(args.dataset, args.data_root, args.split, cache=False)
    except (FileNotFoundError, ValueError) as e:
        print(f"msaf-eval: error: {e}", file=sys.stderr)
        return 1
    if ds.num_classes != seg.cfg.num_classes:
        print(f"msaf-eval: error: the checkpoint has {seg.cfg.num_classes} classes but "
              f"{args.dataset} has {ds.num_classes}", file=sys.stderr)
        return 1
    res = evaluate_stream(seg, ds, tc=not args.no_tc, max_frames=args.max_frames, progress=True)
    ck = seg.checkpoint or {}
    res.update({"dataset": args.dataset, "split": args.split, "checkpoint": ck.get("path"),
                "device": str(seg.device), "threads": torch.get_num_threads(),
                "precision": "fp16" if args.half else "bf16" if args.bf16 else "fp32"})
    print(format_table(res, f"{args.dataset} {args.split}: {res['frames']} frames, "
                            f"checkpoint {ck.get('path')}"))
    print(f"  {'FPS':<14}{res['fps']:6.2f}  (model time per frame, {seg.device}, "
          f"{torch.get_num_threads()} threads, {res['precision']})")
    if "tc" in res:
        print(f"  {'TC':<14}{100 * res['tc']:6.2f}  ({res['tc_pairs']} pairs; {res['tc_method']})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
