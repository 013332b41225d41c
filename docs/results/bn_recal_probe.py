"""Would per-stride BatchNorm statistics help? Re-estimate the bundled model's running
statistics at one output stride and score it before and after.

    python docs/results/bn_recal_probe.py STRIDE [CLIPS] [THREADS]

The running mean and variance of every BatchNorm layer are reset and re-estimated (a
cumulative average, as in "precise BN") from CLIPS of the CamVid train+val clips, evenly
spaced (default all 468), un-augmented, at 480x360, run as (t-2, t-1, t) clips in batches of
4 at output stride STRIDE; then val and drive 0006R0 are streamed through the Segmenter
as msaf-eval does. Every one of these frames is in the bundled model's training set.
"""
import copy, sys, time
import torch
from torch import nn
from msaf_core.checkpoint import default_checkpoint, load_checkpoint
from msaf_core.data import build_dataset
from msaf_core.evaluation import evaluate_stream
from msaf_core.segmenter import Segmenter

ROOT = "../shared/camvid"
stride = int(sys.argv[1])
clips = int(sys.argv[2]) if len(sys.argv) > 2 else 10**9
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)


def score(model, tag):
    seg = Segmenter(copy.deepcopy(model), "cpu", max_gap_s=None)
    res = {}
    for name, ds in (("val", build_dataset("camvid", ROOT, "val")),
                     ("0006R0", build_dataset("camvid", ROOT, "train", sequences=["0006R0"]))):
        res[name] = round(100 * float(evaluate_stream(seg, ds, tc=False)["miou"]), 2)
    print(f"{tag} (output stride {stride}): {res}", flush=True)


model, _ = load_checkpoint(default_checkpoint(), output_stride=stride)
score(model, "as shipped")
bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
for m in bns:
    m.reset_running_stats()
    m.momentum = None                     # cumulative average over every batch
    m.train()
ds = build_dataset("camvid", ROOT, "train+val")
idx = list(range(len(ds)))[::max(1, len(ds) // clips)]
t0 = time.time()
with torch.no_grad():
    for j in range(0, len(idx), 4):
        model(torch.stack([ds[i]["frames"] for i in idx[j:j + 4]]), history_grad=False)
print(f"re-estimated from {len(idx)} clips in {time.time() - t0:.0f} s", flush=True)
model.eval()
score(model, "re-estimated")
