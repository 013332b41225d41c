"""msaf-train: train MSAF on CamVid or Cityscapes clips (single process or torchrun DDP).

    msaf-train --dataset camvid --data-root ../shared/camvid --preset robust --out runs/r18
    msaf-train --data-root ../shared/camvid --preset robust --holdout-seq 0006R0 --out runs/h
    torchrun --standalone --nproc_per_node=N -m msaf_core.tools.train --dataset cityscapes ...

Presets (``--preset``) fill every recipe option left unset; see
:mod:`msaf_core.training` for what each sets. ``--holdout-seq`` leaves whole CamVid drives
out of training and validates on them (best.pt is chosen there); ``--train-split
train+val`` trains on every labelled frame. ``--init CKPT`` starts from a checkpoint's
weights; ``--resume auto`` continues OUT/last.pt.

Writes ``OUT/last.pt`` (resumable), ``OUT/best.pt`` and ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional

from ..config import VARIANTS
from ..training import PRESETS, TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msaf-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["camvid", "cityscapes"], default="camvid")
    p.add_argument("--data-root", required=True)
    p.add_argument("--backbone", choices=["resnet18", "resnet50", "resnet101"], default="resnet18")
    p.add_argument("--variant", choices=VARIANTS, default="msaf", help="Table 3 row to train")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="recipe for every option left unset (see above)")
    p.add_argument("--dim", type=int, default=None, help="model width d (default 128 for "
                   "resnet18, 256 otherwise)")
    p.add_argument("--heads", type=int, default=4, help="attention heads in every transformer "
                   "block (d/heads = 32 suits CPU attention kernels)")
    p.add_argument("--output-strides", type=int, nargs="+", choices=[8, 16], default=[8],
                   metavar="OS", help="backbone output stride(s): 8 (the paper's), 16 (about "
                   "3x cheaper); several are trained in turn, one per step, so that one set of "
                   "weights runs at each (the first is the checkpoint's default; validation runs "
                   "at each, and best.pt is the best mean over the strides of the first "
                   "validation set's mIoU; with several, each step and validation logged in "
                   "log.jsonl names its output_stride)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--head-lr-mult", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--poly-power", type=float, default=None)
    p.add_argument("--jitter", type=float, default=None,
                   help="brightness/contrast/saturation range (per clip, varied per frame)")
    p.add_argument("--gamma", type=float, default=None, help="log-range of a gamma curve")
    p.add_argument("--colour", type=float, default=None, help="per-channel gain range")
    p.add_argument("--blur", type=float, default=None, help="probability of a Gaussian blur")
    p.add_argument("--noise", type=float, default=None, help="largest sensor-noise std")
    p.add_argument("--loss", choices=["ce", "ohem"], default=None,
                   help="ohem: only pixels whose true-class probability is below "
                        "--ohem-thresh count (at least --ohem-min-kept of them)")
    p.add_argument("--ohem-thresh", type=float, default=None)
    p.add_argument("--ohem-min-kept", type=float, default=None)
    p.add_argument("--train-split", default="train",
                   help="split(s) to train on; join with + (camvid: train+val = every "
                        "labelled frame)")
    p.add_argument("--seqs", nargs="+", default=None, metavar="SEQ",
                   help="train on these sequences (drives) only (camvid: e.g. 0001TP 0016E5)")
    p.add_argument("--holdout-seq", nargs="+", default=[], metavar="SEQ",
                   help="leave these sequences out of training and validate on them: "
                        "a drive the model has never seen (camvid: e.g. 0006R0)")
    p.add_argument("--init", default=None,
                   help="start from the weights of this checkpoint (same model options); "
                        "its record is kept in the run's")
    p.add_argument("--class-weights", choices=["none", "median", "sqrt-median"], default=None)
    p.add_argument("--history-grad", type=int, choices=[0, 1], default=None,
                   help="1: backprop through the t-2/t-1 backbone passes too")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default=None,
                   help="mixed precision: auto = fp16 on CUDA, bf16 on CPUs with AMX/AVX512-BF16")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", default=None, help="a last.pt to continue from ('auto': OUT/last.pt if present)")
    p.add_argument("--allow-changed-recipe", action="store_true",
                   help="on --resume, accept a changed schedule/data recipe (iters, lr, batch "
                        "size, ...); the model options must always match")
    p.add_argument("--force", action="store_true",
                   help="start a new run in an OUT that holds one (its log is restarted and "
                        "its checkpoints are overwritten)")
    p.add_argument("--backbone-weights", default=None, help="local torchvision ImageNet state dict")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-split", default="val")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after", type=int, default=None,
                   help="leave (saving last.pt) after this many iterations of this run")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The parsed command line as a :class:`TrainConfig` (one field per option)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    if kw.get("history_grad") is not None:
        kw["history_grad"] = bool(kw["history_grad"])
    for k in ("crop", "scale"):
        if kw.get(k) is not None:
            kw[k] = tuple(kw[k])
    return TrainConfig(**kw)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        raise SystemExit(f"[msaf-train] {e}")
    res = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[msaf-train] done at step {res['step']}: loss {res['losses'].get('loss', float('nan')):.4f}"
              + (f", best val mIoU {100 * res['best']:.2f}" if res["best"] >= 0 else "")
              + (" (mean over strides)" if res["best"] >= 0 and len(cfg.output_strides) > 1
                 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
