"""The small CUDA interface the TensorRT backend needs: pinned host memory, device memory, one stream,
async copies, optional CUDA-graph capture, and the GPU's name and compute capability.

Two implementations behind one interface (:class:`CudaApi`):

* :class:`CudaBindings` over ``cuda.bindings.runtime`` (CUDA Python, what TensorRT's own samples use).
  Checked against cuda-bindings 12.8-12.9.x / 13.x (``samples/python/common_runtime.py`` of NVIDIA/TensorRT
  at 74a80a6 and a892d22, the cuda.bindings.runtime reference, and the 12.9.1 / 13.0.0 release notes):
  every call returns a tuple whose first item is a ``cudaError_t``; :func:`_check` turns a non-zero one
  into a one-line :class:`CudaError`. cuda-bindings 13 dropped the old ``from cuda import cudart``
  trampoline, so only ``cuda.bindings.runtime`` is imported (the ``cuda-bindings`` package, 12.8 or newer).
  Graph capture follows trtexec (``TrtCudaGraph`` in samples/common/sampleDevice.h, TensorRT 10.3 and
  11.x): thread-local capture mode, and on failure the capture is ended, its graph discarded and the
  pending CUDA error cleared with ``cudaGetLastError``.
* :class:`PyCuda` over ``pycuda.driver`` (2022.1+ API), for devices where that is what is installed.
  pycuda raises its own exceptions; they are turned into :class:`CudaError` the same way. It pushes the
  device's primary context and pops it again on :meth:`PyCuda.close` (or at exit), as
  ``pycuda.autoprimaryctx`` does: pycuda aborts the interpreter at exit when its context stack is not empty.

Both can be given the module object directly, which is how the CPU tests drive them with fakes.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from deepfusionnet.errors import DFNError


class CudaError(DFNError):
    """A CUDA call failed; the message names the call and the CUDA error."""


# Hints for the CUDA errors users actually meet (cudaError_t values, CUDA 12/13 runtime API).
_HINTS = {
    2: "out of GPU memory; close other GPU programs or use a smaller input/tile",
    35: "the NVIDIA driver is older than this CUDA runtime; install a cuda-bindings whose major "
        "version matches the driver's CUDA (pip install 'cuda-bindings==12.*' on JetPack 6)",
    100: "no CUDA-capable GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)",
    999: "unknown CUDA error; the GPU may be in a bad state",
}

# cudaErrorStreamCaptureInvalidated: cudaStreamEndCapture's answer when an operation not permitted under
# capture broke it (CUDA 12/13 runtime API; trtexec's endCaptureOnError expects it and then no graph).
_CAPTURE_INVALIDATED = 901


@dataclass
class HostBuffer:
    """Page-locked host memory seen as a flat uint8 numpy array."""

    array: np.ndarray
    ptr: int
    nbytes: int
    owner: Any = field(default=None, repr=False)


@dataclass
class DeviceBuffer:
    ptr: int
    nbytes: int
    owner: Any = field(default=None, repr=False)


class CudaApi(Protocol):
    """What the TensorRT runtime uses; every method raises :class:`CudaError` on failure."""

    name: str

    def host_alloc(self, nbytes: int) -> HostBuffer: ...
    def host_free(self, buf: HostBuffer) -> None: ...
    def device_alloc(self, nbytes: int) -> DeviceBuffer: ...
    def device_free(self, buf: DeviceBuffer) -> None: ...
    def stream_create(self) -> Any: ...
    def stream_destroy(self, stream: Any) -> None: ...
    def stream_handle(self, stream: Any) -> int: ...
    def copy_htod_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None: ...
    def copy_dtoh_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None: ...
    def synchronize(self, stream: Any) -> None: ...
    def begin_capture(self, stream: Any) -> None: ...
    def end_capture(self, stream: Any) -> Any: ...
    def abort_capture(self, stream: Any) -> None: ...
    def graph_launch(self, graph: Any, stream: Any) -> None: ...
    def graph_destroy(self, graph: Any) -> None: ...
    def device_info(self) -> dict: ...
    def close(self) -> None: ...


def _pinned_view(ptr: int, nbytes: int) -> np.ndarray:
    """A numpy uint8 view over ``nbytes`` at host address ``ptr`` (no copy)."""
    if nbytes == 0:
        return np.zeros(0, np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(ptr)))


def _code(err: Any) -> int:
    # cuda-bindings enums expose .value (common_runtime.py uses err.value); plain ints pass through.
    return int(getattr(err, "value", err))


def _version_major(text: str) -> int | None:
    try:
        return int(str(text).split(".")[0])
    except ValueError:
        return None


class CudaBindings:
    """:class:`CudaApi` over ``cuda.bindings.runtime`` (cuda-bindings 12.x / 13.x)."""

    name = "cuda-bindings"

    def __init__(self, cudart: Any = None, device: int = 0, version: str | None = None,
                 utils: Any = None) -> None:
        if cudart is None:
            cudart = importlib.import_module("cuda.bindings.runtime")
            utils = utils if utils is not None else _optional_module("cuda.bindings.utils")
            if version is None:
                try:
                    version = importlib.import_module("cuda.bindings").__version__
                except (ImportError, AttributeError):
                    version = None
        self.rt = cudart
        self.device = device
        self.version = version
        # cuda.bindings.utils.get_cuda_native_handle: the documented way to the raw handle since
        # cuda-bindings 12.9.1 / 13.0.0, which deprecated int(obj) ("subject to future removal").
        self._native_handle: Callable[[Any], int] | None = getattr(utils, "get_cuda_native_handle", None)
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self._check_driver()

    # -- error convention ---------------------------------------------------------------------------
    def _check(self, result: Any, call: str):
        """``(err, *values)`` -> values; a non-zero ``err`` -> :class:`CudaError` naming ``call``."""
        if not isinstance(result, tuple):
            result = (result,)
        err, values = result[0], result[1:]
        code = _code(err)
        if code != 0:
            name = self._error_name(err) or f"error {code}"
            hint = _HINTS.get(code)
            raise CudaError(f"CUDA {call} failed: {name} ({code})" + (f"; {hint}" if hint else ""))
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def _error_name(self, err: Any) -> str | None:
        try:
            res = self.rt.cudaGetErrorName(err)
            name = res[1] if isinstance(res, tuple) else res
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            return getattr(err, "name", None)

    def _check_driver(self) -> None:
        """cuda-bindings N.x needs a driver that supports CUDA N (13.x on a JetPack 6 / CUDA 12 driver fails)."""
        driver = self._check(self.rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
        self.driver_version = int(driver)
        drv_major = self.driver_version // 1000
        bind_major = _version_major(self.version) if self.version else None
        if bind_major is not None and drv_major and bind_major > drv_major:
            raise CudaError(
                f"cuda-bindings {self.version} needs a CUDA {bind_major} driver, but this driver supports CUDA "
                f"{drv_major}.{(self.driver_version % 1000) // 10}; install the matching major: "
                f"pip install 'cuda-bindings=={drv_major}.*'")

    # -- memory -------------------------------------------------------------------------------------
    def host_alloc(self, nbytes: int) -> HostBuffer:
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        return HostBuffer(_pinned_view(ptr, nbytes), ptr, nbytes)

    def host_free(self, buf: HostBuffer) -> None:
        if buf.ptr:
            self._check(self.rt.cudaFreeHost(buf.ptr), "cudaFreeHost")
            buf.ptr = 0

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        ptr = int(self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
        return DeviceBuffer(ptr, nbytes)

    def device_free(self, buf: DeviceBuffer) -> None:
        if buf.ptr:
            self._check(self.rt.cudaFree(buf.ptr), "cudaFree")
            buf.ptr = 0

    # -- stream and copies --------------------------------------------------------------------------
    def stream_create(self) -> Any:
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_destroy(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_handle(self, stream: Any) -> int:
        """The raw ``cudaStream_t`` value as an int, what ``execute_async_v3(stream_handle)`` takes.

        Never ``stream.getPtr()``: that is the address *of* the handle (``&cudaStream_t``, cuda-bindings
        "Tips and Tricks"), and TensorRT would enqueue on whatever that memory happens to hold.
        """
        if self._native_handle is not None:
            return int(self._native_handle(stream))  # cuda-bindings 12.9.1+ / 13.x
        try:
            return int(stream)  # cuda-bindings 12.8 - 12.9.0: int() is the documented conversion there
        except TypeError:
            raise CudaError(f"cuda-bindings {self.version or '?'} gives no raw CUDA stream handle (no "
                            "cuda.bindings.utils.get_cuda_native_handle and no int()); reinstall "
                            "cuda-bindings 12.9.1 or newer of your CUDA major") from None

    def copy_htod_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream), "cudaMemcpyAsync (host to device)")

    def copy_dtoh_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream), "cudaMemcpyAsync (device to host)")

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    # -- CUDA graphs (as trtexec's TrtCudaGraph in samples/common/sampleDevice.h does) ---------------
    def begin_capture(self, stream: Any) -> None:
        # Thread-local, as trtexec: global mode would make unrelated CUDA work on other threads (a camera
        # thread, ONNX Runtime, torch) fail, or break this capture, while it is open.
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        """End a capture whose enqueue succeeded and instantiate it; on failure clean up and raise."""
        try:
            graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            try:
                return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            finally:
                self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        except CudaError:
            self.clear_error()
            raise

    def abort_capture(self, stream: Any) -> None:
        """End a capture whose enqueue failed and discard it (trtexec's ``endCaptureOnError``).

        Either the capture was invalidated (cudaErrorStreamCaptureInvalidated, no graph) or TensorRT
        refused under capture (a graph comes back that must not be used). Either way the pending error
        is cleared, so the next frame's CUDA calls do not report this one's.
        """
        try:
            result = self.rt.cudaStreamEndCapture(stream)
            err, graph = result[0], (result[1] if len(result) > 1 else None)
            if _code(err) == 0 and graph is not None:
                self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
            elif _code(err) not in (0, _CAPTURE_INVALIDATED):
                self._check(result, "cudaStreamEndCapture")
        finally:
            self.clear_error()

    def clear_error(self) -> None:
        """Reset the runtime's last-error slot (``cudaGetLastError`` returns and clears it)."""
        self.rt.cudaGetLastError()

    def graph_launch(self, graph: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def graph_destroy(self, graph: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")

    # -- device -------------------------------------------------------------------------------------
    def device_info(self) -> dict:
        prop = self._check(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return {"name": str(name).strip(), "compute_capability": f"{prop.major}.{prop.minor}",
                "cuda_driver": f"{self.driver_version // 1000}.{(self.driver_version % 1000) // 10}",
                "cuda_api": f"{self.name} {self.version or '?'}"}

    def close(self) -> None:
        pass  # the runtime API uses the primary context; nothing was pushed


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class PyCuda:
    """:class:`CudaApi` over ``pycuda.driver`` (pycuda 2022.1+). Uses the device's primary context,
    the one TensorRT (CUDA runtime API) also uses."""

    name = "pycuda"

    def __init__(self, driver: Any = None, device: int = 0) -> None:
        if driver is None:
            driver = importlib.import_module("pycuda.driver")
        self.drv = driver
        self.device = device
        self._call("init", self.drv.init)
        self.dev = self._call("Device", self.drv.Device, device)
        self.ctx = self._call("retain_primary_context", self.dev.retain_primary_context)
        self._call("Context.push", self.ctx.push)
        self._pushed = True
        # A backend that is never closed still pops at exit, before pycuda's own clean-up checks the stack.
        atexit.register(self._close_at_exit)

    def close(self) -> None:
        """Pop the context pushed in ``__init__`` (once).

        Contexts are per thread: call it on the thread that opened this. Every PyCuda pushes the same
        primary context, so the order in which several are closed does not matter.
        """
        if not getattr(self, "_pushed", False):
            return
        self._pushed = False
        atexit.unregister(self._close_at_exit)
        self._call("Context.pop", self.ctx.pop)

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except CudaError:
            pass  # the process is ending; a traceback from an exit hook would only alarm

    def _call(self, what: str, fn, *args):
        err_type = getattr(self.drv, "Error", None)  # pycuda.driver.Error: base of LogicError, MemoryError, ...
        try:
            return fn(*args)
        except Exception as exc:
            if err_type is None or not isinstance(exc, err_type):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CudaError(f"CUDA {what} failed (pycuda): {text}") from None

    def host_alloc(self, nbytes: int) -> HostBuffer:
        arr = self._call("pagelocked_empty", self.drv.pagelocked_empty, (max(nbytes, 1),), np.uint8)
        return HostBuffer(arr[:nbytes], int(arr.ctypes.data), nbytes, owner=arr)

    def host_free(self, buf: HostBuffer) -> None:
        base = getattr(buf.owner, "base", None)
        if base is not None and hasattr(base, "free"):
            self._call("HostAllocation.free", base.free)
        buf.owner = None
        buf.ptr = 0

    def device_alloc(self, nbytes: int) -> DeviceBuffer:
        alloc = self._call("mem_alloc", self.drv.mem_alloc, max(nbytes, 1))
        return DeviceBuffer(int(alloc), nbytes, owner=alloc)

    def device_free(self, buf: DeviceBuffer) -> None:
        if buf.owner is not None:
            self._call("DeviceAllocation.free", buf.owner.free)
        buf.owner = None
        buf.ptr = 0

    def stream_create(self) -> Any:
        return self._call("Stream", self.drv.Stream)

    def stream_destroy(self, stream: Any) -> None:
        pass  # pycuda destroys the stream when the object is collected

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def copy_htod_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: Any) -> None:
        self._call("memcpy_htod_async", self.drv.memcpy_htod_async, dst.ptr, src.array[:nbytes], stream)

    def copy_dtoh_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: Any) -> None:
        self._call("memcpy_dtoh_async", self.drv.memcpy_dtoh_async, dst.array[:nbytes], src.ptr, stream)

    def synchronize(self, stream: Any) -> None:
        self._call("Stream.synchronize", stream.synchronize)

    def begin_capture(self, stream: Any) -> None:
        raise CudaError("CUDA graphs need CUDA Python (pip install cuda-python); pycuda is in use here")

    def end_capture(self, stream: Any) -> Any:  # pragma: no cover - begin_capture already refused
        raise CudaError("CUDA graphs need CUDA Python")

    def abort_capture(self, stream: Any) -> None:  # pragma: no cover - begin_capture already refused
        pass

    def graph_launch(self, graph: Any, stream: Any) -> None:  # pragma: no cover
        raise CudaError("CUDA graphs need CUDA Python")

    def graph_destroy(self, graph: Any) -> None:  # pragma: no cover
        pass

    def device_info(self) -> dict:
        attrs = self.drv.device_attribute
        major = self.dev.get_attribute(attrs.COMPUTE_CAPABILITY_MAJOR)
        minor = self.dev.get_attribute(attrs.COMPUTE_CAPABILITY_MINOR)
        drv = self.drv.get_driver_version()
        return {"name": str(self.dev.name()).strip(), "compute_capability": f"{major}.{minor}",
                "cuda_driver": f"{drv // 1000}.{(drv % 1000) // 10}", "cuda_api": f"pycuda {getattr(self.drv, '__version__', '?')}"}


def _install_hint() -> str:
    if os.path.exists("/etc/nv_tegra_release"):
        return ("on Jetson: pip install 'cuda-bindings==12.*' (JetPack 6 / CUDA 12) inside the "
                "--system-site-packages venv")
    return ("pip install 'deepfusionnet[trt]' (cuda-bindings 12.x; with a CUDA 13 driver pip install "
            "'cuda-bindings==13.*' instead)")


def open_cuda(api: str = "auto", device: int = 0) -> CudaApi:
    """The CUDA interface to use: ``"cuda-bindings"``, ``"pycuda"`` or ``"auto"`` (CUDA Python first)."""
    if api not in ("auto", "cuda-bindings", "pycuda"):
        raise DFNError(f"unknown CUDA API {api!r}; choose auto, cuda-bindings or pycuda")
    env = os.environ.get("DFN_CUDA_API")
    if api == "auto" and env:
        api = env
    errors = []
    if api in ("auto", "cuda-bindings"):
        try:
            return CudaBindings(device=device)
        except ImportError as exc:
            errors.append(f"cuda.bindings: {exc}")
    if api in ("auto", "pycuda"):
        try:
            return PyCuda(device=device)
        except ImportError as exc:
            errors.append(f"pycuda: {exc}")
    raise DFNError(f"no CUDA Python API found ({'; '.join(errors)}); {_install_hint()}")
