"""TensorRT engine backend: the named-tensor API only (TensorRT 10.x, which JetPack 6 ships, and 11.x).

Calls used, checked against the TensorRT 10.x / 11.x Python API reference and NVIDIA/TensorRT
``samples/python/common_runtime.py`` (74a80a6): ``trt.Runtime(logger).deserialize_cuda_engine(bytes)``
(returns ``None`` on a bad or foreign plan), ``engine.num_io_tensors``, ``get_tensor_name/mode/dtype/shape``,
``get_tensor_profile_shape(name, 0) -> (min, opt, max)``, ``create_execution_context()``,
``context.set_input_shape`` (bool), ``context.get_tensor_shape`` (outputs, read after the input shapes
are set), ``context.set_tensor_address(name, int)`` (bool: False for a name that is no I/O tensor or an
address not 256-byte aligned) and ``context.execute_async_v3(stream_handle: int)`` (bool: False when the
kernels could not be enqueued, e.g. under a CUDA-graph capture it cannot join). Both return values are
checked: python/src/infer/pyCore.cpp returns ``setTensorAddress`` / ``enqueueV3`` as they are in TensorRT
10.3 (JetPack 6) and 11.x, and NvInferRuntime.h documents the False cases. The bindings API
(``execute_v2``, ``get_binding_*``) was removed in TensorRT 10 and is not used.

Memory and the stream go through :mod:`deepfusionnet.runtime.backends.cuda` (CUDA Python or pycuda):
pinned host buffers, one stream, async copies in, execute, async copies out, one synchronize; buffers
grow on demand; optional CUDA-graph capture of the execute step.

An engine's JSON sidecar (written by ``dfn build``) is checked before deserializing: a plan built by
another TensorRT version or on another GPU fails in one line with the rebuild command.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from deepfusionnet.errors import DFNError, MissingExtraError
from deepfusionnet.runtime.artifacts import file_sha256, read_sidecar
from deepfusionnet.runtime.backends.base import TensorInfo
from deepfusionnet.runtime.backends.cuda import CudaApi, CudaError, DeviceBuffer, HostBuffer, open_cuda
from deepfusionnet.runtime.sidecar import Sidecar

MIN_TRT_MAJOR = 10


def is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release")


def tensorrt_install_hint(jetson: bool | None = None) -> str:
    """What to install, for this machine: pip on x86, JetPack on Jetson."""
    if is_jetson() if jetson is None else jetson:
        return ("on Jetson use JetPack's TensorRT: sudo apt install python3-libnvinfer, then a venv made with "
                "python3 -m venv --system-site-packages (not pip install tensorrt)")
    return "install it with: pip install tensorrt 'deepfusionnet[trt]' (needs an NVIDIA GPU and driver)"


def import_tensorrt(module: Any = None) -> Any:
    """The ``tensorrt`` module (or ``module`` when given, e.g. a test fake), version-checked."""
    if module is None:
        try:
            import tensorrt as module  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise MissingExtraError(f"TensorRT is not installed ({exc}); {tensorrt_install_hint()}") from None
    if trt_major(module) < MIN_TRT_MAJOR:
        raise DFNError(f"TensorRT {module.__version__} is too old: deepfusionnet needs TensorRT 10.x (JetPack 6) "
                       "or 11.x for strongly typed networks and the named-tensor API")
    return module


def trt_major(trt: Any) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return 0


def _version3(text: str) -> tuple[str, ...]:
    # Plans are tied to major.minor.patch; the build number may differ between packagings.
    return tuple(str(text).split(".")[:3])


_LOGGERS: dict[int, Any] = {}


def get_logger(trt: Any) -> Any:
    """One capturing logger per TensorRT module: TensorRT treats the logger as a process-wide singleton.

    The ILogger subclass is defined here, inside a function, so importing this module never needs TensorRT.
    """
    key = id(trt)
    if key in _LOGGERS:
        return _LOGGERS[key]

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # required by pybind11 trampolines (TensorRT Logger docs)
            self.errors: deque[str] = deque(maxlen=20)
            self.echo = bool(os.environ.get("DFN_TRT_LOG"))

        def log(self, severity, msg) -> None:
            level = int(severity)  # INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4
            if level <= 1:
                self.errors.append(str(msg))
            if self.echo and level <= 2:
                print(f"[TensorRT] {msg}", file=sys.stderr)

        def last_error(self) -> str:
            return self.errors[-1].strip().splitlines()[0][:300] if self.errors else ""

        def clear(self) -> None:
            self.errors.clear()

    _LOGGERS[key] = CapturingLogger()
    return _LOGGERS[key]


def rebuild_command(engine: Path, sidecar: Sidecar) -> str:
    onnx = (sidecar.onnx or {}).get("path") or "MODEL.onnx"
    args = (sidecar.build or {}).get("cli_args") or []
    return " ".join(["dfn", "build", shlex.quote(str(onnx)), "-o", shlex.quote(str(engine)), *map(shlex.quote, args)])


def check_engine_bytes(path: Path, sidecar: Sidecar) -> bool:
    """Fail in one line when ``path`` is not the plan its sidecar describes (size or sha256 differ).

    Returns whether the sidecar had a hash to check against (sidecars from before it was recorded do not).
    """
    size = path.stat().st_size
    redo = rebuild_command(path, sidecar)
    recorded = sidecar.engine_bytes
    if recorded is not None and int(recorded) != size:
        raise DFNError(f"{path}: {size} bytes but its sidecar recorded {recorded}: the engine is corrupt or was "
                       f"replaced; rebuild it: {redo}")
    digest = sidecar.engine_sha256
    if digest and digest != file_sha256(path):
        raise DFNError(f"{path}: sha256 differs from its sidecar: the engine is corrupt or was replaced; "
                       f"rebuild it: {redo}")
    return bool(digest)


def verify_engine(path: Path, sidecar: Sidecar, trt: Any = None) -> str:
    """Check, without a GPU where possible, that ``path`` is a usable plan; return how it was checked.

    TensorRT's plan format is not documented, so without the sidecar's hash the only real check is to
    deserialize it; when TensorRT is missing too, say so instead of describing unknown bytes.
    """
    if path.stat().st_size == 0:
        raise DFNError(f"{path}: empty file, not a TensorRT engine")
    if not sidecar.empty and check_engine_bytes(path, sidecar):
        return "sha256 matches the sidecar"
    try:
        trt = import_tensorrt(trt)
    except MissingExtraError:
        if not sidecar.empty:
            return "not verified (the sidecar records no engine hash and TensorRT is not installed)"
        raise DFNError(f"{path}: cannot check that this is a TensorRT engine: no sidecar {path}.json beside it "
                       f"and TensorRT is not installed here ({tensorrt_install_hint()})") from None
    logger = get_logger(trt)
    logger.clear()
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    except Exception as exc:  # no CUDA device or driver: TensorRT cannot even try
        if not sidecar.empty:
            return f"not verified (TensorRT could not run here: {str(exc).strip()[:120]})"
        raise DFNError(f"{path}: cannot check that this is a TensorRT engine here and it has no sidecar "
                       f"({str(exc).strip()[:120]})") from None
    if engine is None:
        why = logger.last_error() or "not a TensorRT plan, or one from another TensorRT version or GPU"
        raise DFNError(f"{path}: TensorRT {trt.__version__} could not deserialize this engine ({why})")
    return f"deserialized by TensorRT {trt.__version__}"


def check_engine_sidecar(path: Path, sidecar: Sidecar, trt_version: str, device: dict | None) -> None:
    """Fail in one line when ``path`` is corrupt or was built for another TensorRT version or another GPU."""
    if sidecar.empty:
        return
    check_engine_bytes(path, sidecar)
    redo = rebuild_command(path, sidecar)
    built = sidecar.tensorrt
    if built and _version3(built) != _version3(trt_version):
        raise DFNError(f"{path}: built with TensorRT {built} but this is TensorRT {trt_version}; "
                       f"rebuild it on this device: {redo}")
    gpu = sidecar.gpu or {}
    if device and gpu:
        cc, name = gpu.get("compute_capability"), gpu.get("name")
        if cc and device.get("compute_capability") and cc != device["compute_capability"]:
            raise DFNError(f"{path}: built for {name} (compute capability {cc}) but this GPU is {device.get('name')} "
                           f"(compute capability {device['compute_capability']}); rebuild it on this device: {redo}")
        if name and device.get("name") and name != device["name"]:
            raise DFNError(f"{path}: built on {name} but this GPU is {device['name']}; rebuild it on this device "
                           f"(or pass check_sidecar=False to try anyway): {redo}")


def numpy_dtype(trt: Any, dtype: Any, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:  # BF16 / FP8 / INT4 have no numpy type
        raise DFNError(f"engine tensor {name!r} has type {dtype}, which numpy cannot hold; export the ONNX with "
                       "FP32 or FP16 inputs/outputs") from None


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


class TensorRTBackend:
    """A deserialized TensorRT engine behind the :class:`~deepfusionnet.runtime.backends.base.Backend` contract."""

    name = "tensorrt"

    def __init__(self, path: Path, *, device: int = 0, cuda_graph: bool = False, cuda_api: str = "auto",
                 check_sidecar: bool = True, fit: bool = True, trt: Any = None, cuda: CudaApi | None = None) -> None:
        self.trt = trt = import_tensorrt(trt)
        path = Path(path)
        if not path.is_file():
            raise DFNError(f"{path}: no such engine file")
        self.path = path
        self.sidecar = read_sidecar(path)
        self.cuda = cuda if cuda is not None else open_cuda(cuda_api, device)
        self._owns_cuda = cuda is None  # close() pops pycuda's context only when this backend opened it
        self.device = self.cuda.device_info()
        if check_sidecar:
            check_engine_sidecar(path, self.sidecar, trt.__version__, self.device)
        self.cuda_graph = cuda_graph
        self.fit = fit
        self._logger = get_logger(trt)
        self._logger.clear()
        self._buffers: dict[str, tuple[HostBuffer, DeviceBuffer]] = {}
        self._graph = None
        self._graph_key = None
        self.stream = None
        self.context = None
        self.engine = None
        data = path.read_bytes()
        self.runtime = trt.Runtime(self._logger)
        engine = self.runtime.deserialize_cuda_engine(data) if data else None
        if engine is None:
            why = self._logger.last_error() or "not a TensorRT plan, or one from another TensorRT version or GPU"
            raise DFNError(f"{path}: TensorRT {trt.__version__} could not deserialize this engine ({why}); "
                           f"rebuild it on this device: {rebuild_command(path, self.sidecar)}")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise DFNError(f"{path}: TensorRT could not create an execution context "
                           f"({self._logger.last_error() or 'out of GPU memory?'})")
        self.stream = self.cuda.stream_create()
        self._stream_handle = self.cuda.stream_handle(self.stream)

        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._profile: dict[str, tuple[tuple[int, ...], ...]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = numpy_dtype(trt, engine.get_tensor_dtype(name), name)
            shape = _dims(engine.get_tensor_shape(name))
            info = TensorInfo(name, tuple(None if d < 0 else d for d in shape), dtype.name)
            self._dtypes[name] = dtype
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(info)
                if any(d < 0 for d in shape):
                    self._profile[name] = tuple(_dims(s) for s in engine.get_tensor_profile_shape(name, 0))
                else:
                    self._profile[name] = (shape, shape, shape)
            else:
                self.outputs.append(info)

    # -- shapes ---------------------------------------------------------------------------------------
    def shape_range(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes the engine accepts for input ``name`` (all equal for a fixed shape)."""
        return self._profile[name]

    def _fits(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self._profile[name]
        return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    def _shape_error(self, name: str, shape: tuple[int, ...]) -> DFNError:
        lo, opt, hi = self._profile[name]
        if lo == hi:
            allowed = f"exactly {'x'.join(map(str, lo))}"
        else:
            allowed = f"from {'x'.join(map(str, lo))} to {'x'.join(map(str, hi))} (opt {'x'.join(map(str, opt))})"
        return DFNError(f"{self.path}: input {name!r} has shape {'x'.join(map(str, shape))} but this engine accepts "
                        f"{allowed}; rebuild with another --shape or --min/--opt/--max")

    # -- inference ------------------------------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.fit and len(self.inputs) == 1 and len(self.outputs) == 1:
            name = self.inputs[0].name
            x = feed.get(name)
            if x is not None and x.ndim == 4 and len(self._profile[name][0]) == 4 and not self._fits(name, x.shape):
                return self._infer_fitted(name, np.asarray(x))
        return self._run(feed)

    def _infer_fitted(self, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        """Pad (mirror) up to a shape the engine accepts, or tile when larger than its maximum; crop back."""
        lo, _, hi = self._profile[name]
        n, c, h, w = x.shape
        if not (lo[0] <= n <= hi[0] and lo[1] <= c <= hi[1]):
            raise self._shape_error(name, x.shape)
        out_name = self.outputs[0].name
        if h <= hi[2] and w <= hi[3]:
            th, tw = max(h, lo[2]), max(w, lo[3])
            xp = np.pad(x, ((0, 0), (0, 0), (0, th - h), (0, tw - w)), mode="symmetric")
            y = self._run({name: xp})[out_name]
            scale = y.shape[2] // th
            return {out_name: np.ascontiguousarray(y[..., : h * scale, : w * scale])}
        from deepfusionnet.runtime.processing import run_tiled

        tile = min(hi[2], hi[3])
        scale = self._scale(name, hi)

        def fn(t: np.ndarray) -> np.ndarray:
            return self._infer_fitted(name, t)[out_name] if not self._fits(name, t.shape) else self._run({name: t})[out_name]

        y = run_tiled(fn, x, tile, overlap=min(32, tile // 4), scale=scale, multiple=1)
        return {out_name: y.astype(self._dtypes[out_name], copy=False)}

    def _scale(self, name: str, shape: tuple[int, ...]) -> int:
        if not self.context.set_input_shape(name, shape):
            raise self._shape_error(name, shape)
        out = _dims(self.context.get_tensor_shape(self.outputs[0].name))
        return max(1, out[2] // shape[2])

    def _ensure(self, name: str, nbytes: int) -> tuple[HostBuffer, DeviceBuffer]:
        buf = self._buffers.get(name)
        if buf is not None and buf[0].nbytes >= nbytes:
            return buf
        if buf is not None:
            self._free(name)
        self._drop_graph()  # addresses change
        host = self.cuda.host_alloc(nbytes)
        dev = self.cuda.device_alloc(nbytes)
        self._buffers[name] = (host, dev)
        return host, dev

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx = self.context
        names_in = [i.name for i in self.inputs]
        missing = [n for n in names_in if n not in feed]
        unknown = [n for n in feed if n not in names_in]
        if missing or unknown:
            raise DFNError(f"{self.path}: feed names {sorted(feed)} do not match the engine inputs {names_in}")
        arrays = {}
        for name in names_in:
            arr = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
            if not self._fits(name, arr.shape):
                raise self._shape_error(name, arr.shape)
            if not ctx.set_input_shape(name, arr.shape):
                raise DFNError(f"{self.path}: TensorRT refused shape {arr.shape} for {name!r} "
                               f"({self._logger.last_error() or 'outside the optimization profile'})")
            arrays[name] = arr
        # Output shapes are only known once every input shape is set.
        out_shapes = {o.name: _dims(ctx.get_tensor_shape(o.name)) for o in self.outputs}
        for name, shape in out_shapes.items():
            if any(d < 0 for d in shape):
                raise DFNError(f"{self.path}: TensorRT could not infer the shape of output {name!r} ({shape})")
        nbytes = {n: a.nbytes for n, a in arrays.items()}
        nbytes.update({n: int(np.prod(s)) * self._dtypes[n].itemsize for n, s in out_shapes.items()})
        for name, size in nbytes.items():
            _, dev = self._ensure(name, size)
            self._set_address(name, dev.ptr)
        for name, arr in arrays.items():
            host, dev = self._buffers[name]
            host.array[: arr.nbytes] = arr.reshape(-1).view(np.uint8)
            self.cuda.copy_htod_async(dev, host, arr.nbytes, self.stream)
        key = tuple((n, a.shape) for n, a in arrays.items())
        if self.cuda_graph:
            self._execute_graph(key)
        else:
            self._execute()
        for name in out_shapes:
            host, dev = self._buffers[name]
            self.cuda.copy_dtoh_async(host, dev, nbytes[name], self.stream)
        self.cuda.synchronize(self.stream)
        # Copy out of the pinned buffers: the next call overwrites them.
        return {n: self._buffers[n][0].array[: nbytes[n]].view(self._dtypes[n]).reshape(s).copy()
                for n, s in out_shapes.items()}

    def _set_address(self, name: str, ptr: int) -> None:
        # TensorRT 10.x/11.x return False (and log why) for an unknown name or a misaligned address; running
        # anyway would read or write whatever the tensor was bound to before.
        if not self.context.set_tensor_address(name, ptr):
            raise DFNError(f"{self.path}: TensorRT refused the device address of tensor {name!r} "
                           f"({self._logger.last_error() or 'not an I/O tensor, or not 256-byte aligned'})")

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream_handle):
            raise DFNError(f"{self.path}: TensorRT execution failed ({self._logger.last_error() or 'see DFN_TRT_LOG=1'})")

    def _execute_graph(self, key) -> None:
        """Replay the captured execute step; (re)capture on the first call and after a shape change."""
        if self._graph is not None and self._graph_key == key:
            self.cuda.graph_launch(self._graph, self.stream)
            return
        self._drop_graph()
        # One plain enqueue (and wait) first, as trtexec does: it computes this frame, and TensorRT does
        # its deferred per-shape work there, outside the capture.
        self._execute()
        self.cuda.synchronize(self.stream)
        graph = self._capture()
        if graph is not None:
            self._graph, self._graph_key = graph, key

    def _capture(self) -> Any:
        """Capture one enqueue into a CUDA graph; ``None`` (graphs off, told once) when that fails.

        A failed capture must never be kept: its graph would hold no kernels, and replaying it would
        hand back the first frame's output for every later frame. This frame's output is already in
        the output buffer from the plain enqueue before the capture.
        """
        try:
            self.cuda.begin_capture(self.stream)
        except CudaError as exc:
            return self._graphs_off(str(exc))
        try:
            enqueued = self.context.execute_async_v3(self._stream_handle)  # recorded, not run
        except BaseException:
            self.cuda.abort_capture(self.stream)
            raise
        if not enqueued:
            self.cuda.abort_capture(self.stream)
            why = self._logger.last_error() or "TensorRT could not enqueue under stream capture"
            return self._graphs_off(f"this engine cannot run inside a CUDA graph: {why}")
        try:
            return self.cuda.end_capture(self.stream)
        except CudaError as exc:
            return self._graphs_off(str(exc))

    def _graphs_off(self, why: str) -> None:
        print(f"dfn: CUDA graph capture failed, running without graphs ({why})", file=sys.stderr)
        self.cuda_graph = False
        return None

    # -- teardown -------------------------------------------------------------------------------------
    def _drop_graph(self) -> None:
        if self._graph is not None:
            try:
                self.cuda.graph_destroy(self._graph)
            finally:
                self._graph, self._graph_key = None, None

    def _free(self, name: str) -> None:
        host, dev = self._buffers.pop(name)
        self.cuda.host_free(host)
        self.cuda.device_free(dev)

    def close(self) -> None:
        if self.engine is None and self.stream is None:
            return
        self._drop_graph()
        for name in list(self._buffers):
            self._free(name)
        if self.stream is not None:
            self.cuda.stream_destroy(self.stream)
            self.stream = None
        # Context before engine before runtime, as TensorRT requires.
        self.context = None
        self.engine = None
        self.runtime = None
        if self._owns_cuda:
            self.cuda.close()  # last: pycuda's context must stay current while buffers are freed


def load(path: Path, **options) -> TensorRTBackend:
    return TensorRTBackend(Path(path), **options)
