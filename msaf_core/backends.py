"""Inference engines the :class:`~msaf_core.Segmenter` can run the exported graphs on.

``torch`` is the Segmenter's own eager path. The others run the encoder/head pair of
:mod:`msaf_core.export` (the same seam, so the Segmenter's per-stream cache, resets and
streams are unchanged):

- ``onnxruntime``: ONNX Runtime's CPU provider (``pip install .[onnxruntime]``);
- ``openvino``: OpenVINO on the CPU (``pip install .[openvino]``), float32, bfloat16 (where
  the CPU has AVX-512 BF16 or AMX) or int8 (graphs quantised by ``msaf-export --int8``);
- ``tensorrt``: TensorRT engines built by ``msaf-export --format tensorrt`` on a CUDA GPU
  (docs/deploy.md).

An engine is given an export folder (``msaf_export.json`` beside the graphs); a plain
checkpoint is exported once into a cache (:func:`msaf_core.export.cached_export`). Engines
take and give torch tensors on their device (the CPU engines wrap numpy arrays without
copies): ``extract(frame)`` → the encoder outputs by name, ``head(feats)`` → logits
(1, h, w, K) on the feature grid (1/8, or 1/16 for an export made at output stride 16).
Each CPU engine uses ``threads`` threads (0: its default).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from .config import MSAFConfig
from .errors import MSAFError
from .export import RECORD_NAME, ExportError, cached_export, config_stride, read_record

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
#: the precisions each engine runs (torch: fp32, bf16 autocast, fp16 on CUDA)
PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp32", "bf16", "int8"),
              "tensorrt": ("fp16", "fp32")}
INSTALL = {"onnxruntime": "pip install .[onnxruntime]", "openvino": "pip install .[openvino]",
           "tensorrt": "install TensorRT's Python package on a machine with a CUDA GPU "
                       "(pip install tensorrt; see docs/deploy.md)"}
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


class BackendError(MSAFError, ValueError):
    """A backend that is not installed, or cannot run the model; the message names the fix."""


def import_backend(name: str) -> Any:
    """The backend's Python module, or a one-line :class:`BackendError` naming the fix."""
    if name not in MODULES:
        raise BackendError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(MODULES[name])
    except ImportError as e:
        raise BackendError(f"backend '{name}' is not installed ({e}); {INSTALL[name]}") from None


def resolve_export(path: Union[str, Path], output_stride: Optional[int] = None) -> Path:
    """An export folder as is; a checkpoint file → its cached ONNX export (at
    ``output_stride``, else the checkpoint's own). A folder exported at another stride
    than ``output_stride`` is refused, naming the fix."""
    p = Path(path)
    if p.is_dir():
        if not (p / RECORD_NAME).is_file():
            raise BackendError(f"{p}: not an msaf export folder (no {RECORD_NAME}); pass a "
                               f"checkpoint, or a folder written by msaf-export --format onnx")
        if output_stride is not None:
            try:
                made = config_stride(read_record(p))
            except ExportError as e:
                raise BackendError(str(e)) from None
            if made != output_stride:
                raise BackendError(
                    f"{p} was exported at output stride {made}, not {output_stride}; export "
                    f"it again with msaf-export --output-stride {output_stride}, or pass the "
                    f"checkpoint itself")
        return p
    return cached_export(p, output_stride=output_stride)


class Engine:
    """The encoder/head pair of one export folder on one inference engine."""

    name = "engine"
    device_type = "cpu"

    def __init__(self, export_dir: Union[str, Path], precision: str = "fp32",
                 threads: int = 0) -> None:
        self.dir = Path(export_dir)
        try:
            self.record = read_record(self.dir)
        except ExportError as e:
            raise BackendError(str(e)) from None
        self.cfg = MSAFConfig.from_dict(dict(self.record["config"]))
        allowed = PRECISIONS[self.name]
        if precision not in allowed:
            raise BackendError(f"backend '{self.name}' runs {', '.join(allowed)}, not {precision}")
        self.precision = precision
        self.threads = int(threads)
        graphs = self.record["graphs"]
        self.encoder_outputs = list(graphs["encoder"]["outputs"])
        self.head_inputs = list(graphs["head"]["inputs"])

    def graph_file(self, part: str, suffixes) -> Path:
        """The file of ``part`` (encoder/head) for this precision, with one of ``suffixes``."""
        graphs = self.record["graphs"]
        key = part if self.precision != "int8" else part + "_int8"
        if key not in graphs:
            raise BackendError(f"{self.dir} has no int8 graphs; quantise them with msaf-export "
                               f"--int8 DATA_ROOT (pip install .[int8])")
        f = self.dir / graphs[key]["file"]
        if f.suffix not in suffixes and f"{key}_onnx" in graphs and ".onnx" in suffixes:
            f = self.dir / graphs[f"{key}_onnx"]["file"]      # an IR export keeps its ONNX
        if f.suffix not in suffixes:
            raise BackendError(f"backend '{self.name}' cannot read {f.name} ({f.suffix}); "
                               f"export with msaf-export --format "
                               f"{'onnx' if '.onnx' in suffixes else 'openvino'}")
        return f

    def describe(self) -> str:
        return f"{self.name} {self.precision}"

    def extract(self, frame: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Normalised frame (1, 3, H, W) float32 → the encoder outputs by name."""
        out = self._extract(frame.numpy())
        return {k: _tensor(out[k]) for k in self.encoder_outputs}

    def head(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The head inputs by name → logits (1, h, w, K) on the feature grid."""
        return _tensor(self._head({k: feats[k].numpy() for k in self.head_inputs}))

    def _extract(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _head(self, feats: Dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime, CPU execution provider, all graph optimisations, sequential.

    Its threads do not spin after a run: torch's upsampling and argmax follow each head run
    on the same cores, and ORT's default spin-wait takes CPU from them (docs/benchmarks.md)."""

    name = "onnxruntime"

    def __init__(self, export_dir, precision: str = "fp32", threads: int = 0) -> None:
        super().__init__(export_dir, precision, threads)
        ort = import_backend("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(part: str):
            f = self.graph_file(part, (".onnx",))
            try:
                return ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
                raise BackendError(f"onnxruntime cannot load {f}: {str(e).splitlines()[0]}; "
                                   f"export it again with this msaf_core") from None
        self.enc, self.hd = session("encoder"), session("head")

    def _extract(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(self.encoder_outputs, self.enc.run(None, {"frame": frame})))

    def _head(self, feats: Dict[str, np.ndarray]) -> np.ndarray:
        return self.hd.run(None, feats)[0]


class OpenVinoEngine(Engine):
    """OpenVINO on the CPU, latency mode, one stream; reads IR (.xml) or ONNX directly.

    ``fp32`` pins the inference precision to float32 (OpenVINO would otherwise pick
    bfloat16 on CPUs that have it); ``bf16`` asks for bfloat16."""

    name = "openvino"

    def __init__(self, export_dir, precision: str = "fp32", threads: int = 0) -> None:
        super().__init__(export_dir, precision, threads)
        ov = import_backend("openvino")
        core = ov.Core()
        conf = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if self.threads > 0:
            conf["INFERENCE_NUM_THREADS"] = self.threads

        def compiled(part: str):
            f = self.graph_file(part, (".xml", ".onnx"))
            try:
                return core.compile_model(str(f), "CPU", conf)
            except RuntimeError as e:
                raise BackendError(f"openvino cannot compile {f}: {str(e).splitlines()[0]}; "
                                   f"export it again with this msaf_core") from None
        self.enc, self.hd = compiled("encoder"), compiled("head")
        self.enc_req, self.hd_req = self.enc.create_infer_request(), self.hd.create_infer_request()

    def _extract(self, frame: np.ndarray) -> Dict[str, np.ndarray]:
        res = self.enc_req.infer({"frame": frame}, share_inputs=True)   # outputs are copies
        return {k: res[self.enc.output(k)] for k in self.encoder_outputs}

    def _head(self, feats: Dict[str, np.ndarray]) -> np.ndarray:
        return self.hd_req.infer(feats, share_inputs=True)[self.hd.output("logits")]


ENGINES = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}


def open_engine(backend: str, path: Union[str, Path], precision: str = "fp32",
                threads: int = 0, device: Optional[str] = None,
                output_stride: Optional[int] = None) -> Engine:
    """The engine ``backend`` over ``path`` (an export folder, or a checkpoint exported on
    the fly into the cache, at ``output_stride`` where given). ``device`` is for
    ``tensorrt`` (a CUDA device)."""
    if backend == "tensorrt":
        from .tensorrt_engine import TensorRTEngine  # CUDA and TensorRT only when asked for
        import_backend("tensorrt")
        return TensorRTEngine(resolve_export(path, output_stride), precision, threads,
                              device or "cuda")
    if backend not in ENGINES:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    import_backend(backend)  # the install hint before any export work
    return ENGINES[backend](resolve_export(path, output_stride), precision, threads)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """An engine's output array as a tensor, without a copy where the array is writable
    (torch does not wrap read-only memory)."""
    return torch.from_numpy(np.require(a, requirements="W"))
