"""The MSAF network (Su et al., "Motion-state Alignment for Video Semantic Segmentation", §3).

Data flow for one clip (frames t-2, t-1, t), with d = ``cfg.dim`` and (h, w) = (H/8, W/8)::

    frame (B,3,H,W) ──backbone──► F3 (B,C3,h,w), F4 (B,C4,h,w), F5 (B,C5,h,w)   [one pass/frame]
    F5 ──reduce (1×1 conv)──► X (B,d,h,w)                                      [cached per frame]

    Motion alignment (decoupled transformer)
      PST:  D^{t-2} = US×4(MHSA(DS×4 X^{t-2})),  D^{t-1} = US×2(MHSA(DS×2 X^{t-1})),
            D^t = MHSA(X^t)                                                    (B,d,h,w) each
      ATT:  A^{t-k} = DCN^{t-k}(D^{t-k}; offsets from [D^{t-k}, D^t])          (B,d,h,w)
            [A^{t-2}, A^{t-1}, D^t] per pixel ──MHSA over 3 tokens──► M^{t-2}, M^{t-1}, M^t

    State alignment:  [P3(F3), P4(F4), X^t, M^t] per pixel ──MHSA over 4 tokens──► (B,4d,h,w)
                      ──conv3×3, conv1×1──► pixel descriptors P (B,d,h,w)
                      ──1×1 classifier──► pixel logits (L_pd)

    Semantic assignment: M^t ──conv3×3, conv1×1──► region logits M^t' (B,K,h,w)  (L_rd)
                      R_k = Σ_p softmax_p(M^t'_k) · M^t_p, then a linear map  (B,K,d)
                      logits_k = s · cos(P, R_k)                                (B,K,h,w)  (L_M)

All logits are bilinearly upsampled to the input size. See docs/design.md for the readings of
the paper chosen where it is vague.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from .backbone import DilatedResNet
from .config import MSAFConfig


#: Rows (pixels, or queries of a long sequence) per chunk of the transformer blocks at
#: inference on the CPU (where cache-sized temporaries pay; a GPU gets whole tensors);
#: see ``per_pixel_block`` and ``TransformerBlock._forward_query_chunks``.
INFER_CHUNK = 1024
#: Output pixels per block of the deformable convolution at inference on the CPU.
DCN_CHUNK = 512


def _no_timer(name: str) -> ContextManager:
    return contextlib.nullcontext()


def exporting() -> bool:
    """True while ``torch.onnx.export`` or ``torch.export`` traces the model. The CPU
    inference loops below (chunks sized by Python integers) then give way to their
    whole-tensor form, which computes the same values and exports with dynamic sizes."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def _cpu_chunks(x: Tensor) -> bool:
    """Whether inference on ``x`` takes the chunked CPU path (no gradients, CPU, eager)."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and not exporting()


# -------------------------------------------------------------------------------------------
# Building blocks
# -------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head scaled dot-product self-attention over a token axis.

    ``query`` (a slice of the token axis) computes the output of those tokens only: their
    queries against the keys and values of all tokens. The result equals those
    rows of the full attention; the motion branch uses it because only M^t of the temporal
    transformer is ever consumed.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def queries(self, x: Tensor) -> Tensor:
        """(N, Lq, d) tokens → their queries (N, heads, Lq, d/heads)."""
        n, _, d = x.shape
        q = F.linear(x, self.qkv.weight[:d], self.qkv.bias[:d])
        return q.reshape(n, -1, self.heads, d // self.heads).transpose(1, 2)

    def keys_values(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, L, d) tokens → keys and values, each (N, heads, L, d/heads)."""
        n, length, d = x.shape
        kv = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:])
        return kv.reshape(n, length, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Queries against keys/values, then the output projection: → (N, Lq, d)."""
        y = F.scaled_dot_product_attention(q, k, v)                   # (N, heads, Lq, d/heads)
        n, _, lq, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(n, lq, -1))

    def forward(self, x: Tensor, query: Optional[slice] = None) -> Tensor:  # x (N, L, d)
        if query is None:
            n, length, d = x.shape
            qkv = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)             # (N, heads, L, d/heads)
        else:
            q = self.queries(x[:, query])
            k, v = self.keys_values(x)
        return self.attend(q, k, v)


class TransformerBlock(nn.Module):
    """Pre-LN block of Eq. (3): X' = Attn(LN(X)) + X;  Y = MLP(LN(X')) + X'.

    ``query`` (an index or a slice) returns only those tokens' outputs, (N, Lq, d), computed
    exactly (their attention still reads every token); the other rows and MLPs are skipped.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = max(8, int(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, query: Union[int, slice, None] = None) -> Tensor:  # (N, L, d)
        if query is None and x.shape[1] > INFER_CHUNK and _cpu_chunks(x):
            return self._forward_query_chunks(x)
        # The residual sums are accumulated into the fresh outputs of the attention and the
        # MLP (their backward does not need them): fewer large temporaries per call.
        if query is None:
            x = self.attn(self.norm1(x)).add_(x)
        else:
            sel = slice(query, query + 1) if isinstance(query, int) else query
            x = self.attn(self.norm1(x), sel).add_(x[:, sel])
        return self.mlp(self.norm2(x)).add_(x)

    def _forward_query_chunks(self, x: Tensor) -> Tensor:
        """Inference over a long sequence (PST's h·w tokens): keys and values once, then
        the queries ``INFER_CHUNK`` at a time through attention, projection, residuals and
        MLP. Every row is computed exactly as in :meth:`forward`, but the per-token
        temporaries stay small (cache-resident, no fresh pages per call)."""
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        k, v = k.contiguous(), v.contiguous()                       # read by every chunk
        out = torch.empty_like(x)
        for s in range(0, x.shape[1], INFER_CHUNK):
            rows = slice(s, s + INFER_CHUNK)
            xc = self.attn.attend(self.attn.queries(h[:, rows]), k, v).add_(x[:, rows])
            out[:, rows] = self.mlp(self.norm2(xc)).add_(xc)
        return out


def pixel_rows(z: Tensor) -> Tensor:
    """(B, d, h, w) → (B·h·w, d), one row per pixel (a view when z is channels_last)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def per_pixel_block(block: TransformerBlock, maps: Sequence[Tensor], embed: Tensor,
                    query: Optional[int] = None) -> Tensor:
    """Run ``block`` over the tokens ``[maps[0][p], maps[1][p], ...] + embed`` of every pixel
    p: n × (B, d, h, w) → (B·h·w, Lq·d) rows (Lq = 1 with ``query``, else n).

    With gradients (training) the token tensor is built whole; at inference the pixels go
    ``INFER_CHUNK`` at a time into one preallocated output (each pixel is independent, so
    the result is the same; the temporaries stay small and cache-resident)."""
    rows = [pixel_rows(z) for z in maps]
    n_pix, d = rows[0].shape
    if not _cpu_chunks(rows[0]):  # training, GPUs (they prefer whole tensors), export
        y = block(torch.stack(rows, dim=1) + embed, query=query)
        return y.reshape(n_pix, -1)
    lq = 1 if query is not None else len(rows)
    out = rows[0].new_empty(n_pix, lq * d)
    for s in range(0, n_pix, INFER_CHUNK):
        x = torch.stack([r[s:s + INFER_CHUNK] for r in rows], dim=1).add_(embed)
        out[s:s + INFER_CHUNK] = block(x, query=query).reshape(x.shape[0], lq * d)
    return out


def sincos_pos_2d(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed 2-D sine-cosine position code (h*w, dim): no parameters, any grid size."""
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * omega  # (h, q)
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * omega  # (w, q)
    pe = torch.zeros(h, w, dim, device=device, dtype=torch.float32)
    pe[:, :, 0:quarter] = ys.sin()[:, None, :]
    pe[:, :, quarter:2 * quarter] = ys.cos()[:, None, :]
    pe[:, :, 2 * quarter:3 * quarter] = xs.sin()[None, :, :]
    pe[:, :, 3 * quarter:4 * quarter] = xs.cos()[None, :, :]
    return pe.reshape(h * w, dim).to(dtype)


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)          # (O,)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every inference-mode BatchNorm2d that directly follows a Conv2d into that
    convolution (W' = W·γ/σ, b' = (b − μ)·γ/σ + β) and replace it by ``nn.Identity``.

    In place; the model must be in eval mode, and afterwards it is for inference only (the
    batch statistics are gone). The result equals the unfolded network up to rounding (tested
    in float64); on the CPU a frame runs about 2–4% faster (interleaved A/B, docs/benchmarks.md),
    the per-channel affine pass after each convolution being an extra read and write of its
    output.

    Pairs folded: consecutive ``Conv2d → BatchNorm2d`` children of an ``nn.Sequential`` (the
    heads' ``conv_bn_relu``, the backbone's down-sampling branches) and the ``convN``/``bnN``
    pairs of the dilated ResNet's stem and residual blocks, whose forward applies ``bnN``
    directly to ``convN``'s output. Returns the number of layers folded."""
    from .backbone import BasicBlock, Bottleneck, DilatedResNet
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm running stats)")
    n = 0
    for mod in list(model.modules()):
        if isinstance(mod, nn.Sequential):
            items = list(mod._modules.items())
            for (_, a), (kb, b) in zip(items, items[1:]):
                if isinstance(a, nn.Conv2d) and type(b) is nn.BatchNorm2d:
                    _fold_into(a, b)
                    mod._modules[kb] = nn.Identity()
                    n += 1
        elif isinstance(mod, (BasicBlock, Bottleneck, DilatedResNet)):
            for name, child in list(mod._modules.items()):
                conv = mod._modules.get("conv" + name[2:]) if name.startswith("bn") else None
                if type(child) is nn.BatchNorm2d and isinstance(conv, nn.Conv2d):
                    _fold_into(conv, child)
                    mod._modules[name] = nn.Identity()
                    n += 1
    return n


# -------------------------------------------------------------------------------------------
# Motion alignment: the decoupled transformer
# -------------------------------------------------------------------------------------------
class PyramidSpatialTransformer(nn.Module):
    """PST, Eq. (2): per-frame spatial MHSA, frame t-2 pooled ×4, t-1 ×2, t at full size.

    Each frame role has its own block (the paper writes MHSA^{t-2}, MHSA^{t-1}, MHSA^t).
    Down-sampling is average pooling, up-sampling bilinear back to the input grid.
    """

    ROLES = ("t-2", "t-1", "t")

    def __init__(self, cfg: MSAFConfig, roles: Sequence[str] = ROLES) -> None:
        super().__init__()
        self.pool = dict(zip(self.ROLES, cfg.pst_pool))
        self.blocks = nn.ModuleDict(
            {r.replace("-", "m"): TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio)
             for r in roles})

    def forward(self, x: Tensor, role: str) -> Tensor:  # x (B, d, h, w) → (B, d, h, w)
        b, d, h, w = x.shape
        p = self.pool[role]
        y = F.avg_pool2d(x, p, p, ceil_mode=True) if p > 1 else x  # DS: (B, d, h/p, w/p)
        hh, ww = y.shape[-2:]
        tokens = y.flatten(2).transpose(1, 2) + sincos_pos_2d(hh, ww, d, x.device, x.dtype)
        tokens = self.blocks[role.replace("-", "m")](tokens)        # MHSA_spa: (B, hh*ww, d)
        y = tokens.transpose(1, 2).reshape(b, d, hh, ww)
        if p > 1:                                                   # US back to (h, w)
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return y


class DeformableAlign(nn.Module):
    """Eq. (5): modulated deformable convolution (K×K) that aligns a neighbour frame to t.

    Offsets and modulation masks are predicted from ``cat[neighbour, current]`` by a small
    conv stack whose last layer starts at zero (EDVR), so alignment starts as a plain conv.
    """

    def __init__(self, dim: int, k: int, groups: int) -> None:
        super().__init__()
        self.k, self.groups = k, groups
        #: grid cells of output stride 8 per cell of this grid: offsets are predicted in 1/8
        #: grid units, so that they mean the same image motion at output stride 16 (× 0.5)
        self.offset_scale = 1.0
        self.offset_net = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(dim, 3 * groups * k * k, 3, padding=1))
        nn.init.zeros_(self.offset_net[-1].weight)
        nn.init.zeros_(self.offset_net[-1].bias)
        self.weight = nn.Parameter(torch.empty(dim, dim, k, k))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, neighbour: Tensor, current: Tensor) -> Tensor:  # (B, d, h, w) each
        om = self.offset_net(torch.cat([neighbour, current], dim=1))  # (B, 3*g*k*k, h, w)
        n_off = 2 * self.groups * self.k * self.k
        offset, mask = om[:, :n_off], om[:, n_off:].sigmoid()
        if self.offset_scale != 1.0:
            offset = offset * self.offset_scale
        h, w = neighbour.shape[-2:]
        if h > 1 and w > 1:
            return modulated_deform_conv(neighbour, offset, mask, self.weight, self.bias, self.groups)
        dtype = neighbour.dtype  # degenerate 1-pixel grids: torchvision's reference kernel
        if dtype in (torch.float16, torch.bfloat16) and neighbour.device.type == "cpu":
            dtype = torch.float32  # torchvision's CPU kernel has no reduced-precision path
        y = deform_conv2d(neighbour.to(dtype), offset.to(dtype), self.weight.to(dtype),
                          self.bias.to(dtype), padding=self.k // 2, mask=mask.to(dtype))
        return y.to(neighbour.dtype)


def modulated_deform_conv(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor,
                          groups: int) -> Tensor:
    """Same result as ``torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=k//2,
    mask=mask)`` (stride 1, dilation 1, ``groups`` offset groups), computed as one batched
    bilinear ``grid_sample`` of all k×k taps and one matrix product. On CPU it runs about 3×
    faster forward and 7× faster forward+backward than torchvision's kernel (see
    docs/benchmarks.md); the tests check it against torchvision.

    x (B, C, H, W); offset (B, 2·g·k·k, H, W) laid out [group][tap][(dy, dx)];
    mask (B, g·k·k, H, W); weight (O, C, k, k) → (B, O, H, W). Needs H, W > 1.
    """
    b, c, h, w = x.shape
    o, _, k, _ = weight.shape
    kk, g = k * k, groups
    off = offset.view(b, g, kk, 2, h, w)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    ky, kx = torch.meshgrid(r, r, indexing="ij")                       # tap offsets (k, k)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, 1, w)
    py = ys + ky.reshape(1, 1, kk, 1, 1) + off[:, :, :, 0]            # (B, g, kk, H, W)
    px = xs + kx.reshape(1, 1, kk, 1, 1) + off[:, :, :, 1]
    grid = torch.stack([px * (2.0 / (w - 1)) - 1.0, py * (2.0 / (h - 1)) - 1.0], dim=-1)
    xg = x.reshape(b * g, c // g, h, w)
    wm = weight.reshape(o, c * kk)
    if x.device.type != "cpu" or exporting() or (torch.is_grad_enabled() and (
            x.requires_grad or offset.requires_grad or mask.requires_grad or weight.requires_grad)):
        samp = F.grid_sample(xg, grid.view(b * g, kk * h, w, 2), mode="bilinear",
                             padding_mode="zeros", align_corners=True)
        samp = samp.view(b, g, c // g, kk, h, w) * mask.view(b, g, 1, kk, h, w)
        out = torch.matmul(wm, samp.reshape(b, c * kk, h * w))
        return out.view(b, o, h, w) + bias.view(1, o, 1, 1)
    # Inference: the same computation over blocks of output rows, so that the 9·C samples
    # of a block (not of the whole map) are the temporary, modulated in place.
    out = torch.empty(b, o, h, w, device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last)
    mask = mask.view(b, g, 1, kk, h, w)
    rows = max(1, DCN_CHUNK // w)
    for r0 in range(0, h, rows):
        hc = min(rows, h - r0)
        gc = grid[:, :, :, r0:r0 + hc].reshape(b * g, kk * hc, w, 2)
        samp = F.grid_sample(xg, gc, mode="bilinear", padding_mode="zeros", align_corners=True)
        samp = samp.view(b, g, c // g, kk, hc, w).mul_(mask[:, :, :, :, r0:r0 + hc])
        oc = torch.matmul(wm, samp.view(b, c * kk, hc * w)).view(b, o, hc, w)
        out[:, :, r0:r0 + hc] = oc
    return out.add_(bias.view(1, o, 1, 1))


class AlignedTemporalTransformer(nn.Module):
    """ATT, Eq. (6): DCN-align t-2 and t-1 to t, then MHSA across the 3 frames at each pixel."""

    def __init__(self, cfg: MSAFConfig) -> None:
        super().__init__()
        self.use_dcn = cfg.uses_dcn
        if self.use_dcn:
            self.align_tm2 = DeformableAlign(cfg.dim, cfg.dcn_kernel, cfg.dcn_groups)
            self.align_tm1 = DeformableAlign(cfg.dim, cfg.dcn_kernel, cfg.dcn_groups)
        self.time_embed = nn.Parameter(torch.zeros(3, cfg.dim))
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        self.block = TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio)

    def forward(self, d_tm2: Tensor, d_tm1: Tensor, d_t: Tensor) -> Tensor:
        """Three (B, d, h, w) maps → M^t (B, d, h, w). The network consumes only M^t, so only
        frame t's token is carried through the block (its query attends to all three frames);
        M^{t-2} and M^{t-1} would be computed and thrown away."""
        if self.use_dcn:
            d_tm2 = self.align_tm2(d_tm2, d_t)
            d_tm1 = self.align_tm1(d_tm1, d_t)
        b, d, h, w = d_t.shape
        m = per_pixel_block(self.block, (d_tm2, d_tm1, d_t), self.time_embed, query=2)  # MHSA_tem
        return m.view(b, h, w, d).permute(0, 3, 1, 2)                 # M^t (B, d, h, w)


class StageTransformer(nn.Module):
    """S-Transformer, Eq. (9): MHSA across stage tokens at each pixel, then two convs → P."""

    def __init__(self, cfg: MSAFConfig, n_tokens: int) -> None:
        super().__init__()
        self.n = n_tokens
        self.stage_embed = nn.Parameter(torch.zeros(n_tokens, cfg.dim))
        nn.init.trunc_normal_(self.stage_embed, std=0.02)
        self.block = TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio)

    def forward(self, tokens: Sequence[Tensor]) -> Tensor:  # n × (B, d, h, w) → (B, n*d, h, w)
        b, d, h, w = tokens[0].shape
        x = per_pixel_block(self.block, tokens, self.stage_embed)      # MHSA_sta: (B·h·w, n·d)
        return x.view(b, h, w, self.n * d).permute(0, 3, 1, 2)


# -------------------------------------------------------------------------------------------
# The network
# -------------------------------------------------------------------------------------------
class MSAF(nn.Module):
    """Motion-state alignment network.

    Forward contract
    ----------------
    ``forward(frames)``: ``frames`` float32 (B, 3, 3, H, W) = (batch, time, channel, H, W),
    time ordered oldest to newest (t-2, t-1, t), channels RGB in [0, 1] then normalised with
    ``cfg.mean`` / ``cfg.std``. H and W need not be multiples of 8. Returns a dict:

    - ``'out'``: (B, K, H, W) logits of frame t at input resolution (argmax = prediction);
    - in training mode also the auxiliary logits at input resolution that the losses
      supervise: ``'aux_pixel'`` (pixel-descriptor classifier, L_pd) and ``'aux_region'``
      (soft region mask M^t', L_rd), where the variant has them.

    ``extract(frame)`` is the single backbone pass of one frame; ``head(x_tm2, x_tm1, cur)``
    runs everything after it. ``forward`` is exactly ``head`` over three ``extract`` calls,
    which is what the streaming :class:`~msaf_core.Segmenter` relies on.
    """

    def __init__(self, cfg: MSAFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        #: optional ``name -> context manager`` wrapped around each stage of ``head``
        self.stage_timer: Optional[Callable[[str], ContextManager]] = None
        d, k = cfg.dim, cfg.num_classes
        self.backbone = DilatedResNet(cfg.backbone, cfg.output_stride)
        ch = self.backbone.channels
        self.reduce = conv_bn_relu(ch["f5"], d, 1)  # X = reduce(F5): what frames share in time
        if cfg.uses_motion:
            self.pst = PyramidSpatialTransformer(cfg)
        elif cfg.variant == "without_motion":  # frame t's spatial block only: no time
            self.pst = PyramidSpatialTransformer(cfg, roles=("t",))
        if cfg.uses_motion:
            self.att = AlignedTemporalTransformer(cfg)
        has_m = cfg.variant != "state_only"
        if cfg.uses_state or cfg.variant == "without_state":
            self.proj3 = conv_bn_relu(ch["f3"], d, 1)
            self.proj4 = conv_bn_relu(ch["f4"], d, 1)
            n_tok = 4 if has_m else 3
            if cfg.uses_state:
                self.stage = StageTransformer(cfg, n_tok)
            self.pixel_desc = nn.Sequential(conv_bn_relu(n_tok * d, d, 3), nn.Conv2d(d, d, 1))
            self.pixel_cls = nn.Conv2d(d, k, 1)
        if has_m:
            self.region_head = nn.Sequential(conv_bn_relu(d, d, 3), nn.Conv2d(d, k, 1))
        if cfg.uses_assignment:
            self.region_proj = nn.Linear(d, d)
            self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale)))
        self.set_output_stride(cfg.output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at output stride 8 or 16 (``cfg.output_stride`` follows).

        At 16 the backbone's F4/F5 and the whole head are on the 1/16 grid (F3 is average-
        pooled onto it) and the deformable offsets are halved, so they keep meaning the same
        image motion. Weights trained at one stride lose accuracy at the other unless trained
        at both (``msaf-train --output-strides 8 16``)."""
        self.backbone.set_output_stride(output_stride)
        self.cfg = self.cfg.replace(output_stride=output_stride)
        for m in self.modules():
            if isinstance(m, DeformableAlign):
                m.offset_scale = 8.0 / output_stride

    # -- one backbone pass --------------------------------------------------------------------
    def extract(self, frame: Tensor) -> Dict[str, Tensor]:
        """frame (B, 3, H, W) → {'x': reduce(F5) (B, d, h, w), 'f3', 'f4'} (F3/F4 only if used),
        all on the backbone's grid (1/8, or 1/16 at output stride 16)."""
        f = self.backbone(frame)
        out = {"x": self.reduce(f["f5"])}
        if hasattr(self, "proj3"):
            f3 = f["f3"]
            if f3.shape[-2:] != f["f4"].shape[-2:]:  # output stride 16: F3 onto F4's grid
                f3 = F.avg_pool2d(f3, 2, 2, ceil_mode=True)
            out["f3"], out["f4"] = f3, f["f4"]
        return out

    # -- everything after the backbone --------------------------------------------------------
    def head(self, x_tm2: Optional[Tensor], x_tm1: Optional[Tensor], cur: Dict[str, Tensor],
             out_size: Optional[Tuple[int, int]]) -> Dict[str, Tensor]:
        """Everything after the backbone: logits upsampled to ``out_size`` (H, W), or left on
        the backbone's grid when ``out_size`` is None (the exported head; the caller upsamples)."""
        cfg = self.cfg
        timed = self.stage_timer or _no_timer  # benchmarks time the stages through this
        x_t = cur["x"]                                                  # (B, d, h, w)
        m_t: Optional[Tensor] = None
        if cfg.uses_motion:
            assert x_tm2 is not None and x_tm1 is not None
            with timed("pst"):
                d_t = self.pst(x_t, "t")
                d_tm1 = self.pst(x_tm1, "t-1")
                d_tm2 = self.pst(x_tm2, "t-2")
            with timed("att"):
                m_t = self.att(d_tm2, d_tm1, d_t)                       # M^t (B, d, h, w)
        elif cfg.variant == "without_motion":
            with timed("pst"):
                m_t = self.pst(x_t, "t")                                # spatial only, no time

        res: Dict[str, Tensor] = {}
        pixel_logits = region_logits = p = None
        with timed("state"):
            if hasattr(self, "pixel_desc"):
                toks = [self.proj3(cur["f3"]), self.proj4(cur["f4"]), x_t]
                if m_t is not None:
                    toks.append(m_t)
                s = self.stage(toks) if cfg.uses_state else torch.cat(toks, dim=1)  # (B, n*d, h, w)
                p = self.pixel_desc(s)                                  # P (B, d, h, w)
                if self.training or not cfg.uses_assignment:    # L_pd, or the output
                    pixel_logits = self.pixel_cls(p)                    # (B, K, h, w)

        with timed("assignment"):
            if m_t is not None:
                region_logits = self.region_head(m_t)                   # M^t' (B, K, h, w)
            if cfg.uses_assignment:
                assert p is not None and region_logits is not None and m_t is not None
                b, d, h, w = m_t.shape
                attn = region_logits.flatten(2).softmax(dim=-1)         # (B, K, h*w)
                regions = attn @ m_t.flatten(2).transpose(1, 2)         # R (B, K, d)
                regions = F.normalize(self.region_proj(regions), dim=-1)
                pix = F.normalize(p, dim=1).permute(0, 2, 3, 1).reshape(b, h * w, d)
                logits = (pix @ regions.transpose(1, 2)) * self.log_scale.exp()  # (B, h*w, K)
                # class axis innermost (channels_last): the upsampling keeps that layout and
                # the per-pixel argmax then reads K contiguous values instead of K planes
                logits = logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B, K, h, w)
            elif cfg.variant == "without_semantics":
                logits = 0.5 * (pixel_logits + region_logits)
            elif cfg.variant == "motion_only":
                logits = region_logits
            else:  # state_only
                logits = pixel_logits

        def up(z: Tensor) -> Tensor:
            if out_size is None:
                return z
            return F.interpolate(z, size=out_size, mode="bilinear", align_corners=False)

        with timed("upsample"):
            res["out"] = up(logits)
        if self.training:
            if pixel_logits is not None and logits is not pixel_logits:
                res["aux_pixel"] = up(pixel_logits)
            if region_logits is not None and logits is not region_logits:
                res["aux_region"] = up(region_logits)
        return res

    def forward(self, frames: Tensor, history_grad: bool = True,
                out_size: Optional[Tuple[int, int]] = None) -> Dict[str, Tensor]:
        """See the class docstring. ``history_grad=False`` runs the backbone of t-2 and t-1
        without gradient (a training economy: the shared backbone still learns from frame t).
        ``out_size`` (H', W') returns the logits at that size instead of the input's."""
        if frames.dim() != 5 or frames.shape[1] != 3 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, 3, 3, H, W), got {tuple(frames.shape)}")
        h, w = out_size if out_size is not None else frames.shape[-2:]
        cur = self.extract(frames[:, 2])
        x_tm2 = x_tm1 = None
        if self.cfg.temporal:
            with torch.set_grad_enabled(torch.is_grad_enabled() and history_grad):
                x_tm1 = self.extract(frames[:, 1])["x"]
                x_tm2 = self.extract(frames[:, 0])["x"]
        return self.head(x_tm2, x_tm1, cur, (h, w))


def ohem_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255,
                       weight: Optional[Tensor] = None, thresh: float = 0.7,
                       min_kept: float = 0.1) -> Tensor:
    """Online hard example mining cross-entropy (bootstrapped CE; mmseg's OHEM sampler).

    Only the pixels whose probability of the true class is below ``thresh`` count; where
    fewer than ``min_kept`` (a fraction of the labelled pixels) are that hard, the
    ``min_kept`` hardest count. Easy pixels of big classes (sky, road) then stop drowning
    the thin and rare ones. logits (B, K, H, W), target (B, H, W) int64 → scalar.
    """
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                         reduction="none")                                  # (B, H, W)
    valid = target != ignore_index
    n = int(valid.sum())
    if n == 0:
        return ce.sum() * 0.0
    with torch.no_grad():
        t = target.clone()
        t[~valid] = 0
        prob = logits.detach().softmax(1).gather(1, t[:, None])[:, 0]      # (B, H, W)
        pv = prob[valid]
        k = min(n, max(1, int(min_kept * n)))
        kth = torch.kthvalue(pv, k).values
        keep = valid & (prob <= max(thresh, float(kth)))
    if weight is None:
        return ce[keep].mean()
    return ce[keep].sum() / weight[target[keep]].sum().clamp_min(1e-12)


def msaf_loss(outputs: Dict[str, Tensor], target: Tensor, ignore_index: int = 255,
              class_weights: Optional[Tensor] = None,
              ohem: Optional[Tuple[float, float]] = None) -> Dict[str, Tensor]:
    """Eq. (15): L_M + L_pd + L_rd, each a cross-entropy with ``ignore_index``.

    ``target`` (B, H, W) int64. ``ohem`` = (threshold, min_kept fraction) makes each term
    an :func:`ohem_cross_entropy`. Returns the terms and their sum under ``'loss'``.
    """
    terms = {"loss_m": outputs["out"]}
    if "aux_pixel" in outputs:
        terms["loss_pd"] = outputs["aux_pixel"]
    if "aux_region" in outputs:
        terms["loss_rd"] = outputs["aux_region"]
    if ohem is None:
        losses = {k: F.cross_entropy(v.float(), target, weight=class_weights,
                                     ignore_index=ignore_index) for k, v in terms.items()}
    else:
        losses = {k: ohem_cross_entropy(v.float(), target, ignore_index, class_weights, *ohem)
                  for k, v in terms.items()}
    losses["loss"] = sum(losses.values())  # type: ignore[assignment]
    return losses
