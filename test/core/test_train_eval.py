"""msaf-train and msaf-eval on a handful of real CamVid frames; metrics against hand counts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from msaf_core import Segmenter, read_checkpoint
from msaf_core.metrics import (TemporalConsistency, confusion, iou_per_class, mean_iou,
                               warp_nearest)
from msaf_core.tools.train import main as train_main
from msaf_core.training import lr_factor

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dim", "16", "--crop", "64", "64", "--batch-size", "2", "--threads", "1",
        "--no-progress", "--log-every", "1", "--amp", "off", "--preset", "scratch",
        "--warmup", "2", "--scale", "0.25", "0.25", "--jitter", "0"]


@pytest.fixture(scope="module")
def mini_camvid(camvid_root, tmp_path_factory):
    """8 train frames of one sequence and 4 val frames, real CamVid files."""
    root = tmp_path_factory.mktemp("camvid")
    for split, n in (("train", 8), ("val", 4)):
        for sub in (split, f"{split}annot"):
            (root / sub).mkdir()
        names = sorted(p.name for p in (camvid_root / split).glob("0016E5_*.png"))[:n]
        for name in names:
            shutil.copy(camvid_root / split / name, root / split / name)
            shutil.copy(camvid_root / f"{split}annot" / name, root / f"{split}annot" / name)
    return root


def _log(out: Path):
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.9) == pytest.approx(0.0)


def test_few_iterations_lower_the_loss(mini_camvid, tmp_path):
    out = tmp_path / "run"
    # 2 fixed clips (batch 2 of an 8-clip set, same seed every epoch) overfit quickly
    rc = train_main(["--data-root", str(mini_camvid), "--out", str(out), "--iters", "12",
                     "--lr", "3e-3", "--eval-every", "12", "--save-every", "6", "--heads", "2",
                     *TINY])
    assert rc == 0
    log = [r for r in _log(out) if "loss" in r]
    first = np.mean([r["loss"] for r in log[:3]])
    last = np.mean([r["loss"] for r in log[-3:]])
    assert last < first, (first, last)
    evals = [r for r in _log(out) if "eval" in r]
    assert len(evals) == 1 and 0.0 <= evals[0]["miou"] <= 1.0
    for name in ("last.pt", "best.pt"):
        ck = read_checkpoint(out / name)
        assert ck["train_resolution"] == [64, 64]
        assert (ck["config"]["dim"], ck["config"]["heads"]) == (16, 2)
    assert "train_state" in read_checkpoint(out / "last.pt")
    assert "camvid_val_miou" in read_checkpoint(out / "best.pt")["metrics"]

    # msaf-export: a deployable float16 checkpoint with the run's record
    from msaf_core.tools.export import main as export_main
    val = tmp_path / "val.json"
    val.write_text(json.dumps({"miou": 0.5, "tc": 0.7, "fps": 3.0, "ignored": 1}))
    dst = tmp_path / "model.pt"
    assert export_main([str(out), str(dst), "--val-json", str(val), "--recipe", "msaf-train ..."]) == 0
    ck = read_checkpoint(dst)
    assert "train_state" not in ck
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    ex = ck["extra"]
    assert ex["iterations"] == 12 and ex["recipe"] == "msaf-train ..."
    # the run's options say what it was trained on
    assert ex["train_options"]["train_split"] == "train" and ex["train_options"]["iters"] == 12
    assert [e["step"] for e in ex["val_history"]] == [12]
    assert 0 < ex["train_wall_time_s"] < 3600
    assert ck["metrics"]["eval"] == {"miou": 0.5, "tc": 0.7, "fps": 3.0}
    seg = Segmenter.from_checkpoint(dst)
    assert seg.segment(np.zeros((64, 64, 3), np.uint8)).shape == (64, 64)
    assert export_main([str(out), str(dst)]) == 1          # exists: refused without --force
    assert export_main([str(tmp_path / "nope"), str(tmp_path / "x.pt")]) == 1


def test_resume_continues_the_exact_schedule(mini_camvid, tmp_path):
    common = ["--data-root", str(mini_camvid), "--eval-every", "0", "--save-every", "3", *TINY]
    a, c = tmp_path / "a", tmp_path / "c"
    assert train_main([*common, "--out", str(a), "--iters", "6"]) == 0  # uninterrupted
    # interrupted after 3 iterations, then resumed from last.pt up to 6
    assert train_main([*common, "--out", str(c), "--iters", "6", "--stop-after", "3"]) == 0
    assert read_checkpoint(c / "last.pt")["train_state"]["step"] == 3
    assert train_main([*common, "--out", str(c), "--iters", "6", "--resume", str(c / "last.pt")]) == 0
    la = {r["step"]: r for r in _log(a) if "loss" in r}
    lc = {r["step"]: r for r in _log(c) if "loss" in r}
    assert sorted(lc) == list(range(1, 7))
    for s in range(1, 7):
        assert lc[s]["lr"] == pytest.approx(la[s]["lr"])
        assert lc[s]["loss"] == pytest.approx(la[s]["loss"], rel=1e-5, abs=1e-6)
    sa = read_checkpoint(a / "last.pt")["state_dict"]
    sc = read_checkpoint(c / "last.pt")["state_dict"]
    for k in sa:
        assert torch.allclose(sa[k].float(), sc[k].float(), atol=1e-6), k


def test_resume_refuses_another_model_or_recipe_and_runs_are_not_overwritten(mini_camvid, tmp_path):
    common = ["--data-root", str(mini_camvid), "--eval-every", "0", "--save-every", "2", *TINY]
    out = tmp_path / "run"
    assert train_main([*common, "--out", str(out), "--iters", "4", "--stop-after", "2"]) == 0
    last = str(out / "last.pt")
    with pytest.raises(SystemExit, match="different model: heads: 4 in the run, 2 now"):
        train_main([*common, "--heads", "2", "--out", str(out), "--iters", "4", "--resume", last])
    with pytest.raises(SystemExit, match="another recipe .*batch_size: 2 in the run, 1 now"):
        train_main([*common, "--batch-size", "1", "--out", str(out), "--iters", "4",
                    "--resume", "auto"])
    # a fresh run into the same folder would replace best.pt and mix the two logs
    with pytest.raises(SystemExit, match="holds a run already"):
        train_main([*common, "--out", str(out), "--iters", "2"])
    # extending a run on purpose
    assert train_main([*common, "--out", str(out), "--iters", "6", "--resume", "auto",
                       "--allow-changed-recipe"]) == 0
    assert read_checkpoint(out / "last.pt")["train_state"]["step"] == 6
    assert [r["step"] for r in _log(out) if "loss" in r] == list(range(1, 7))
    # --force starts over: a new log
    assert train_main([*common, "--out", str(out), "--iters", "2", "--force"]) == 0
    assert [r["step"] for r in _log(out) if "loss" in r] == [1, 2]


def test_last_checkpoint_follows_a_new_best(mini_camvid, tmp_path, monkeypatch):
    """last.pt is written right after a new best.pt (whatever --save-every says), so a resume
    after a crash knows that best and never overwrites best.pt with a worse model."""
    import msaf_core.training as T
    saved = []
    real = T.save_checkpoint

    def spy(path, model, **kw):
        saved.append((Path(path).name, (kw.get("metrics") or {}).get("step")))
        return real(path, model, **kw)
    monkeypatch.setattr(T, "save_checkpoint", spy)
    assert train_main(["--data-root", str(mini_camvid), "--out", str(tmp_path / "r"),
                       "--iters", "3", "--eval-every", "2", "--save-every", "100", *TINY]) == 0
    assert saved[:2] == [("best.pt", 2), ("last.pt", 2)] and saved[-1] == ("last.pt", 3)
    assert read_checkpoint(tmp_path / "r" / "last.pt")["train_state"]["best"] >= 0


@pytest.mark.slow
def test_torchrun_two_cpu_processes(mini_camvid, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "msaf_core.tools.train", "--data-root", str(mini_camvid), "--out", str(out),
           "--iters", "3", "--eval-every", "0", "--save-every", "3", *TINY, "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = read_checkpoint(out / "last.pt")
    ts = ck["train_state"]
    assert ts["step"] == 3 and sorted(ts["rng"]) == ["0", "1"]
    assert ts["args"]["batch_size"] == 2
    assert "done at step 3" in r.stdout


@pytest.fixture(scope="module")
def two_drive_camvid(camvid_root, tmp_path_factory):
    """6 train frames of 0016E5 and 4 of 0006R0 (two drives), 3 val frames."""
    root = tmp_path_factory.mktemp("camvid2")
    for split, picks in (("train", (("0016E5", 6), ("0006R0", 4))), ("val", (("0016E5", 3),))):
        for sub in (split, f"{split}annot"):
            (root / sub).mkdir()
        for seq, n in picks:
            for name in sorted(p.name for p in (camvid_root / split).glob(f"{seq}_*.png"))[:n]:
                shutil.copy(camvid_root / split / name, root / split / name)
                shutil.copy(camvid_root / f"{split}annot" / name, root / f"{split}annot" / name)
    return root


def test_train_with_a_held_out_drive_validates_there_first(two_drive_camvid, tmp_path):
    out = tmp_path / "h"
    assert train_main(["--data-root", str(two_drive_camvid), "--out", str(out), "--iters", "2",
                       "--eval-every", "2", "--holdout-seq", "0006R0", *TINY]) == 0
    evals = [r for r in _log(out) if "eval" in r]
    assert [r["eval"] for r in evals] == ["holdout:0006R0", "val"]
    best = read_checkpoint(out / "best.pt")
    assert best["metrics"]["camvid_holdout:0006R0_miou"] == pytest.approx(evals[0]["miou"])
    # one stride: no stride in the records, no per-stride keys
    assert all("output_stride" not in r for r in evals)
    assert not any("_os" in k or "mean_over_strides" in k for k in best["metrics"])
    args = read_checkpoint(out / "last.pt")["train_state"]["args"]
    assert args["holdout_seq"] == ["0006R0"] and args["train_split"] == "train"
    # the 6 frames of 0016E5 are all it trained on: one epoch is 6 clips
    assert max(r["epoch"] for r in _log(out) if "loss" in r) == 0
    # an unknown drive is a clear error, before any training
    with pytest.raises(SystemExit, match="no sequence named 0007XX"):
        train_main(["--data-root", str(two_drive_camvid), "--out", str(tmp_path / "x"),
                    "--iters", "1", "--holdout-seq", "0007XX", *TINY])


def test_init_starts_from_a_checkpoint_and_records_it(two_drive_camvid, tmp_path):
    a = tmp_path / "a"
    assert train_main(["--data-root", str(two_drive_camvid), "--out", str(a), "--iters", "2",
                       "--eval-every", "0", "--heads", "2", *TINY]) == 0
    b = tmp_path / "b"
    # zero learning rate: the run's weights are the initial checkpoint's (BN stats aside)
    assert train_main(["--data-root", str(two_drive_camvid), "--out", str(b), "--iters", "1",
                       "--eval-every", "1", "--heads", "2", "--init", str(a / "last.pt"),
                       "--lr", "0", "--train-split", "train+val", *TINY]) == 0
    sa = read_checkpoint(a / "last.pt")["state_dict"]
    sb = read_checkpoint(b / "last.pt")["state_dict"]
    conv = [k for k in sa if k.endswith("conv1.weight")]
    assert conv and all(torch.equal(sa[k].float(), sb[k].float()) for k in conv)
    assert read_checkpoint(b / "last.pt")["train_state"]["init"]["path"] == str(a / "last.pt")
    assert read_checkpoint(b / "best.pt")["extra"]["init"]["path"] == str(a / "last.pt")
    # the exported last.pt keeps that record too
    from msaf_core.tools.export import main as export_main
    assert export_main([str(b), str(tmp_path / "b.pt"), "--which", "last"]) == 0
    exported = read_checkpoint(tmp_path / "b.pt")["extra"]
    assert exported["init"]["path"] == str(a / "last.pt")
    assert exported["train_options"]["train_split"] == "train+val"
    # another model is refused
    with pytest.raises(SystemExit, match="is another model"):
        train_main(["--data-root", str(two_drive_camvid), "--out", str(tmp_path / "c"),
                    "--iters", "1", "--init", str(a / "last.pt"), *TINY])


def test_msaf_eval_selects_drives(two_drive_camvid, tiny_checkpoint, tmp_path):
    from msaf_core.tools.evaluate import main as eval_main
    common = ["--data-root", str(two_drive_camvid), "--split", "train", "--checkpoint",
              str(tiny_checkpoint), "--threads", "1", "--no-tc"]
    runs = {}
    for name, sel in (("all", []), ("one", ["--seqs", "0006R0"]),
                      ("rest", ["--holdout-seq", "0006R0"])):
        out = tmp_path / f"{name}.json"
        assert eval_main([*common, *sel, "--json", str(out)]) == 0
        runs[name] = json.loads(out.read_text())
    assert (runs["all"]["frames"], runs["one"]["frames"], runs["rest"]["frames"]) == (10, 4, 6)
    assert runs["one"]["seqs"] == ["0006R0"] and runs["rest"]["holdout_seq"] == ["0006R0"]
    total = np.array(runs["one"]["confusion"]) + np.array(runs["rest"]["confusion"])
    np.testing.assert_array_equal(total, np.array(runs["all"]["confusion"]))
    assert eval_main([*common, "--seqs", "0007XX"]) == 1
    # the JSON names the stride it was scored at (a figure at 16 is another network's)
    assert runs["all"]["output_stride"] == 8
    out = tmp_path / "os16.json"
    assert eval_main([*common, "--seqs", "0006R0", "--output-stride", "16", "--json",
                      str(out)]) == 0
    assert json.loads(out.read_text())["output_stride"] == 16


def test_confusion_matches_hand_count():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = confusion(pred, target, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    # IoU: class0 1/(1+1+0)=0.5, class1 2/(2+1)=2/3, class2 1/1
    np.testing.assert_allclose(iou_per_class(cm), [0.5, 2 / 3, 1.0])
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    cm4 = confusion(np.zeros((2, 2), int), np.zeros((2, 2), int), 4)
    assert np.isnan(iou_per_class(cm4)[1]) and mean_iou(cm4) == 1.0
    with pytest.raises(ValueError, match="outside"):
        confusion(np.array([5]), np.array([0]), 3)


def test_warp_and_temporal_consistency():
    lab = np.zeros((4, 5), np.uint8)
    lab[:, 3] = 1
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0] = 1  # every pixel of t moved one to the right in t+1
    warped = warp_nearest(lab, flow)
    assert (warped[:, 2] == 1).all() and (warped[:, 4] == 255).all()
    tc = TemporalConsistency(2)
    pred_t = np.zeros((4, 5), np.uint8)
    pred_t[:, 2] = 1
    img = np.zeros((4, 5, 3), np.uint8)
    tc.add(img, img, pred_t, lab, flow=flow)
    assert tc.value() == pytest.approx(1.0) and tc.pairs == 1


def test_msaf_eval_cli(mini_camvid, tiny_checkpoint, tmp_path):
    from msaf_core.tools.evaluate import main as eval_main
    out = tmp_path / "r.json"
    rc = eval_main(["--dataset", "camvid", "--data-root", str(mini_camvid), "--split", "val",
                    "--checkpoint", str(tiny_checkpoint), "--json", str(out), "--threads", "1"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["frames"] == 4 and 0 <= res["miou"] <= 1 and res["fps"] > 0
    assert res["tc_pairs"] == 3 and "DIS" in res["tc_method"]
    cm = np.array(res["confusion"])
    assert cm.shape == (11, 11) and res["miou"] == pytest.approx(mean_iou(cm))
    # the same figures come from streaming the frames by hand
    seg = Segmenter.from_checkpoint(tiny_checkpoint)
    from msaf_core.data import CamVidClips
    ds = CamVidClips(mini_camvid, "val")
    total = np.zeros((11, 11), np.int64)
    for i in ds.sequences()[0]:
        clip, lab = ds.raw(i)
        total += confusion(seg.segment(clip[2]), lab, 11)
    np.testing.assert_array_equal(total, cm)
    assert eval_main(["--data-root", str(mini_camvid), "--checkpoint", str(tmp_path / "x.pt")]) == 1


def _spy_train_strides(monkeypatch):
    """The output stride of the model at each training step, recorded as the run goes."""
    import msaf_core.training as training
    seen = []
    real = training.train_step

    def spy(model, *a, **k):
        seen.append(model.backbone.output_stride)
        return real(model, *a, **k)
    monkeypatch.setattr(training, "train_step", spy)
    return seen


def test_training_at_two_output_strides_alternates_and_keeps_the_first(two_drive_camvid,
                                                                        tmp_path, monkeypatch):
    """--output-strides 8 16 trains the steps at 8, 16, 8, ... on one set of weights, and
    log.jsonl says which stride each logged step ran at; the checkpoint is the model at the
    first stride, and its record lists both."""
    seen = _spy_train_strides(monkeypatch)
    out = tmp_path / "os"
    assert train_main(["--data-root", str(two_drive_camvid), "--out", str(out), "--iters", "3",
                       "--eval-every", "0", "--heads", "2", "--output-strides", "8", "16",
                       "--log-every", "1", *TINY]) == 0
    assert seen == [8, 16, 8]
    # each logged step names the stride its losses come from (they alternate too)
    assert [r["output_stride"] for r in _log(out) if "loss" in r] == [8, 16, 8]
    ck = read_checkpoint(out / "last.pt")
    assert ck["config"]["output_stride"] == 8
    assert ck["train_state"]["args"]["output_strides"] == [8, 16]
    from msaf_core.tools.export import main as export_main
    assert export_main([str(out), str(tmp_path / "os.pt"), "--which", "last"]) == 0
    assert read_checkpoint(tmp_path / "os.pt")["extra"]["train_options"]["output_strides"] == [8, 16]
    with pytest.raises(SystemExit):
        train_main(["--data-root", str(two_drive_camvid), "--out", str(tmp_path / "bad"),
                    "--output-strides", "12", *TINY])
    for twice in (["8", "8"], ["8", "16", "8"]):   # a stride twice: a clear error
        with pytest.raises(SystemExit, match="each once"):
            train_main(["--data-root", str(two_drive_camvid), "--out", str(tmp_path / "bad"),
                        "--output-strides", *twice, *TINY])


def test_two_stride_validation_scores_each_stride_and_keeps_the_best_mean(two_drive_camvid,
                                                                          tmp_path, monkeypatch):
    """A run trained at 8 and 16 is validated at both (each logged with its stride, on the
    weights of that step), and best.pt is chosen by the mean of the first set's mIoU over
    the strides, not by the first stride alone."""
    import msaf_core.evaluation as evaluation
    real = evaluation.evaluate_stream
    trained_at = _spy_train_strides(monkeypatch)
    scripted = {  # (validation call, stride) -> mIoU of the held-out drive
        (1, 8): 0.50, (1, 16): 0.10,   # step 2: mean 0.30
        (2, 8): 0.40, (2, 16): 0.30}   # step 4: mean 0.35, better though worse at 8
    calls = {"n": 0}

    def fake(seg, ds, **k):
        res = real(seg, ds, **k)
        stride = seg.model.cfg.output_stride
        # the convolutions themselves run at that stride (layer 3 strided only at 16)
        assert seg.model.backbone.layer3[0].conv1.stride == ((2, 2) if stride == 16 else (1, 1))
        if all(name.startswith("0006R0") for _, _, name in ds.items):
            if stride == 8:
                calls["n"] += 1
            res["miou"] = scripted[(calls["n"], stride)]
        return res
    monkeypatch.setattr(evaluation, "evaluate_stream", fake)
    out = tmp_path / "v"
    assert train_main(["--data-root", str(two_drive_camvid), "--out", str(out), "--iters", "4",
                       "--eval-every", "2", "--heads", "2", "--output-strides", "8", "16",
                       "--holdout-seq", "0006R0", *TINY]) == 0
    evals = [(r["step"], r["eval"], r["output_stride"]) for r in _log(out) if "eval" in r]
    assert evals == [(s, n, o) for s in (2, 4) for o in (8, 16)
                     for n in ("holdout:0006R0", "val")]
    best = read_checkpoint(out / "best.pt")
    m = best["metrics"]
    assert m["step"] == 4 and m["camvid_holdout:0006R0_miou"] == pytest.approx(0.40)
    assert m["camvid_holdout:0006R0_os16_miou"] == pytest.approx(0.30)
    assert m["camvid_holdout:0006R0_mean_over_strides_miou"] == pytest.approx(0.35)
    assert best["config"]["output_stride"] == 8       # the checkpoint keeps the first stride
    assert "camvid_val_os16_miou" in m
    assert read_checkpoint(out / "last.pt")["train_state"]["best"] == pytest.approx(0.35)
    assert trained_at == [8, 16, 8, 16]             # validation left the training model alone
    from msaf_core.tools.export import main as export_main
    assert export_main([str(out), str(tmp_path / "v.pt")]) == 0
    hist = read_checkpoint(tmp_path / "v.pt")["extra"]["val_history"]
    assert [(e["step"], e["output_stride"]) for e in hist] == [
        (s, o) for s in (2, 4) for o in (8, 16) for _ in range(2)]


def test_resuming_with_other_strides_chooses_best_pt_afresh(two_drive_camvid, tmp_path,
                                                           monkeypatch, capsys):
    """A best scored at one set of strides does not compare with a mean over others: a run
    resumed with other --output-strides (or saved before best.pt took the mean) writes
    best.pt at its next validation, even with a lower score."""
    import msaf_core.evaluation as evaluation
    real = evaluation.evaluate_stream
    score = {"v": 0.9}

    def fake(seg, ds, **k):
        res = real(seg, ds, **k)
        res["miou"] = score["v"]
        return res
    monkeypatch.setattr(evaluation, "evaluate_stream", fake)
    out = tmp_path / "r"
    base = ["--data-root", str(two_drive_camvid), "--out", str(out), "--eval-every", "2",
            "--heads", "2", "--holdout-seq", "0006R0", *TINY]
    assert train_main([*base, "--iters", "2"]) == 0
    assert read_checkpoint(out / "best.pt")["metrics"]["step"] == 2
    score["v"] = 0.2
    assert train_main([*base, "--iters", "4", "--output-strides", "8", "16", "--resume", "auto",
                       "--allow-changed-recipe"]) == 0
    assert "writes best.pt afresh" in capsys.readouterr().out
    best = read_checkpoint(out / "best.pt")
    assert best["metrics"]["step"] == 4
    assert best["metrics"]["camvid_holdout:0006R0_mean_over_strides_miou"] == pytest.approx(0.2)
    # the same strides again: the best carries over, and a lower score leaves best.pt alone
    score["v"] = 0.1
    assert train_main([*base, "--iters", "6", "--output-strides", "8", "16", "--resume", "auto",
                       "--allow-changed-recipe"]) == 0
    assert "afresh" not in capsys.readouterr().out
    assert read_checkpoint(out / "best.pt")["metrics"]["step"] == 4
