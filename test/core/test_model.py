"""The MSAF network: config validation, shapes, finiteness, gradients, ablations."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from msaf_core import MSAFConfig, VARIANTS, msaf_loss
from msaf_core.backbone import DilatedResNet

from conftest import make_tiny_model


def _frames(b=2, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 3, h, w, generator=g)


@pytest.mark.parametrize("bad, match", [
    (dict(backbone="vgg16"), "backbone"),
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=5), "class_names"),
    (dict(dim=30, heads=4), "heads"),
    (dict(dim=4), "dim"),
    (dict(dcn_kernel=4), "dcn_kernel"),
    (dict(dcn_groups=3), "dcn_groups"),
    (dict(variant="no_such_row"), "variant"),
    (dict(pst_pool=(4, 2)), "pst_pool"),
    (dict(logit_scale=0.0), "logit_scale"),
    (dict(std=(0.2, 0.0, 0.2)), "std"),
    (dict(channel_order="BGR"), "channel_order"),
    (dict(ignore_index=3), "ignore_index"),
    (dict(palette=((0, 0, 0),) * 10 + ((0, 0, 300),)), "palette"),
])
def test_bad_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        MSAFConfig(**bad)


def test_config_roundtrip_dict():
    cfg = MSAFConfig(dim=32, heads=4, variant="without_dcn")
    assert MSAFConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        MSAFConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("name, chans", [("resnet18", (128, 256, 512)),
                                         ("resnet50", (512, 1024, 2048))])
def test_backbone_output_stride_8_and_torchvision_names(name, chans):
    import torchvision
    bb = DilatedResNet(name).eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 64, 96))
    assert [f[k].shape[1] for k in ("f3", "f4", "f5")] == list(chans)
    assert all(f[k].shape[-2:] == (8, 12) for k in f)
    tv = getattr(torchvision.models, name)(weights=None).state_dict()
    tv = {k: v for k, v in tv.items() if not k.startswith("fc.")}
    own = bb.state_dict()
    assert set(own) == set(tv)
    assert all(own[k].shape == tv[k].shape for k in own)


def test_backbone_loads_imagenet_state_dict_file(tmp_path):
    import torchvision
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(tv.state_dict(), path)
    bb = DilatedResNet("resnet18")
    unused = bb.load_imagenet(str(path))
    assert sorted(unused) == ["fc.bias", "fc.weight"]
    assert torch.equal(bb.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    with pytest.raises(ValueError, match="does not fit a resnet50"):
        DilatedResNet("resnet50").load_imagenet(str(path))
    with pytest.raises(ValueError, match="not found"):
        bb.load_imagenet(str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_shapes_finite(variant):
    model = make_tiny_model(variant=variant).train()
    out = model(_frames(h=50, w=66))  # not multiples of 8
    assert out["out"].shape == (2, 11, 50, 66)
    for v in out.values():
        assert v.shape == (2, 11, 50, 66)
        assert torch.isfinite(v).all()
    model.eval()
    with torch.no_grad():
        out = model(_frames(b=1, h=40, w=40))
    assert set(out) == {"out"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_reaches_every_parameter(variant):
    model = make_tiny_model(variant=variant).train()
    # Zero-initialised layers (offset heads, residual BN scales) pass no gradient upstream
    # at step 0 by design; perturb them so the test sees every path.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.01)
    out = model(_frames())
    target = torch.randint(0, 11, (2, 48, 64), generator=torch.Generator().manual_seed(1))
    losses = msaf_loss(out, target)
    assert torch.isfinite(losses["loss"])
    expected = {"loss_m", "loss"} | ({"loss_pd"} if "aux_pixel" in out else set()) \
        | ({"loss_rd"} if "aux_region" in out else set())
    assert set(losses) == expected
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []


def test_full_model_has_all_three_losses():
    out = make_tiny_model().train()(_frames())
    assert {"out", "aux_pixel", "aux_region"} <= set(out)


def test_temporal_input_matters_only_for_temporal_variants():
    x = _frames(b=1)
    y = x.clone()
    y[:, :2] = torch.randn_like(y[:, :2])  # change t-2 and t-1 only
    for variant, temporal in [("msaf", True), ("without_motion", False), ("state_only", False)]:
        m = make_tiny_model(variant=variant)
        with torch.no_grad():
            a, b = m(x)["out"], m(y)["out"]
        assert (not torch.allclose(a, b)) == temporal, variant


def test_history_grad_false_keeps_backbone_gradient():
    model = make_tiny_model().train()
    out = model(_frames(), history_grad=False)
    msaf_loss(out, torch.zeros(2, 48, 64, dtype=torch.long))["loss"].backward()
    assert model.backbone.conv1.weight.grad is not None


def test_bad_frames_shape_raises():
    with pytest.raises(ValueError, match=r"\(B, 3, 3, H, W\)"):
        make_tiny_model()(torch.randn(1, 2, 3, 32, 32))


def test_ignore_index_and_class_weights_in_loss():
    out = {"out": torch.randn(1, 11, 4, 4, requires_grad=True)}
    t = torch.full((1, 4, 4), 255)
    t[0, 0, 0] = 3
    l1 = msaf_loss(out, t)["loss"]
    ref = torch.nn.functional.cross_entropy(out["out"][:, :, 0, 0], torch.tensor([3]))
    assert torch.allclose(l1, ref)
    w = torch.ones(11)
    w[3] = 5
    assert torch.allclose(msaf_loss(out, t, class_weights=w)["loss"], ref)  # one pixel: weight cancels


def test_ohem_cross_entropy_keeps_the_hard_pixels():
    import torch.nn.functional as F
    from msaf_core.model import ohem_cross_entropy
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g) * 3
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :2] = 255
    ce = F.cross_entropy(logits, target, ignore_index=255)
    # a threshold above every probability keeps every labelled pixel: plain cross-entropy
    assert torch.allclose(ohem_cross_entropy(logits, target, thresh=1.01, min_kept=0.0), ce)
    # threshold 0: exactly the min_kept hardest pixels (lowest true-class probability)
    valid = target != 255
    per = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[valid]
    k = int(0.25 * int(valid.sum()))
    hardest = per.sort(descending=True).values[:k].mean()
    assert torch.allclose(ohem_cross_entropy(logits, target, thresh=0.0, min_kept=0.25), hardest)
    # class weights: the weighted mean over the kept pixels, as cross_entropy weighs them
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    assert torch.allclose(ohem_cross_entropy(logits, target, weight=w, thresh=1.01, min_kept=0.0),
                          F.cross_entropy(logits, target, weight=w, ignore_index=255))
    # nothing labelled: zero, with a gradient path
    none = torch.full_like(target, 255)
    z = ohem_cross_entropy(logits.requires_grad_(), none)
    assert float(z.detach()) == 0.0 and z.requires_grad
    # msaf_loss with ohem: every term an OHEM CE
    out = {"out": logits.detach(), "aux_pixel": logits.detach(), "aux_region": logits.detach()}
    terms = msaf_loss(out, target, ohem=(1.01, 0.0))
    assert torch.allclose(terms["loss"], 3 * ce)


def test_import_msaf_core_pulls_in_no_rclpy():
    code = ("import sys, msaf_core, msaf_core.tools.train, msaf_core.tools.evaluate; "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('rclpy','sensor_msgs','std_msgs')]; "
            "assert not bad, bad; print('clean')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout


@pytest.mark.parametrize("shape, groups", [((2, 16, 9, 11), 2), ((1, 32, 6, 5), 8), ((1, 8, 2, 3), 1)])
def test_fast_deformable_conv_equals_torchvision(shape, groups):
    from torchvision.ops import deform_conv2d
    from msaf_core.model import modulated_deform_conv
    g = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    off = (3 * torch.randn(b, 2 * groups * 9, h, w, generator=g, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(b, groups * 9, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(c, c, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    ref = deform_conv2d(x, off, wt, bias, padding=1, mask=mask)
    out = modulated_deform_conv(x, off, mask, wt, bias, groups)
    assert torch.allclose(out, ref, atol=1e-9)
    gr = torch.autograd.grad(ref.square().sum(), [x, wt, off])
    go = torch.autograd.grad(out.square().sum(), [x, wt, off])
    for a, b_ in zip(gr, go):
        assert torch.allclose(a, b_, atol=1e-7)


@pytest.mark.parametrize("length, query", [(3, 2), (4, 0), (3, 1)])
def test_single_query_block_equals_row_of_full_block(length, query):
    """The temporal transformer carries only frame t's token: that must be exactly the row
    of the full block's output (its query still attends to every token)."""
    from msaf_core.model import TransformerBlock
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, 2.0).double().eval()
    x = torch.randn(37, length, 16, dtype=torch.float64)
    full = block(x)
    one = block(x, query=query)
    assert one.shape == (37, 1, 16)
    assert torch.allclose(one[:, 0], full[:, query], atol=1e-12)
    # and the other tokens do influence it (it is not a per-token shortcut)
    y = x.clone()
    y[:, (query + 1) % length] = torch.randn(37, 16, dtype=torch.float64)
    assert not torch.allclose(block(y, query=query), one)


def test_motion_branch_output_equals_full_temporal_block():
    """ATT returns M^t computed with the single-query block; recompute it with the full
    three-token block and compare (float64)."""
    model = make_tiny_model().double().eval()
    att = model.att
    g = torch.Generator().manual_seed(3)
    d = model.cfg.dim
    maps = [torch.randn(2, d, 5, 7, generator=g, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        m_t = att(*maps)
        a2, a1 = att.align_tm2(maps[0], maps[2]), att.align_tm1(maps[1], maps[2])
        tok = torch.stack([a2, a1, maps[2]], dim=1).permute(0, 3, 4, 1, 2).reshape(-1, 3, d)
        ref = att.block(tok + att.time_embed)[:, 2].reshape(2, 5, 7, d).permute(0, 3, 1, 2)
    assert m_t.shape == (2, d, 5, 7)
    assert torch.allclose(m_t, ref, atol=1e-12)


def test_eval_output_is_class_innermost_and_matches_training_mode():
    """At inference the logits come with the class axis innermost (a fast argmax) and the
    pixel classifier (a training-only auxiliary for the full model) is skipped; neither
    changes the output."""
    model = make_tiny_model().double()
    x = _frames(b=1, h=40, w=56).double()
    with torch.no_grad():
        model.train()
        for mod in model.modules():  # batch-norm in eval statistics for a like-for-like check
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
        ref = model(x)["out"]
        model.eval()
        out = model(x)["out"]
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-10)
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_chunked_inference_equals_the_whole_tensor_path(monkeypatch):
    """At inference the transformer blocks and the deformable convolution run over chunks
    of pixels / queries / output rows (small temporaries). With chunks far smaller than the
    map, including ragged last chunks, the output must equal the training-style path that
    builds every tensor whole (float64)."""
    import msaf_core.model as M
    model = make_tiny_model().double().eval()
    x = _frames(b=2, h=72, w=88).double()          # 9×11 grid: 99 pixels per frame
    with torch.enable_grad():                       # the whole-tensor path (no chunks)
        ref = model(x)["out"].detach()
    monkeypatch.setattr(M, "INFER_CHUNK", 7)        # ragged: 99 = 14·7 + 1 pixels / queries
    monkeypatch.setattr(M, "DCN_CHUNK", 20)         # 1 output row (11 px) per block
    with torch.no_grad():
        out = model(x)["out"]
    assert torch.allclose(out, ref, atol=1e-10)


def test_inference_deformable_conv_equals_torchvision_across_row_blocks(monkeypatch):
    import msaf_core.model as M
    from torchvision.ops import deform_conv2d
    g = torch.Generator().manual_seed(1)
    b, c, h, w, groups = 2, 16, 7, 9, 4
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    off = 2 * torch.randn(b, 2 * groups * 9, h, w, generator=g, dtype=torch.float64)
    mask = torch.rand(b, groups * 9, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(c, c, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    ref = deform_conv2d(x, off, wt, bias, padding=1, mask=mask)
    for chunk in (1, 20, 10**6):                    # one row per block, 2 rows, whole map
        monkeypatch.setattr(M, "DCN_CHUNK", chunk)
        with torch.inference_mode():
            out = M.modulated_deform_conv(x, off, mask, wt, bias, groups)
        assert torch.allclose(out, ref, atol=1e-9), chunk


def _randomize_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_folded_batchnorm_equals_the_unfolded_network(backbone):
    """Every BatchNorm of the network follows a convolution; folding them all must leave the
    output unchanged (float64), with random running statistics and affine parameters."""
    import copy

    from msaf_core import MSAF
    from msaf_core.model import fold_batchnorm
    model = MSAF(MSAFConfig(backbone=backbone, dim=16, heads=2)).double().eval()
    _randomize_batchnorm(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == n_bn
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = _frames(b=2, h=40, w=56).double()
    with torch.no_grad():
        ref, out = model(x)["out"], folded(x)["out"]
    assert torch.allclose(out, ref, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(ref, torch.zeros_like(ref))


def test_fold_batchnorm_refuses_a_training_model():
    from msaf_core.model import fold_batchnorm
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(make_tiny_model().train())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_backbone_output_stride_16_is_torchvision_layer3_then_dilated_layer4(name):
    """At output stride 16, F3 stays at 1/8 and F4, F5 are at 1/16; F4 is exactly
    torchvision's (undilated, strided) layer3 on the same weights; switching back to 8
    restores the paper's network exactly."""
    import torchvision
    bb = DilatedResNet(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        f8 = bb(x)
        bb.set_output_stride(16)
        f16 = bb(x)
    assert f16["f3"].shape[-2:] == (8, 12)
    assert f16["f4"].shape[-2:] == f16["f5"].shape[-2:] == (4, 6)
    tv = getattr(torchvision.models, name)(weights=None).eval()
    tv.load_state_dict({**bb.state_dict(), **{k: v for k, v in tv.state_dict().items()
                                              if k.startswith("fc.")}})
    with torch.no_grad():
        ref = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
    assert torch.allclose(f16["f4"], ref, atol=1e-5)
    with torch.no_grad():
        bb.set_output_stride(8)
        again = bb(x)
    assert all(torch.equal(again[k], f8[k]) for k in f8)
    with pytest.raises(ValueError, match="output_stride"):
        bb.set_output_stride(32)


def test_msaf_at_output_stride_16_runs_on_the_1_16_grid():
    from msaf_core.model import DeformableAlign
    model = make_tiny_model()
    frames = torch.randn(1, 3, 3, 90, 120)
    with torch.no_grad():
        out8 = model(frames)["out"]
        model.set_output_stride(16)
        feats = model.extract(frames[:, 2])
        out16 = model(frames)["out"]
    assert model.cfg.output_stride == 16
    assert {k: tuple(v.shape[-2:]) for k, v in feats.items()} == {
        "x": (6, 8), "f3": (6, 8), "f4": (6, 8)}
    assert out16.shape == out8.shape == (1, 11, 90, 120) and torch.isfinite(out16).all()
    assert not torch.allclose(out16, out8)
    aligns = [m for m in model.modules() if isinstance(m, DeformableAlign)]
    assert aligns and all(m.offset_scale == 0.5 for m in aligns)
    # a model built at 16 is the same network as one switched to 16
    built = make_tiny_model(output_stride=16)
    built.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(built(frames)["out"], out16)
    # the predicted offsets are halved at 16: an offset net predicting 2v there samples
    # where one predicting v samples at 8 (offsets are in 1/8 grid units)
    align = aligns[0]
    n_off = 2 * align.groups * align.k * align.k
    nb, cur = torch.randn(1, 16, 6, 8), torch.randn(1, 16, 6, 8)

    def run(v, scale):
        with torch.no_grad():
            align.offset_net[-1].weight.zero_()
            align.offset_net[-1].bias.zero_()
            align.offset_net[-1].bias[:n_off] = v
        align.offset_scale = scale
        with torch.no_grad():
            return align(nb, cur)
    assert torch.allclose(run(1.4, 0.5), run(0.7, 1.0), atol=1e-6)
    assert not torch.allclose(run(1.4, 1.0), run(0.7, 1.0), atol=1e-3)
    model.set_output_stride(8)
    assert model.cfg.output_stride == 8 and all(m.offset_scale == 1.0 for m in aligns)


def test_output_stride_config():
    assert MSAFConfig().output_stride == 8
    assert MSAFConfig.from_dict(MSAFConfig(output_stride=16).to_dict()).output_stride == 16
    with pytest.raises(ValueError, match="output_stride"):
        MSAFConfig(output_stride=32)
