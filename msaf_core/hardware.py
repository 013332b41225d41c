"""What the CPU is, for the record of every figure: model name, family, and the vector and
matrix units that decide which precision pays (AVX2, AVX-512, AVX-512 BF16, AMX).

Machines that run this project differ (AVX2-only, AVX-512 with BF16, AMX), and the same
model runs several times faster on some: benchmarks and training records name the CPU with
:func:`cpu_description`, and bf16 autocast is only chosen where :func:`cpu_has_bf16`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Dict, Set


def _cpuinfo() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    out: Dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def cpu_flags() -> Set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def isa_summary(flags: Set[str]) -> str:
    """The units that matter for inference speed, e.g. ``AVX-512 + AVX-512 BF16, no AMX``."""
    if "amx_bf16" in flags or "amx_tile" in flags:
        units = "AVX-512 + AMX (bf16, int8)" if "avx512f" in flags else "AMX"
    elif "avx512f" in flags:
        extra = [n for f, n in (("avx512_bf16", "BF16"), ("avx512_vnni", "VNNI")) if f in flags]
        units = "AVX-512" + (f" ({', '.join(extra)})" if extra else "") + ", no AMX"
    elif "avx2" in flags:
        units = "AVX2 only (no AVX-512, no AMX)"
    else:
        units = "no AVX2"
    return units


#: environment variables that cap the instruction set the kernels use (oneDNN: torch's and
#: OpenVINO's convolutions; ATen: torch's own kernels), e.g. to run AVX2-only kernels on a
#: newer CPU
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def cpu_description() -> str:
    """e.g. ``AMD EPYC (family 26 model 2), 2 CPUs, AVX-512 (BF16, VNNI), no AMX``, and the
    instruction-set caps in force (``; kernels capped: ONEDNN_MAX_CPU_ISA=AVX2``)."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    fam = (f" (family {info['cpu family']} model {info['model']})"
           if "cpu family" in info and "model" in info else "")
    caps = [f"{k}={os.environ[k]}" for k in ISA_CAPS if os.environ.get(k)]
    return (f"{name}{fam}, {os.cpu_count()} CPUs, {isa_summary(set(info.get('flags', '').split()))}"
            + (f"; kernels capped: {', '.join(caps)}" if caps else ""))
