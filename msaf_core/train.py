"""msaf-train: train MSAF on CamVid or Cityscapes clips (single process or torchrun DDP).

    msaf-train --dataset camvid --data-root ../shared/camvid --backbone resnet18 --out runs/r18
    torchrun --standalone --nproc_per_node=N -m msaf_core.train --dataset cityscapes ...

Two presets fill every option left unset:

- ``--preset paper`` (the paper's §4.1 recipe, for ImageNet-initialised backbones): AdamW
  lr 6e-5, betas 0.9/0.999, weight decay 0.01, head lr ×10, 1500-iteration linear warm-up,
  poly decay (power 1.0), 80k iterations, batch 2 per GPU, crop 640 (CamVid) / 769
  (Cityscapes), random scale 0.5-2.0 and flip.
- ``--preset scratch`` (no ImageNet weights; what the bundled model was trained with): AdamW
  lr 1e-3 for all parameters, weight decay 0.01, 500-iteration warm-up, poly power 0.9,
  batch 8, crop 256×256, scale 0.75-1.5, flip, mild per-frame colour jitter, class weights
  sqrt(median frequency), t-2 and t-1 backbone passes without gradient, bf16 autocast on
  CPUs that have it.

Writes ``OUT/last.pt`` (resumable: optimiser, step, epoch, RNG), ``OUT/best.pt`` (best
validation mIoU), both self-describing checkpoints, and ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from .checkpoint import read_checkpoint, save_checkpoint
from .config import MSAFConfig, VARIANTS, cityscapes_config, default_dim
from .data import ClipAugment, build_dataset, median_frequency_weights
from .model import MSAF, msaf_loss

PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(lr=6e-5, head_lr_mult=10.0, weight_decay=0.01, warmup=1500, poly_power=1.0,
                  iters=80_000, batch_size=2, scale=(0.5, 2.0), jitter=0.0, class_weights="none",
                  history_grad=True, amp="auto"),
    "scratch": dict(lr=1e-3, head_lr_mult=1.0, weight_decay=0.01, warmup=500, poly_power=0.9,
                    iters=20_000, batch_size=8, crop=(256, 256), scale=(0.75, 1.5), jitter=0.2,
                    class_weights="sqrt-median", history_grad=False, amp="auto"),
    "robust": dict(lr=1e-3, head_lr_mult=1.0, weight_decay=0.01, warmup=300, poly_power=0.9,
                   iters=6000, batch_size=8, crop=(192, 192), scale=(0.5, 2.0), jitter=0.3,
                   gamma=0.4, colour=0.1, blur=0.3, noise=0.03, loss="ohem",
                   class_weights="none", history_grad=False, amp="auto"),
}
#: Defaults of the options that older presets do not set.
COMMON = dict(gamma=0.0, colour=0.0, blur=0.0, noise=0.0, loss="ce", ohem_thresh=0.7,
              ohem_min_kept=0.1)
DEFAULT_CROP = {"camvid": (640, 640), "cityscapes": (769, 769)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msaf-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["camvid", "cityscapes"], default="camvid")
    p.add_argument("--data-root", required=True)
    p.add_argument("--backbone", choices=["resnet18", "resnet50", "resnet101"], default="resnet18")
    p.add_argument("--variant", choices=VARIANTS, default="msaf", help="Table 3 row to train")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--dim", type=int, default=None, help="model width d (default 128 for "
                   "resnet18, 256 otherwise)")
    p.add_argument("--heads", type=int, default=4, help="attention heads in every transformer "
                   "block (d/heads = 32 suits CPU attention kernels)")
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


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    preset = {**COMMON, **PRESETS[args.preset]}
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.crop is None:
        args.crop = preset.get("crop", DEFAULT_CROP[args.dataset])
    args.crop = tuple(args.crop)
    args.scale = tuple(args.scale)
    args.history_grad = bool(args.history_grad)
    if args.dim is None:
        args.dim = default_dim(args.backbone)
    return args


#: Options that define the network: a resumed run must match them.
MODEL_KEYS = ("dataset", "backbone", "dim", "heads", "variant")
#: Options that define the schedule and the data order: a resumed run matches them unless
#: ``--allow-changed-recipe``.
RECIPE_KEYS = ("batch_size", "iters", "lr", "head_lr_mult", "weight_decay", "warmup",
               "poly_power", "crop", "scale", "jitter", "class_weights", "history_grad", "seed",
               "gamma", "colour", "blur", "noise", "loss", "ohem_thresh", "ohem_min_kept",
               "train_split", "seqs", "holdout_seq")


def args_record(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's options as last.pt stores them (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}


def check_resume(saved: Dict[str, Any], args: argparse.Namespace, saved_world: Optional[int],
                 world: int, path: str) -> None:
    """Refuse to resume ``path`` under other model options (always) or another recipe or
    process count (unless ``--allow-changed-recipe``, which prints what changed)."""
    now = args_record(args)

    def diffs(keys: Sequence[str]) -> List[str]:
        return [f"{k}: {saved[k]!r} in the run, {now[k]!r} now"
                for k in keys if k in saved and saved[k] != now[k]]
    model = diffs(MODEL_KEYS)
    if model:
        raise SystemExit(f"[msaf-train] {path} is a different model: " + "; ".join(model))
    recipe = diffs(RECIPE_KEYS)
    if saved_world is not None and saved_world != world:
        recipe.append(f"processes: {saved_world} in the run, {world} now")
    if recipe and not args.allow_changed_recipe:
        raise SystemExit(f"[msaf-train] {path} was trained with another recipe (" +
                         "; ".join(recipe) + "): resume with the same options, or pass "
                         "--allow-changed-recipe to continue under the new ones")
    if recipe and int(os.environ.get("RANK", "0")) == 0:
        print("[msaf-train] resuming with a changed recipe: " + "; ".join(recipe),
              file=sys.stderr)


def lr_factor(step: int, iters: int, warmup: int, power: float) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then poly decay to 0 at ``iters``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, iters - warmup))
    return (1.0 - frac) ** power


class EpochSampler(Sampler):
    """Seeded permutation per epoch, split across ranks, resumable from a position."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def batches_per_epoch(self, batch: int) -> int:
        return (self.n // self.world) // batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per = self.n // self.world
        mine = perm[self.rank * per:(self.rank + 1) * per]
        return iter(mine[self.start:])

    def __len__(self) -> int:
        return self.n // self.world - self.start


def _rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_version": random.getstate()[0], "numpy": torch.from_numpy(
              np.random.get_state()[1].astype(np.int64)), "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), None))
    np.random.set_state(("MT19937", st["numpy"].numpy().astype(np.uint32), st["numpy_pos"], 0, 0.0))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def train(args: argparse.Namespace) -> Dict[str, Any]:
    args = resolve_args(args)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world, local = 0, 1, 0
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if distributed:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.threads:
        torch.set_num_threads(args.threads)
    is_main = rank == 0
    out = Path(args.out)
    if not args.resume and not args.force and any(
            (out / n).exists() for n in ("last.pt", "best.pt", "log.jsonl")):
        raise SystemExit(f"[msaf-train] {out} holds a run already: continue it with --resume "
                         f"auto, or start over with --force (or choose another --out)")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if args.force and not args.resume and (out / "log.jsonl").exists():
            (out / "log.jsonl").unlink()          # a new run: its record starts empty

    amp = args.amp
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else ("bf16" if _cpu_has_bf16() else "off")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    torch.manual_seed(args.seed + rank)
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)

    cfg_kw = dict(backbone=args.backbone, dim=args.dim, heads=args.heads, variant=args.variant)
    cfg = cityscapes_config(**cfg_kw) if args.dataset == "cityscapes" else MSAFConfig(**cfg_kw)
    aug = ClipAugment(crop=args.crop, scale=args.scale, flip=True, jitter=args.jitter,
                      gamma=args.gamma, colour=args.colour, blur=args.blur, noise=args.noise)
    sel = {}
    if args.seqs or args.holdout_seq:
        if args.dataset != "camvid":
            raise SystemExit("[msaf-train] --seqs/--holdout-seq select CamVid drives")
        sel = dict(sequences=args.seqs, exclude=tuple(args.holdout_seq))
    try:
        ds = build_dataset(args.dataset, args.data_root, args.train_split, aug, seed=args.seed,
                           **sel)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"[msaf-train] {e}")
    if ds.num_classes != cfg.num_classes:
        raise SystemExit(f"dataset has {ds.num_classes} classes, config {cfg.num_classes}")
    # validation sets, the first one choosing best.pt: the held-out drive where there is one
    val_sets: List[Any] = []
    if is_main and args.eval_every > 0:
        if args.holdout_seq:
            val_sets.append(("holdout:" + "+".join(args.holdout_seq), build_dataset(
                args.dataset, args.data_root, args.train_split, sequences=args.holdout_seq)))
        try:
            val_sets.append((args.eval_split, build_dataset(args.dataset, args.data_root,
                                                            args.eval_split)))
        except FileNotFoundError as e:
            print(f"[msaf-train] no validation on {args.eval_split}: {e}", file=sys.stderr)

    model = MSAF(cfg)
    init_record = None
    if args.init and not args.resume:
        ck0 = read_checkpoint(args.init)
        c0 = ck0.get("config") or {}
        if any(c0.get(k) != getattr(cfg, k) for k in ("backbone", "dim", "heads", "variant",
                                                        "num_classes")):
            raise SystemExit(f"[msaf-train] --init {args.init} is another model "
                             f"({ {k: c0.get(k) for k in ('backbone', 'dim', 'heads', 'variant')} })")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in ck0["state_dict"].items()})
        init_record = {"path": str(args.init), "metrics": ck0.get("metrics"),
                       "extra": ck0.get("extra")}
        if is_main:
            print(f"[msaf-train] initialised from {args.init}")
    if args.backbone_weights:
        unused = model.backbone.load_imagenet(args.backbone_weights)
        if is_main:
            print(f"[msaf-train] ImageNet backbone from {args.backbone_weights} "
                  f"(unused: {len(unused)} classifier tensors)")
    model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    bb = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": bb, "lr_mult": 1.0},
                             {"params": head, "lr_mult": args.head_lr_mult}],
                            lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16" and device.type == "cuda"))

    ohem = (args.ohem_thresh, args.ohem_min_kept) if args.loss == "ohem" else None
    cw = None
    if args.class_weights != "none":
        w = median_frequency_weights(ds.class_frequencies())
        cw = (w.sqrt() if args.class_weights == "sqrt-median" else w).to(device)

    step, epoch, pos, best = 0, 0, 0, -1.0
    resume = args.resume
    if resume == "auto":
        resume = str(out / "last.pt") if (out / "last.pt").exists() else None
    if resume:
        ck = read_checkpoint(resume)
        ts = ck.get("train_state")
        if ts is None:
            raise SystemExit(f"{resume}: holds no training state (use a last.pt)")
        check_resume(ts.get("args") or {}, args, ts.get("world"), world, resume)
        state = {k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
        model.load_state_dict(state)
        opt.load_state_dict(ts["optimizer"])
        if "scaler" in ts and scaler.is_enabled():
            scaler.load_state_dict(ts["scaler"])
        step, epoch, pos, best = ts["step"], ts["epoch"], ts["pos"], ts.get("best", -1.0)
        init_record = ts.get("init")
        rng = ts.get("rng", {}).get(str(rank))
        if rng is not None:
            _set_rng_state(rng)
        if is_main:
            print(f"[msaf-train] resumed {resume} at step {step} (epoch {epoch}, batch {pos})")

    ddp_model = model
    if distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = EpochSampler(len(ds), args.seed, rank, world)
    bpe = sampler.batches_per_epoch(args.batch_size)
    if bpe == 0:
        raise SystemExit(f"batch size {args.batch_size} x {world} exceeds the {len(ds)} clips")
    log_f = open(out / "log.jsonl", "a") if is_main else None
    stop = {"flag": False}

    def _on_signal(signum, frame):  # save and leave at the next step
        stop["flag"] = True
    for s in (signal.SIGTERM, signal.SIGINT):  # every rank: torchrun signals them all
        signal.signal(s, _on_signal)

    def save_last() -> None:
        rngs: Dict[str, Any] = {str(rank): _rng_state()}
        if distributed:
            gathered: List[Any] = [None] * world
            dist.all_gather_object(gathered, _rng_state())
            rngs = {str(i): g for i, g in enumerate(gathered)}
        if not is_main:
            return
        ts = {"optimizer": opt.state_dict(), "step": step, "epoch": epoch, "pos": pos,
              "best": best, "rng": rngs, "world": world, "args": args_record(args)}
        if init_record is not None:
            ts["init"] = init_record
        if scaler.is_enabled():
            ts["scaler"] = scaler.state_dict()
        save_checkpoint(out / "last.pt", model, train_resolution=args.crop,
                        metrics={"best_val_miou": best, "step": step}, train_state=ts)

    bar = None
    if is_main and not args.no_progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=args.iters, initial=step, desc="train", unit="it", dynamic_ncols=True)
        except ImportError:
            bar = None
    t_last, s_last = time.time(), step
    stop_at = None if args.stop_after is None else step + args.stop_after
    last_losses: Dict[str, float] = {}
    result: Dict[str, Any] = {}
    model.train()
    while step < args.iters and not stop["flag"]:
        sampler.epoch, sampler.start = epoch, pos * args.batch_size
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                            num_workers=args.workers, persistent_workers=False)
        for batch in loader:
            frames = batch["frames"].to(device, non_blocking=True)
            label = batch["label"].to(device, non_blocking=True)
            f = lr_factor(step, args.iters, args.warmup, args.poly_power)
            for g in opt.param_groups:
                g["lr"] = args.lr * g["lr_mult"] * f
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                outputs = ddp_model(frames, history_grad=args.history_grad)
            losses = msaf_loss(outputs, label, cfg.ignore_index, cw, ohem)
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            pos += 1
            if stop_at is not None and step >= stop_at:
                stop["flag"] = True
            last_losses = {k: float(v.detach()) for k, v in losses.items()}
            if not math.isfinite(last_losses["loss"]):
                raise SystemExit(f"[msaf-train] loss is {last_losses['loss']} at step {step}")
            if is_main:
                if bar is not None:
                    bar.update(1)
                if step % args.log_every == 0 or step == args.iters:
                    now = time.time()
                    ips = (step - s_last) / max(1e-9, now - t_last)
                    t_last, s_last = now, step
                    rec = {"step": step, "epoch": epoch, "lr": args.lr * f, "it_s": ips,
                           "time": now, **last_losses}
                    log_f.write(json.dumps(rec) + "\n")
                    log_f.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_losses['loss']:.3f}", lr=f"{args.lr * f:.2e}",
                                        it_s=f"{ips:.2f}")
            do_eval = bool(val_sets) and (step % args.eval_every == 0 or step == args.iters)
            new_best = False
            if do_eval:
                from .evaluate import evaluate_stream
                from .segmenter import Segmenter
                eval_model = MSAF(cfg)  # a copy: the Segmenter changes mode and layout
                eval_model.load_state_dict(model.state_dict())
                seg = Segmenter(eval_model, "cpu" if device.type == "cpu" else device,
                                max_gap_s=None)
                metrics: Dict[str, Any] = {"step": step}
                msgs = []
                for name, vds in val_sets:
                    res = evaluate_stream(seg, vds, tc=False)
                    rec = {"step": step, "eval": name, "miou": float(res["miou"]),
                           "fps": res["fps"], "iou": res["iou"], "time": time.time()}
                    log_f.write(json.dumps(rec) + "\n")
                    log_f.flush()
                    metrics[f"{args.dataset}_{name}_miou"] = rec["miou"]
                    metrics[f"{args.dataset}_{name}_iou"] = res["iou"]
                    msgs.append(f"{name} mIoU {100 * rec['miou']:.2f}")
                miou = metrics[f"{args.dataset}_{val_sets[0][0]}_miou"]
                msg = f"[msaf-train] step {step}: " + ", ".join(msgs)
                if miou > best:
                    best, new_best = miou, True
                    save_checkpoint(out / "best.pt", model, train_resolution=args.crop,
                                    metrics=metrics,
                                    extra={"init": init_record} if init_record else None)
                    msg += f" (best on {val_sets[0][0]})"
                (bar.write if bar is not None else print)(msg)
                result = {"val_miou": miou}
            if distributed:  # all ranks agree on stopping before save_last's collective
                flag = torch.tensor([int(stop["flag"]), int(new_best)], device=device)  # nccl: GPU
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop["flag"], new_best = bool(flag[0].item()), bool(flag[1].item())
            # after a new best.pt, last.pt records it at once: a crash before the next save
            # cannot resume with an older best and later overwrite best.pt with a worse model
            if step % args.save_every == 0 or step == args.iters or stop["flag"] or new_best:
                save_last()
            if step >= args.iters or stop["flag"]:
                break
        else:
            epoch, pos = epoch + 1, 0
            continue
        if pos >= bpe:
            epoch, pos = epoch + 1, 0
    if bar is not None:
        bar.close()
    if log_f is not None:
        log_f.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    result.update({"step": step, "losses": last_losses, "best": best})
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    res = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[msaf-train] done at step {res['step']}: loss {res['losses'].get('loss', float('nan')):.4f}"
              + (f", best val mIoU {100 * res['best']:.2f}" if res["best"] >= 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
