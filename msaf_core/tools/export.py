"""msaf-export: turn a training run into a deployable checkpoint, or a checkpoint into
inference-engine graphs.

    msaf-export RUN_DIR OUT.pt [--which best|last] [--fp32] [--val-json FILE]
                [--recipe TEXT] [--hardware TEXT] [--force]
    msaf-export --format onnx|openvino CKPT OUT_DIR [--int8 DATA_ROOT] [--force]
    msaf-export --format tensorrt EXPORT_DIR|CKPT OUT_DIR [--fp32] [--force]

Reads ``RUN_DIR/best.pt`` (or ``last.pt``) and ``RUN_DIR/log.jsonl`` and writes ``OUT.pt``:
the weights only (no optimiser state), stored in float16 unless ``--fp32`` (they load back
as float32), with what the run's log says about it under ``extra``: iterations, the step
of the exported weights, the validation history, and the training wall time. The wall
time is the sum of the gaps between logged training steps. A gap that spans a validation
or a restart counts as one typical logged interval (the median), so evaluations and
downtime are left out. ``--val-json`` (written by ``msaf-eval --json``) adds its figures
(mIoU, per-class IoU, TC, FPS) under ``metrics``. This is how the bundled model was
written.

``--format onnx`` writes the checkpoint's streaming model as two ONNX graphs with dynamic
height and width, ``encoder.onnx`` (frame → the features the stream cache keeps and those
of frame t the head needs) and ``head.onnx`` (features of t-2, t-1, t → logits on the 1/8
grid), and ``msaf_export.json`` (classes, palette, mean/std, config) beside them.
``--format openvino`` writes the same pair as OpenVINO IR; ``--int8 DATA_ROOT`` adds int8
graphs quantised with NNCF, calibrated on CamVid training clips (``--calib-clips``,
``--calib-holdout-seq``). ``--format tensorrt`` builds TensorRT engines from an ONNX export
(on a machine with a CUDA GPU and TensorRT; fp16 unless ``--fp32``; docs/deploy.md). The
folders load with ``Segmenter.from_checkpoint(OUT_DIR, backend=...)`` and the programs'
``--backend``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ..errors import CheckpointError


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The records of a run's log.jsonl; unreadable lines (a cut last line) are skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def train_wall_time_s(records: List[Dict[str, Any]]) -> float:
    """Seconds of training in a log: the gaps between consecutive logged training steps.
    A gap across a validation record, a restart (the step does not follow on) or a long
    pause counts as the median logged interval instead."""
    steps = [r for r in records if "eval" not in r and "time" in r and "step" in r]
    if len(steps) < 2:
        return 0.0
    gaps = [b["time"] - a["time"] for a, b in zip(steps, steps[1:])
            if b["step"] > a["step"] and b["time"] > a["time"]]
    typical = statistics.median(gaps) if gaps else 0.0
    total, prev, interrupted = 0.0, None, False
    for r in records:
        if "eval" in r:
            interrupted = True
            continue
        if "time" not in r or "step" not in r:
            continue
        if prev is not None:
            gap = r["time"] - prev["time"]
            follows = r["step"] > prev["step"] and 0 < gap < 20 * max(typical, 1e-9)
            total += typical if (interrupted or not follows) else gap
        prev, interrupted = r, False
    return total


def summarize_run(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    evals = [{"step": r["step"], "miou": r["miou"],
              **({"set": r["eval"]} if isinstance(r["eval"], str) else {}),
              **({"output_stride": r["output_stride"]} if "output_stride" in r else {})}
             for r in records if "eval" in r]
    steps = [r["step"] for r in records if "eval" not in r and "step" in r]
    wall = train_wall_time_s(records)
    return {"iterations": max(steps) if steps else None, "val_history": evals,
            "train_wall_time_s": round(wall, 1), "train_wall_time_h": round(wall / 3600.0, 2)}


def run_options(run: Path) -> Optional[Dict[str, Any]]:
    """The msaf-train options of a run (from its last.pt), or None where it has none."""
    try:
        ck = read_checkpoint(run / "last.pt")
    except CheckpointError:
        return None
    options = (ck.get("train_state") or {}).get("args")
    return dict(options) if isinstance(options, dict) else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msaf-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a msaf-train output folder (--format checkpoint), "
                   "else a checkpoint file (or, for tensorrt, an ONNX export folder)")
    p.add_argument("out", type=Path, help="checkpoint to write (.pt), or the export folder")
    p.add_argument("--format", dest="fmt", default="checkpoint",
                   choices=["checkpoint", "onnx", "openvino", "tensorrt"],
                   help="checkpoint (default): a deployable .pt from a run; onnx/openvino: the "
                        "encoder/head graphs; tensorrt: engines built from the ONNX graphs")
    p.add_argument("--int8", metavar="DATA_ROOT", default=None,
                   help="with --format openvino: add int8 graphs calibrated on CamVid "
                        "training clips under DATA_ROOT (needs nncf: pip install .[int8])")
    p.add_argument("--calib-clips", type=int, default=32, help="clips to calibrate int8 on")
    p.add_argument("--calib-holdout-seq", nargs="+", default=[], metavar="SEQ",
                   help="leave these training sequences out of the calibration")
    p.add_argument("--output-stride", type=int, choices=(8, 16), default=None,
                   help="with --format onnx|openvino|tensorrt: the backbone output stride "
                        "baked into the graphs (default: the checkpoint's; 16 is about 3x "
                        "cheaper)")
    p.add_argument("--which", choices=["best", "last"], default="best")
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16)")
    p.add_argument("--val-json", type=Path, default=None, help="msaf-eval --json output to embed")
    p.add_argument("--recipe", default=None, help="the training command, for the record")
    p.add_argument("--hardware", default=None, help="where it was trained, for the record")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return p


def export_graphs(args: argparse.Namespace) -> int:
    """``--format onnx|openvino|tensorrt``: the encoder/head pair of a checkpoint."""
    from ..export import ExportError, calibration_clips, export_checkpoint, quantize_openvino
    if args.int8 and args.fmt != "openvino":
        raise ExportError("--int8 writes OpenVINO int8 graphs; use it with --format openvino")
    if args.fmt == "tensorrt":
        from ..tensorrt_engine import build_engines
        rec = build_engines(args.run, args.out, fp16=not args.fp32,
                            output_stride=args.output_stride)
    else:
        rec = export_checkpoint(args.run, args.out, args.fmt, args.output_stride)
    if args.int8:
        clips = calibration_clips(args.int8, args.calib_clips, exclude=args.calib_holdout_seq)
        rec = quantize_openvino(args.out, clips)
    files = sorted(g["file"] for g in rec["graphs"].values() if isinstance(g, dict))
    print(f"msaf-export: wrote {args.out}/ ({', '.join(files)}, msaf_export.json) from "
          f"{args.run}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fmt != "checkpoint":
        from ..backends import BackendError
        from ..export import ExportError
        if args.out.exists() and not args.force:
            print(f"msaf-export: error: {args.out} exists; pass --force to replace it",
                  file=sys.stderr)
            return 1
        try:
            return export_graphs(args)
        except (CheckpointError, ExportError, BackendError) as e:
            print(f"msaf-export: error: {e}", file=sys.stderr)
            return 1
    if args.output_stride is not None:
        print("msaf-export: error: --output-stride bakes a stride into engine graphs (--format "
              "onnx|openvino|tensorrt); a checkpoint runs at either, chosen when it is loaded "
              "(output_stride=, the node's output_stride, --output-stride of the tools)",
              file=sys.stderr)
        return 1
    src = args.run / f"{args.which}.pt"
    log = args.run / "log.jsonl"
    if args.out.exists() and not args.force:
        print(f"msaf-export: error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    try:
        model, ck = load_checkpoint(src)
    except CheckpointError as e:
        print(f"msaf-export: error: {e}", file=sys.stderr)
        return 1
    extra: Dict[str, Any] = dict(ck.get("extra") or {})
    if log.is_file():
        extra.update(summarize_run(read_log(log)))
    extra["exported_step"] = (ck.get("metrics") or {}).get("step")
    init = (ck.get("train_state") or {}).get("init")
    if init and "init" not in extra:
        extra["init"] = init               # the checkpoint the run started from, with its record
    options = ((ck.get("train_state") or {}).get("args")   # last.pt carries them itself
               or run_options(args.run))
    if options is not None:
        extra["train_options"] = options   # what it was trained on (split, drives), the recipe
    if args.recipe:
        extra["recipe"] = args.recipe
    if args.hardware:
        extra["hardware"] = args.hardware
    metrics = dict(ck.get("metrics") or {})
    if args.val_json is not None:
        try:
            val = json.loads(args.val_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"msaf-export: error: cannot read {args.val_json}: {e}", file=sys.stderr)
            return 1
        metrics["eval"] = {k: val[k] for k in ("dataset", "split", "miou", "iou", "tc",
                                               "tc_method", "fps", "threads", "precision")
                           if k in val}
    res = ck.get("train_resolution")
    save_checkpoint(args.out, model, train_resolution=tuple(res) if res else None,
                    metrics=metrics, half=not args.fp32, extra=extra)
    size_mb = args.out.stat().st_size / 2**20
    print(f"msaf-export: wrote {args.out} ({size_mb:.1f} MB, "
          f"{'float32' if args.fp32 else 'float16'} storage) from {src}"
          f"{'' if extra.get('iterations') is None else ', ' + str(extra['iterations']) + ' iterations'}"
          f", {extra.get('train_wall_time_h', '?')} h of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
