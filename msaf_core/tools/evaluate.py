"""msaf-eval: stream each sequence through the Segmenter, as the node does, and score it.

    msaf-eval --dataset camvid --data-root ../shared/camvid --split val [--checkpoint CKPT]
              [--json FILE] [--no-tc] [--size H W] [--device cpu]
              [--backend torch|onnxruntime|openvino|tensorrt] [--bf16 | --int8]
    msaf-eval --data-root ../shared/camvid --split train --seqs 0006R0   # one whole drive

Prints per-class IoU, mIoU, frames per second and, where consecutive frames are video rate,
temporal consistency (TC) labelled with the flow method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..backends import BACKENDS
from ..data import build_dataset
from ..evaluation import evaluate_stream
from ..metrics import format_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msaf-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["camvid", "cityscapes"], default="camvid")
    p.add_argument("--data-root", required=True, help="dataset folder")
    p.add_argument("--split", default="val", help="val or test (train also works; join "
                   "splits with +)")
    p.add_argument("--seqs", nargs="+", default=None, metavar="SEQ",
                   help="score these sequences (drives) only (camvid: e.g. 0006R0)")
    p.add_argument("--holdout-seq", nargs="+", default=[], metavar="SEQ",
                   help="leave these sequences out of the score")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the bundled "
                   "model), or an export folder of msaf-export --format for an engine")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="what runs the network (engines: pip install .[onnxruntime], "
                        ".[openvino]; a checkpoint is exported once into a cache)")
    p.add_argument("--int8", action="store_true",
                   help="the int8 graphs of an export quantised by msaf-export --int8 "
                        "(--backend openvino)")
    p.add_argument("--output-stride", type=int, choices=(8, 16), default=None,
                   help="backbone output stride (default: the checkpoint's; 16 is about 3x "
                        "cheaper)")
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

    from ..errors import CheckpointError
    from ..export import ExportError
    from ..segmenter import Segmenter
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        seg = Segmenter.from_checkpoint(args.checkpoint, device=args.device,
                                        size=tuple(args.size) if args.size else None,
                                        half=args.half, bf16=args.bf16, max_gap_s=None,
                                        backend=args.backend, int8=args.int8,
                                        output_stride=args.output_stride)
    except (CheckpointError, ExportError, ValueError) as e:
        print(f"msaf-eval: error: {e}", file=sys.stderr)
        return 1
    try:
        sel = {}
        if args.seqs or args.holdout_seq:
            if args.dataset != "camvid":
                raise ValueError("--seqs/--holdout-seq select CamVid drives")
            sel = dict(sequences=args.seqs, exclude=tuple(args.holdout_seq))
        ds = build_dataset(args.dataset, args.data_root, args.split, cache=False, **sel)
    except (FileNotFoundError, ValueError) as e:
        print(f"msaf-eval: error: {e}", file=sys.stderr)
        return 1
    if ds.num_classes != seg.cfg.num_classes:
        print(f"msaf-eval: error: the checkpoint has {seg.cfg.num_classes} classes but "
              f"{args.dataset} has {ds.num_classes}", file=sys.stderr)
        return 1
    res = evaluate_stream(seg, ds, tc=not args.no_tc, max_frames=args.max_frames, progress=True)
    ck = seg.checkpoint or {}
    res.update({"dataset": args.dataset, "split": args.split, "seqs": args.seqs,
                "holdout_seq": args.holdout_seq, "checkpoint": ck.get("path"),
                "device": str(seg.device), "threads": torch.get_num_threads(),
                "backend": args.backend, "output_stride": seg.cfg.output_stride,
                "precision": ("int8" if args.int8 else "fp16" if args.half else
                              "bf16" if args.bf16 else "fp32")})
    what = args.split + (f" {'+'.join(args.seqs)}" if args.seqs else "") + (
        f" without {'+'.join(args.holdout_seq)}" if args.holdout_seq else "")
    print(format_table(res, f"{args.dataset} {what}: {res['frames']} frames, "
                            f"checkpoint {ck.get('path')}"))
    print(f"  {'FPS':<14}{res['fps']:6.2f}  (model time per frame, {seg.device}, "
          f"{torch.get_num_threads()} threads, {args.backend} {res['precision']})")
    if "tc" in res:
        print(f"  {'TC':<14}{100 * res['tc']:6.2f}  ({res['tc_pairs']} pairs; {res['tc_method']})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
