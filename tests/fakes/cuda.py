"""A fake ``cuda.bindings.runtime`` (tuple-return convention of cuda-bindings 12.x/13.x) and a fake
``pycuda.driver``. "Device" memory is host memory from ctypes, so copies really move bytes; every call
is appended to ``world.calls`` so tests can check order and stream.

The semantics modelled, because the runtime's bugs hide in them (cuda-bindings 12.9 / 13.x, CUDA 12/13):

* ``cudaStream_t``: ``get_cuda_native_handle(s)`` (``cuda.bindings.utils``, 12.9.1+ / 13.0+) and ``int(s)``
  give the handle itself; ``s.getPtr()`` gives the address *of* the handle (``&cudaStream_t``), a
  different number ("Tips and Tricks" in the cuda-bindings docs). ``int(s)`` is deprecated since
  12.9.1 / 13.0.0 and "subject to future removal": ``World.stream_int`` selects "ok", "deprecated"
  (warns) or "removed" (TypeError).
* The last-error slot: a failing runtime call records its error, ``cudaGetLastError`` returns and clears
  it (``world.last_error``).
* Stream capture: ``cudaStreamBeginCapture`` records the mode and the capturing thread; a capture that an
  illegal call invalidated ends with ``cudaErrorStreamCaptureInvalidated`` and no graph; graphs replay the
  recorded closures. Illegal while capturing: ``cudaStreamSynchronize`` on the capturing stream, and
  ``cudaMalloc`` ("potentially unsafe") from the capturing thread, or from any other thread while a
  capture in cudaStreamCaptureModeGlobal is open; each fails with cudaErrorStreamCaptureUnsupported and
  invalidates the capture (CUDA runtime API, cudaStreamCaptureMode).
* Device allocations are 256-byte aligned, as cudaMalloc's are (TensorRT requires that alignment);
  ``World.device_offset`` misaligns them to provoke TensorRT's refusal.
* pycuda's context stack: ``Context.push``/``pop`` change ``world.ctx_stack``; pycuda aborts at exit when
  it is not empty, so tests check it is.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import types
import warnings
from dataclasses import dataclass, field

import numpy as np

ALIGN = 256


@dataclass
class World:
    """Shared state of the fakes: the call log, allocations, capture state, injected failures."""

    calls: list = field(default_factory=list)
    buffers: dict = field(default_factory=dict)  # address -> ctypes buffer (keeps it alive)
    # Freed buffers stay allocated for the World's lifetime: a numpy view or a copy that outlives its
    # free (a bug the tests should see as wrong numbers) must never write into the process heap. A real
    # free in the double corrupted malloc's state and crashed the test process much later.
    freed: list = field(default_factory=list)
    capturing: dict = field(default_factory=dict)  # stream handle -> list of captured closures
    capture_modes: dict = field(default_factory=dict)  # stream handle -> (mode, capturing thread id)
    streams: set = field(default_factory=set)  # live stream handles
    invalidated: set = field(default_factory=set)  # stream handles whose capture was invalidated
    fail: dict = field(default_factory=dict)  # call name -> cudaError_t value to return
    device_name: str = "Orin"
    cc: tuple = (8, 7)
    driver_version: int = 12060
    last_error: int = 0  # cudaGetLastError's slot
    stream_int: str = "ok"  # int(cudaStream_t): "ok", "deprecated" (warns) or "removed" (TypeError)
    device_offset: int = 0  # added to cudaMalloc's addresses (0 keeps them 256-byte aligned)
    capture_failure: str | None = None  # TensorRT under capture: None, "invalidate" or "refuse"
    ctx_stack: list = field(default_factory=list)  # pycuda's context stack

    def alloc(self, n: int, offset: int = 0) -> int:
        buf = ctypes.create_string_buffer(max(int(n), 1) + ALIGN + offset)
        addr = ctypes.addressof(buf)
        addr += (-addr) % ALIGN + offset
        self.buffers[addr] = buf
        return addr

    def read(self, addr: int, nbytes: int, dtype, shape) -> np.ndarray:
        raw = (ctypes.c_uint8 * nbytes).from_address(addr)
        return np.frombuffer(bytes(raw), np.uint8).view(dtype).reshape(shape)

    def write(self, addr: int, arr: np.ndarray) -> None:
        data = np.ascontiguousarray(arr).tobytes()
        ctypes.memmove(addr, data, len(data))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class FakeStream:
    """``cuda.bindings.runtime.cudaStream_t``: a Python object wrapping the handle."""

    _next = 0x5000

    def __init__(self, world: World):
        FakeStream._next += 16
        self.handle = FakeStream._next
        self._world = world
        self._cell = ctypes.c_void_p(self.handle)  # where the object keeps the handle (its _pvt_ptr)

    def __int__(self):
        mode = self._world.stream_int
        if mode == "removed":
            raise TypeError("int() argument must be a string, a bytes-like object or a real number, "
                            "not 'cudaStream_t'")
        if mode == "deprecated":
            warnings.warn("int(cuda_obj) is deprecated; use cuda.bindings.utils.get_cuda_native_handle",
                          DeprecationWarning, stacklevel=2)
        return self.handle

    def getPtr(self):
        return ctypes.addressof(self._cell)  # &cudaStream_t, not the stream


def _h(stream) -> int:
    """The handle inside a fake stream, read the way the C side does (not through the deprecated int())."""
    handle = getattr(stream, "handle", None)
    return int(stream) if handle is None else int(handle)


def _unsafe_now(world: World) -> int | None:
    """The capturing stream that a "potentially unsafe" call made now would break, if any."""
    me = threading.get_ident()
    for handle, (mode, thread) in world.capture_modes.items():
        if mode != cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed and (
                thread == me or mode == cudaStreamCaptureMode.cudaStreamCaptureModeGlobal):
            return handle
    return None


def make_bindings_utils(world: World) -> types.ModuleType:
    """A fake ``cuda.bindings.utils`` (cuda-bindings 12.9.1+ / 13.0+)."""
    utils = types.ModuleType("cuda.bindings.utils")

    def get_cuda_native_handle(obj):
        if not isinstance(obj, FakeStream):
            raise TypeError("Unknown type: " + str(type(obj)))
        world.calls.append(("get_cuda_native_handle", obj.handle))
        return obj.handle

    utils.get_cuda_native_handle = get_cuda_native_handle
    return utils


def make_cudart(world: World) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = cudaError_t.cudaSuccess
    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaStreamCaptureMode = cudaStreamCaptureMode

    def failed(name, code):
        world.last_error = int(code)  # every failing runtime call records its error
        return cudaError_t(code)

    def result(name, *values):
        world.calls.append((name, *values))
        if name in world.fail:
            return (failed(name, world.fail[name]),) + tuple(None for _ in values)
        return (ok, *values)

    def get_last_error():
        err, world.last_error = world.last_error, 0
        world.calls.append(("cudaGetLastError", err))
        return (cudaError_t(err),)

    rt.cudaGetLastError = get_last_error
    rt.cudaGetErrorName = lambda err: (ok, cudaError_t(int(err)).name.encode())
    rt.cudaSetDevice = lambda dev: result("cudaSetDevice")[:1]
    rt.cudaDriverGetVersion = lambda: result("cudaDriverGetVersion", world.driver_version)
    rt.cudaGetDeviceProperties = lambda dev: result("cudaGetDeviceProperties", types.SimpleNamespace(
        name=world.device_name.encode() + b"\0" * 8, major=world.cc[0], minor=world.cc[1]))

    def malloc(kind):
        def f(n):
            broken = _unsafe_now(world) if kind == "cudaMalloc" else None
            if broken is not None:
                world.invalidated.add(broken)
                world.calls.append((kind, n))
                return (failed(kind, cudaError_t.cudaErrorStreamCaptureUnsupported), 0)
            if kind in world.fail:
                world.calls.append((kind, n))
                return (failed(kind, world.fail[kind]), 0)
            addr = world.alloc(n, world.device_offset if kind == "cudaMalloc" else 0)
            world.calls.append((kind, n, addr))
            return (ok, addr)
        return f

    rt.cudaMallocHost = malloc("cudaMallocHost")
    rt.cudaMalloc = malloc("cudaMalloc")

    def free(kind):
        def f(addr):
            world.freed.append(world.buffers.pop(int(addr), None))
            return result(kind, int(addr))[:1]
        return f

    rt.cudaFreeHost = free("cudaFreeHost")
    rt.cudaFree = free("cudaFree")

    def stream_create():
        s = FakeStream(world)
        world.streams.add(s.handle)
        world.calls.append(("cudaStreamCreate", s.handle))
        return (ok, s)

    def stream_destroy(s):
        world.streams.discard(_h(s))
        return result("cudaStreamDestroy", _h(s))[:1]

    def synchronize(s):
        if _h(s) in world.capturing:  # not permitted while capturing: breaks the capture
            world.invalidated.add(_h(s))
            world.calls.append(("cudaStreamSynchronize", _h(s)))
            return (failed("cudaStreamSynchronize", cudaError_t.cudaErrorStreamCaptureUnsupported),)
        return result("cudaStreamSynchronize", _h(s))[:1]

    def query(s):
        world.calls.append(("cudaStreamQuery", _h(s)))
        if _h(s) not in world.streams:
            return (failed("cudaStreamQuery", cudaError_t.cudaErrorInvalidResourceHandle),)
        return (ok,)

    rt.cudaStreamCreate = stream_create
    rt.cudaStreamDestroy = stream_destroy
    rt.cudaStreamSynchronize = synchronize
    rt.cudaStreamQuery = query
    rt.cudaStream_t = lambda init_value=0: types.SimpleNamespace(handle=int(init_value))
    rt.cudaStreamIsCapturing = lambda s: (ok, 1 if _h(s) in world.capturing else 0)  # cudaStreamCaptureStatus

    def memcpy(dst, src, n, kind, stream):
        direction = "htod" if kind == 1 else "dtoh"
        res = result("cudaMemcpyAsync", direction, int(n), _h(stream))
        if res[0] == ok:
            op = lambda: ctypes.memmove(int(dst), int(src), int(n))  # noqa: E731
            if _h(stream) in world.capturing:
                world.capturing[_h(stream)].append(op)  # recorded, not run
            else:
                op()
        return res[:1]

    rt.cudaMemcpyAsync = memcpy

    def begin(stream, mode):
        res = result("cudaStreamBeginCapture", _h(stream), cudaStreamCaptureMode(int(mode)).name)
        if res[0] == ok:
            world.capturing[_h(stream)] = []
            world.capture_modes[_h(stream)] = (cudaStreamCaptureMode(int(mode)), threading.get_ident())
        return res[:1]

    def end(stream):
        ops = world.capturing.pop(_h(stream), [])
        world.capture_modes.pop(_h(stream), None)
        if _h(stream) in world.invalidated:
            world.invalidated.discard(_h(stream))
            world.calls.append(("cudaStreamEndCapture",))
            return (failed("cudaStreamEndCapture", cudaError_t.cudaErrorStreamCaptureInvalidated), None)
        return result("cudaStreamEndCapture", ("graph", tuple(ops)))

    rt.cudaStreamBeginCapture = begin
    rt.cudaStreamEndCapture = end
    rt.cudaGraphInstantiate = lambda g, flags: result("cudaGraphInstantiate", ("exec", g[1]))
    rt.cudaGraphDestroy = lambda g: result("cudaGraphDestroy")[:1]
    rt.cudaGraphExecDestroy = lambda g: result("cudaGraphExecDestroy")[:1]

    def launch(graph_exec, stream):
        res = result("cudaGraphLaunch", _h(stream))
        for op in graph_exec[1]:
            op()
        return res[:1]

    rt.cudaGraphLaunch = launch
    return rt


def make_pycuda_driver(world: World) -> types.ModuleType:
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    class MemoryError_(Error):
        pass

    drv.Error, drv.LogicError, drv.MemoryError = Error, LogicError, MemoryError_
    drv.__version__ = "2026.1"

    def check(name):
        world.calls.append((name,))
        if name in world.fail:
            raise MemoryError_(f"{name} failed: out of memory")

    drv.init = lambda: check("init")
    drv.device_attribute = types.SimpleNamespace(COMPUTE_CAPABILITY_MAJOR="major", COMPUTE_CAPABILITY_MINOR="minor")
    drv.get_driver_version = lambda: world.driver_version

    class Context:
        def push(self):
            check("Context.push")
            world.ctx_stack.append(self)

        @staticmethod
        def pop():  # pycuda: a static method that pops whatever context is current
            check("Context.pop")
            if not world.ctx_stack:
                raise LogicError("cuCtxPopCurrent failed: invalid device context")
            world.ctx_stack.pop()

    drv.Context = Context

    class Device:
        def __init__(self, n):
            self.n = n

        def retain_primary_context(self):
            return Context()

        def name(self):
            return world.device_name

        def get_attribute(self, attr):
            return world.cc[0] if attr == "major" else world.cc[1]

    drv.Device = Device

    def pagelocked_empty(shape, dtype):
        check("pagelocked_empty")
        return np.empty(shape, dtype)

    class Alloc:
        def __init__(self, n):
            self.ptr = world.alloc(n)

        def __int__(self):
            return self.ptr

        def free(self):
            world.calls.append(("free",))
            world.freed.append(world.buffers.pop(self.ptr, None))

    def mem_alloc(n):
        check("mem_alloc")
        return Alloc(n)

    class Stream:
        def __init__(self):
            self._s = FakeStream(world)
            self.handle = self._s.handle

        def synchronize(self):
            check("Stream.synchronize")

    def htod(dst, src, stream):
        world.calls.append(("cudaMemcpyAsync", "htod", src.nbytes, stream.handle))
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def dtoh(dst, src, stream):
        world.calls.append(("cudaMemcpyAsync", "dtoh", dst.nbytes, stream.handle))
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    drv.pagelocked_empty, drv.mem_alloc, drv.Stream = pagelocked_empty, mem_alloc, Stream
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = htod, dtoh
    return drv
