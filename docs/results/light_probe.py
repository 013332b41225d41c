"""Photometric-shift probe: mIoU of checkpoints on one CamVid drive under other light.

    python docs/results/light_probe.py CKPT[,CKPT...] SPLIT SEQ FRAMES [THREADS]

(run from the repository root, with the CamVid data in ../shared/camvid; 2 threads unless
THREADS says otherwise)

Each checkpoint streams the first FRAMES frames of each sequence of drive SEQ as they are
("none"), darker ("dark": gamma 1.8, exposure x0.8), with a warm colour cast ("cast": gains
1.15, 1.0, 0.8) and blurred with sensor noise ("blurnoise": sigma 1.2 px, noise std 0.04).
"""
import sys, numpy as np, torch
from msaf_core import Segmenter
from msaf_core.data import CamVidClips, gaussian_blur
from msaf_core.metrics import confusion, mean_iou
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else 2)
def shift(img, kind):
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    if kind == "dark":   x = x.pow(1.8) * 0.8                       # dusk: gamma + exposure
    if kind == "cast":   x = x * torch.tensor([1.15, 1.0, 0.8]).view(3, 1, 1)  # warm white balance
    if kind == "blurnoise":
        g = torch.Generator().manual_seed(0)
        x = gaussian_blur(x, 1.2) + 0.04 * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
ds = CamVidClips("../shared/camvid", sys.argv[2], sequences=[sys.argv[3]], cache=False)
for ck in sys.argv[1].split(","):
    row = []
    for kind in ("none", "dark", "cast", "blurnoise"):
        seg = Segmenter.from_checkpoint(ck, max_gap_s=None)
        cm = np.zeros((11, 11), np.int64)
        for seq in ds.sequences():
            seg.reset()
            for i in seq[:int(sys.argv[4])]:
                clip, lab = ds.raw(i)
                cm += confusion(seg.segment(shift(clip[2], kind)), lab, 11)
        row.append(f"{kind} {100 * mean_iou(cm):.1f}")
    print(ck, " | ".join(row), flush=True)
