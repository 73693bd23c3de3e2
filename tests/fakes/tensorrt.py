"""A fake ``tensorrt`` module (10.x or 11.x Python API surface used by deepfusionnet) that records calls.

The builder "compiles" a graph read with ``onnx`` into a JSON plan; the engine "runs" it by reading input
bytes at the device addresses given to ``set_tensor_address`` and writing outputs there (fake device
memory is host memory, see fakes/cuda.py). The network computes ``0.5 * x + 0.25`` at scale 1, and
nearest-neighbour 2x upsampling of that at scale 2 (``dfn.scale`` metadata of the ONNX).

Return values follow the TensorRT 10.x Python API (10.3 is JetPack 6; same in 11.x), because ignoring
them is how bugs hide: ``set_tensor_address`` returns ``False`` for a name that is not an I/O tensor or an
address that is not 256-byte aligned (NvInferRuntime.h, setTensorAddress), and ``execute_async_v3`` returns
``False`` when it could not enqueue. Under CUDA-graph capture, ``World.capture_failure`` makes it fail the
two ways trtexec's ``TrtCudaGraph::endCaptureOnError`` (samples/common/sampleDevice.h) distinguishes:
"invalidate" (an operation not permitted under capture invalidated it: the capture ends with
cudaErrorStreamCaptureInvalidated and no graph) and "refuse" (TensorRT reports failure; the capture ends
with a graph that must not be used).
"""

from __future__ import annotations

import enum
import json
import types

import numpy as np

PLAN_MAGIC = b"FAKEPLAN"


def reference(x: np.ndarray, scale: int = 1) -> np.ndarray:
    """What the fake network computes, for tests to compare against."""
    y = x.astype(np.float32) * np.float32(0.5) + np.float32(0.25)
    if scale > 1:
        y = y.repeat(scale, axis=2).repeat(scale, axis=3)
    return y


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BF16 = 7


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32}
_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 16: DataType.BF16}


def make_tensorrt(world, version: str = "10.3.0.30", dla_cores: int = 0, fail_build: bool = False,
                  steps: int = 3) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    log = world.calls
    trt.DataType = DataType

    def nptype(dt):
        if dt not in _NP:
            raise TypeError(f"no numpy type for {dt}")
        return _NP[dt]

    trt.nptype = nptype

    class ILogger:
        def __init__(self):
            pass

    class IProgressMonitor:
        def __init__(self):
            pass

    trt.ILogger, trt.IProgressMonitor = ILogger, IProgressMonitor
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1)
    flags = dict(GPU_FALLBACK="GPU_FALLBACK", TF32="TF32", REFIT="REFIT")
    if major < 11:  # removed in TensorRT 11
        flags.update(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS")
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT", NONE="NONE")

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs, self.scale = [], [], 1

        @property
        def num_inputs(self):
            return len(self.inputs)

        @property
        def num_outputs(self):
            return len(self.outputs)

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return f"In node -1 (importModel): {self.text}\nmore detail"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            import onnx

            log.append(("parse_from_file", path))
            try:
                model = onnx.load(path)
            except Exception:
                self.errors.append(ParserError("INVALID_GRAPH: failed to parse the ONNX protobuf"))
                return False
            dims = lambda vi: tuple(d.dim_value if d.HasField("dim_value") else -1  # noqa: E731
                                    for d in vi.type.tensor_type.shape.dim)
            for vi in model.graph.input:
                self.network.inputs.append(Tensor(vi.name, dims(vi), _FROM_ONNX[vi.type.tensor_type.elem_type]))
            for vi in model.graph.output:
                self.network.outputs.append(Tensor(vi.name, dims(vi), _FROM_ONNX[vi.type.tensor_type.elem_type]))
            meta = {p.key: p.value for p in model.metadata_props}
            self.network.scale = int(meta.get("dfn.scale", 1))
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class TimingCache:
        def __init__(self, entries, tag):
            self.entries, self.tag = entries, tag

        def serialize(self):
            return json.dumps({"tag": self.tag, "entries": self.entries}).encode()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            log.append(("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi)))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pool = set(), [], {}
            self.cache, self.progress_monitor = None, None
            self.default_device_type, self.DLA_core = "GPU", -1

        def set_memory_pool_limit(self, pool, size):
            log.append(("set_memory_pool_limit", pool, size))
            self.pool[pool] = size

        def set_flag(self, flag):
            log.append(("set_flag", flag))
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            log.append(("create_timing_cache", bytes(data)))
            if not data:
                return TimingCache(0, version)
            d = json.loads(bytes(data))
            return TimingCache(d["entries"], d["tag"])

        def set_timing_cache(self, cache, ignore_mismatch):
            log.append(("set_timing_cache", cache.entries, ignore_mismatch))
            if cache.tag != version and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            self.num_DLA_cores = dla_cores
            log.append(("Builder",))

        def create_network(self, flags=0):
            log.append(("create_network", flags))
            self.network = Network(flags)
            return self.network

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log.append(("build_serialized_network",))
            mon = config.progress_monitor
            if mon is not None:
                mon.phase_start("Building engine", None, steps)
                for i in range(steps):
                    if not mon.step_complete("Building engine", i):
                        mon.phase_finish("Building engine")
                        return None
                mon.phase_finish("Building engine")
            if fail_build:
                self.logger.log(1, "Error Code 4: Internal Error (could not find any implementation)")
                return None
            strongly = bool(network.flags & (1 << 1))
            if major >= 11 and config.flags & {"FP16", "INT8"}:
                raise AttributeError("BuilderFlag.FP16 does not exist in TensorRT 11")
            if config.cache is not None:
                config.cache.entries += 1  # one new tactic timed
            io = []
            profile = config.profiles[0].shapes if config.profiles else {}
            for t in network.inputs:
                io.append({"name": t.name, "mode": "INPUT", "dtype": int(t.dtype), "shape": list(t.shape),
                           "profile": [list(s) for s in profile.get(t.name, (t.shape,) * 3)]})
            for t in network.outputs:
                io.append({"name": t.name, "mode": "OUTPUT", "dtype": int(t.dtype), "shape": list(t.shape)})
            plan = {"version": version, "io": io, "scale": network.scale, "strongly_typed": strongly,
                    "fp16": "FP16" in config.flags, "dla": config.DLA_core}
            return PLAN_MAGIC + json.dumps(plan).encode()

    class Engine:
        def __init__(self, plan, logger=None):
            self.plan, self.logger = plan, logger
            self.io = plan["io"]

        @property
        def num_io_tensors(self):
            return len(self.io)

        def _t(self, name):
            return next(t for t in self.io if t["name"] == name)

        def get_tensor_name(self, i):
            log.append(("get_tensor_name", i))
            return self.io[i]["name"]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if self._t(name)["mode"] == "INPUT" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DataType(self._t(name)["dtype"])

        def get_tensor_shape(self, name):
            return tuple(self._t(name)["shape"])

        def get_tensor_profile_shape(self, name, profile_index):
            lo, opt, hi = self._t(name)["profile"]
            return tuple(lo), tuple(opt), tuple(hi)

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            shape = tuple(int(d) for d in shape)
            log.append(("set_input_shape", name, shape))
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            log.append(("context.get_tensor_shape", name))
            t = self.engine._t(name)
            if t["mode"] == "INPUT":
                return self.shapes.get(name, tuple(t["shape"]))
            src = next((s for s in self.shapes.values()), None)
            if src is None:
                return tuple(t["shape"])
            s = self.engine.plan["scale"]
            n, c, h, w = src
            return (n, t["shape"][1] if t["shape"][1] > 0 else c, h * s, w * s)

        def _error(self, text):
            if self.engine.logger is not None:
                self.engine.logger.log(1, text)
            return False

        def set_tensor_address(self, name, ptr):
            log.append(("set_tensor_address", name, int(ptr)))
            if not any(t["name"] == name for t in self.engine.io):
                return self._error(f"IExecutionContext::setTensorAddress: Error Code 3: API Usage Error "
                                   f"(Given invalid tensor name: {name})")
            if int(ptr) % 256:
                return self._error("IExecutionContext::setTensorAddress: Error Code 3: API Usage Error "
                                   "(Parameter check failed, condition: "
                                   "(reinterpret_cast<uintptr_t>(data) % 256) == 0)")
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            log.append(("execute_async_v3", int(stream_handle)))
            capturing = int(stream_handle) in world.capturing
            if capturing and world.capture_failure == "invalidate":
                # A call not permitted under capture: CUDA invalidates the capture and records the error.
                world.invalidated.add(int(stream_handle))
                world.last_error = 900  # cudaErrorStreamCaptureUnsupported
                return self._error("Error Code 1: Cuda Runtime (operation not permitted when stream is "
                                   "capturing)")
            if capturing and world.capture_failure == "refuse":
                return self._error("Error Code 2: Internal Error (enqueue failed under stream capture)")

            def run():
                ins = [t for t in self.engine.io if t["mode"] == "INPUT"]
                outs = [t for t in self.engine.io if t["mode"] == "OUTPUT"]
                src = ins[0]
                shape = self.shapes[src["name"]]
                dt = np.dtype(_NP[DataType(src["dtype"])])
                x = world.read(self.addresses[src["name"]], int(np.prod(shape)) * dt.itemsize, dt, shape)
                y = reference(x, self.engine.plan["scale"])
                for t in outs:
                    world.write(self.addresses[t["name"]], y.astype(_NP[DataType(t["dtype"])]))
                world.calls.append(("kernel", int(stream_handle)))

            if capturing:
                world.capturing[int(stream_handle)].append(run)
            else:
                run()
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            log.append(("deserialize_cuda_engine", len(data)))
            data = bytes(data)
            if not data.startswith(PLAN_MAGIC):
                self.logger.log(1, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Serialization "
                                   "assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
                return None
            plan = json.loads(data[len(PLAN_MAGIC):])
            if plan["version"] != version:
                self.logger.log(1, f"The engine plan file is not compatible with this version of TensorRT, "
                                   f"expecting library version {version} got {plan['version']}")
                return None
            return Engine(plan, self.logger)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt
