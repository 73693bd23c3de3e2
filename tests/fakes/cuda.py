"""A fake ``cuda.bindings.runtime`` (tuple-return convention of cuda-bindings 12.x/13.x) and a fake
``pycuda.driver``. "Device" memory is host memory from ctypes, so copies really move bytes; every call
is appended to ``world.calls`` so tests can check order and stream."""

from __future__ import annotations

import ctypes
import enum
import types
from dataclasses import dataclass, field

import numpy as np


@dataclass
class World:
    """Shared state of the fakes: the call log, allocations, capture state, injected failures."""

    calls: list = field(default_factory=list)
    buffers: dict = field(default_factory=dict)  # address -> ctypes buffer (keeps it alive)
    capturing: dict = field(default_factory=dict)  # stream handle -> list of captured closures
    fail: dict = field(default_factory=dict)  # call name -> cudaError_t value to return
    device_name: str = "Orin"
    cc: tuple = (8, 7)
    driver_version: int = 12060

    def alloc(self, n: int) -> int:
        buf = ctypes.create_string_buffer(max(int(n), 1))
        addr = ctypes.addressof(buf)
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
    cudaErrorStreamCaptureUnsupported = 900


class FakeStream:
    _next = 0x5000

    def __init__(self):
        FakeStream._next += 16
        self.handle = FakeStream._next

    def __int__(self):
        return self.handle


def make_cudart(world: World) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = cudaError_t.cudaSuccess
    rt.cudaError_t = cudaError_t
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)

    def result(name, *values):
        world.calls.append((name, *values))
        if name in world.fail:
            return (cudaError_t(world.fail[name]),) + tuple(None for _ in values)
        return (ok, *values)

    rt.cudaGetErrorName = lambda err: (ok, cudaError_t(int(err)).name.encode())
    rt.cudaSetDevice = lambda dev: result("cudaSetDevice")[:1]
    rt.cudaDriverGetVersion = lambda: result("cudaDriverGetVersion", world.driver_version)
    rt.cudaGetDeviceProperties = lambda dev: result("cudaGetDeviceProperties", types.SimpleNamespace(
        name=world.device_name.encode() + b"\0" * 8, major=world.cc[0], minor=world.cc[1]))

    def malloc(kind):
        def f(n):
            if kind in world.fail:
                world.calls.append((kind, n))
                return (cudaError_t(world.fail[kind]), 0)
            addr = world.alloc(n)
            world.calls.append((kind, n, addr))
            return (ok, addr)
        return f

    rt.cudaMallocHost = malloc("cudaMallocHost")
    rt.cudaMalloc = malloc("cudaMalloc")

    def free(kind):
        def f(addr):
            world.buffers.pop(int(addr), None)
            return result(kind, int(addr))[:1]
        return f

    rt.cudaFreeHost = free("cudaFreeHost")
    rt.cudaFree = free("cudaFree")

    def stream_create():
        s = FakeStream()
        world.calls.append(("cudaStreamCreate", s.handle))
        return (ok, s)

    rt.cudaStreamCreate = stream_create
    rt.cudaStreamDestroy = lambda s: result("cudaStreamDestroy", int(s))[:1]
    rt.cudaStreamSynchronize = lambda s: result("cudaStreamSynchronize", int(s))[:1]

    def memcpy(dst, src, n, kind, stream):
        direction = "htod" if kind == 1 else "dtoh"
        res = result("cudaMemcpyAsync", direction, int(n), int(stream))
        if res[0] == ok:
            ctypes.memmove(int(dst), int(src), int(n))
        return res[:1]

    rt.cudaMemcpyAsync = memcpy

    def begin(stream, mode):
        res = result("cudaStreamBeginCapture", int(stream))
        if res[0] == ok:
            world.capturing[int(stream)] = []
        return res[:1]

    def end(stream):
        ops = world.capturing.pop(int(stream), [])
        return result("cudaStreamEndCapture", ("graph", tuple(ops)))

    rt.cudaStreamBeginCapture = begin
    rt.cudaStreamEndCapture = end
    rt.cudaGraphInstantiate = lambda g, flags: result("cudaGraphInstantiate", ("exec", g[1]))
    rt.cudaGraphDestroy = lambda g: result("cudaGraphDestroy")[:1]
    rt.cudaGraphExecDestroy = lambda g: result("cudaGraphExecDestroy")[:1]

    def launch(graph_exec, stream):
        res = result("cudaGraphLaunch", int(stream))
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
            world.buffers.pop(self.ptr, None)

    def mem_alloc(n):
        check("mem_alloc")
        return Alloc(n)

    class Stream:
        def __init__(self):
            self._s = FakeStream()
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
