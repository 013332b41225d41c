"""TensorRT: engines built from the ONNX pair, and the engine the Segmenter runs them on.

Imported only when ``backend='tensorrt'`` or ``msaf-export --format tensorrt`` asks for it;
needs a CUDA GPU, torch with CUDA, and TensorRT's Python package (docs/deploy.md).

``build_engines`` parses ``encoder.onnx`` and ``head.onnx`` of an export (or exports a
checkpoint first) and serialises one engine per graph, ``encoder_fp16.plan`` and
``head_fp16.plan`` (or ``_fp32``), with one optimisation profile over frame sizes from
64×64 to 1920×1088 (tuned for 1024×512). The engine binds torch CUDA tensors directly, so
the features and the stream cache stay on the GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .backends import BackendError, Engine, import_backend, resolve_export
from .export import config_stride, export_checkpoint, read_record, write_record

#: (min, opt, max) frame sizes (H, W) of the optimisation profile
PROFILE = ((64, 64), (512, 1024), (1088, 1920))


def _grid(hw: Tuple[int, int], stride: int = 8) -> Tuple[int, int]:
    return -(-hw[0] // stride), -(-hw[1] // stride)


def _build(trt: Any, onnx_path: Path, fp16: bool, stride: int = 8) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        c = inp.shape[1]
        sizes = PROFILE if inp.name == "frame" else tuple(_grid(s, stride) for s in PROFILE)
        profile.set_shape(inp.name, *[(1, c, h, w) for h, w in sizes])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT could not build an engine from {onnx_path} (see its log)")
    return bytes(plan)


def build_engines(source: Union[str, Path], out_dir: Union[str, Path],
                  fp16: bool = True, output_stride: Optional[int] = None) -> Dict[str, Any]:
    """TensorRT engines of an ONNX export folder or a checkpoint, written into ``out_dir``
    beside the ONNX pair and the record. A checkpoint is exported at ``output_stride``
    (default: its own); a folder exported at another stride is refused."""
    trt = import_backend("tensorrt")
    src, out = Path(source), Path(out_dir)
    if src.is_dir():
        resolve_export(src, output_stride)          # an export folder, at the stride asked
        if src.resolve() != out.resolve():
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(src, out)
    else:
        export_checkpoint(src, out, "onnx", output_stride)
    rec = read_record(out)
    prec = "fp16" if fp16 else "fp32"
    for part in ("encoder", "head"):
        onnx_file = out / rec["graphs"][part]["file"]
        if onnx_file.suffix != ".onnx":
            raise BackendError(f"{out} holds {onnx_file.name}; TensorRT builds from an ONNX "
                               f"export (msaf-export --format onnx)")
        plan = out / f"{part}_{prec}.plan"
        plan.write_bytes(_build(trt, onnx_file, fp16, config_stride(rec)))
        rec["graphs"][f"{part}_trt_{prec}"] = dict(rec["graphs"][part], file=plan.name)
    rec["tensorrt_version"] = str(trt.__version__)
    write_record(out, rec)
    return rec


class TensorRTEngine(Engine):
    """The two TensorRT engines on one CUDA device; torch CUDA tensors in and out."""

    name = "tensorrt"
    device_type = "cuda"

    def __init__(self, export_dir, precision: str = "fp16", threads: int = 0,
                 device: str = "cuda") -> None:
        super().__init__(export_dir, precision, threads)
        trt = import_backend("tensorrt")
        dev = torch.device("cuda" if device in (None, "auto") else device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise BackendError(f"backend 'tensorrt' needs a CUDA device, not {device!r}; use "
                               f"device cuda on a machine with an NVIDIA GPU")
        self.device = dev
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts = {}, {}
        for part in ("encoder", "head"):
            key = f"{part}_trt_{precision}"
            if key not in self.record["graphs"]:
                raise BackendError(f"{self.dir} has no TensorRT {precision} engines; build them "
                                   f"with msaf-export --format tensorrt {self.dir} OUT_DIR"
                                   f"{' --fp32' if precision == 'fp32' else ''}")
            data = (self.dir / self.record["graphs"][key]["file"]).read_bytes()
            with torch.cuda.device(dev):
                engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise BackendError(f"TensorRT cannot load {key} of {self.dir} (built by another "
                                   f"TensorRT version or GPU?); build the engines again here")
            self.engines[part], self.contexts[part] = engine, engine.create_execution_context()

    def _run(self, part: str, inputs: Dict[str, torch.Tensor],
             outputs: Any) -> Dict[str, torch.Tensor]:
        ctx = self.contexts[part]
        for name, t in inputs.items():
            t = t.to(self.device, torch.float32).contiguous()
            inputs[name] = t                                    # kept alive until the run ends
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        out = {}
        for name in outputs:
            out[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), device=self.device,
                                    dtype=torch.float32)
            ctx.set_tensor_address(name, out[name].data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise BackendError(f"TensorRT failed to run the {part} engine")
        return out

    def extract(self, frame: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self._run("encoder", {"frame": frame}, self.encoder_outputs)

    def head(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run("head", {k: feats[k] for k in self.head_inputs}, ["logits"])["logits"]
