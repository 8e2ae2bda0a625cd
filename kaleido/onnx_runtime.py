"""Frozen networks run by onnxruntime on CPU: the same function, 1.4-2.5x the speed.

Patch extraction is bound by two frozen CNNs, U2-Net-p (saliency) and EfficientNet-Lite0
(patch features). On 2 CPU cores onnxruntime runs them faster than PyTorch's eager oneDNN
path (``benchmarks/kpg.py`` prints both in one run), so :class:`OnnxRunner` exports the
torch module to ONNX in memory, once per input shape (the exported graph fixes the
spatial size: TF "SAME" padding and U2-Net's upsampling targets are traced as constants;
the batch stays dynamic), and runs it with an onnxruntime session.

The outputs equal PyTorch's to float32 rounding (about 1e-5, far below the float16 the
patch cache stores; ``tests/test_onnx_runtime.py``), so a cache or a released model
made with one runtime is served by the other.

Runtimes are chosen by name: ``"torch"``, ``"onnxruntime"``, or ``"auto"`` (onnxruntime on
a CPU device when the package is installed, else torch); :func:`resolve_runtime`.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime")
_OPSET = 17


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str, device: str, what: str) -> str:
    """``"torch"`` or ``"onnxruntime"`` for ``runtime`` on ``device``.

    Raises:
        ValueError: an unknown runtime, onnxruntime asked for on a non-CPU device, or
            asked for and not installed.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"{what}: runtime must be one of {RUNTIMES}, got {runtime!r}")
    on_cpu = torch.device(device).type == "cpu"
    if runtime == "auto":
        return "onnxruntime" if on_cpu and onnxruntime_available() else "torch"
    if runtime == "onnxruntime":
        if not on_cpu:
            raise ValueError(f"{what}: runtime onnxruntime runs on the CPU here, not on {device}; "
                             "use runtime=torch (or auto) on a GPU")
        if not onnxruntime_available():
            raise ValueError(f"{what}: runtime onnxruntime needs the onnxruntime package "
                             "(pip install onnxruntime), or use runtime=torch")
    return runtime


class _Forward(nn.Module):
    """``fn(module, x)`` as a module, so the export sees the module's parameters."""

    def __init__(self, module: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.module, x)


class OnnxRunner:
    """Runs ``fn(module, x)`` (one float32 NCHW tensor in, one tensor out) with onnxruntime.

    Args:
        module: a frozen torch module in eval mode (on the CPU).
        fn: what to compute from it, e.g. ``lambda m, x: m.forward_features(x)``; default
            ``module(x)``.
        name: for logs.
        threads: intra-op threads of the sessions (default: ``torch.get_num_threads()``).

    The module is exported on the first call with each (C, H, W); later calls with that
    shape reuse the session. Thread-safe.
    """

    def __init__(self, module: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor] | None = None,
                 *, name: str = "module", threads: int | None = None):
        self.graph = _Forward(module, fn or (lambda m, x: m(x))).eval()
        self.name = name
        self.threads = threads or torch.get_num_threads()
        self._sessions: dict[tuple[int, ...], object] = {}
        self._lock = threading.Lock()

    def session(self, shape: tuple[int, ...]):
        """The onnxruntime session for inputs of (C, H, W) ``shape`` (exported on first use)."""
        with self._lock:
            if shape not in self._sessions:
                self._sessions[shape] = self._export(shape)
            return self._sessions[shape]

    def _export(self, shape: tuple[int, ...]):
        import onnxruntime as ort

        buffer = io.BytesIO()
        dummy = torch.zeros(2, *shape)  # not 1: a traced size-1 batch could be baked into reshapes
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(self.graph, (dummy,), buffer, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                              opset_version=_OPSET, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # idle threads must not spin: two sessions (saliency, backbone) and torch take turns on the cores
        options.add_session_config_entry("session.force_spinning_stop", "1")
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        log.info("%s: exported to onnxruntime for inputs %s (%.1f MB graph, %d threads)",
                 self.name, "x".join(map(str, shape)), buffer.tell() / 2**20, self.threads)
        return session

    def __call__(self, x: Tensor) -> Tensor:
        """(B, C, H, W) float tensor on the CPU -> the module's output as a float32 CPU tensor."""
        if x.ndim != 4 or x.device.type != "cpu":
            raise ValueError(f"{self.name}: onnxruntime takes a (B, C, H, W) CPU tensor, got "
                             f"{tuple(x.shape)} on {x.device}")
        session = self.session(tuple(int(s) for s in x.shape[1:]))
        array = x.detach().float().contiguous().numpy()
        return torch.from_numpy(session.run(None, {"x": array})[0])
