"""The TensorRT runtime backend driven through the fake TensorRT and CUDA modules (no GPU needed).

Engines are built by the real build code from real ONNX graphs; fake device memory is host memory, so
pixels really travel pinned buffer -> "device" -> engine -> "device" -> pinned buffer, and outputs are
compared with ONNX Runtime on the same graph.
"""

from __future__ import annotations

import json
import sys
import types
import warnings

import numpy as np
import onnxruntime as ort
import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.export.tensorrt import BuildOptions, engine_from_onnx
from deepfusionnet.runtime.backends.cuda import CudaBindings, CudaError, PyCuda
from deepfusionnet.runtime.backends.tensorrt import TensorRTBackend
from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.processing import to_tensor
from fakes.cuda import World, cudaError_t, make_bindings_utils, make_cudart, make_pycuda_driver
from fakes.graphs import make_onnx
from fakes.tensorrt import make_tensorrt, reference


@pytest.fixture
def world():
    return World()


@pytest.fixture
def trt(world):
    return make_tensorrt(world)


@pytest.fixture
def cuda(world):
    return CudaBindings(make_cudart(world), version="12.9.10")


@pytest.fixture
def frame(samples):
    """A real night photo crop, float32 NCHW in [0, 1]."""
    path = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    return to_tensor(read_image(path)[:48, :64])


def make_engine(tmp_path, trt, cuda, options=BuildOptions(min_shape=(16, 16)), **graph):
    onnx = make_onnx(tmp_path / "m.onnx", **graph)
    engine_from_onnx(onnx, tmp_path / "m.engine", options, trt=trt, cuda=cuda)
    return onnx, tmp_path / "m.engine"


def ort_run(onnx, x):
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_infer_matches_onnxruntime_and_call_order(tmp_path, world, trt, cuda, frame):
    onnx, engine = make_engine(tmp_path, trt, cuda)
    be = TensorRTBackend(engine, trt=trt, cuda=cuda)
    assert [i.name for i in be.inputs] == ["input"] and be.inputs[0].shape == (1, 3, None, None)
    world.calls.clear()
    y = be.infer({"input": frame})["output"]
    np.testing.assert_allclose(y, ort_run(onnx, frame), rtol=0, atol=1e-6)
    names = world.names()
    # Input shape first, then the output shape read back, then addresses, copies in, execute, copies out, sync.
    assert names.index("set_input_shape") < names.index("context.get_tensor_shape") < names.index("set_tensor_address")
    seq = [c for c in world.calls if c[0] in ("cudaMemcpyAsync", "execute_async_v3", "cudaStreamSynchronize")]
    stream = int(be.stream)
    assert seq == [("cudaMemcpyAsync", "htod", frame.nbytes, stream), ("execute_async_v3", stream),
                   ("cudaMemcpyAsync", "dtoh", frame.nbytes, stream), ("cudaStreamSynchronize", stream)]
    # Pinned host + device buffers sized from dtype x shape, allocated once and reused for the same shape.
    allocs = [c for c in world.calls if c[0] in ("cudaMallocHost", "cudaMalloc")]
    assert sorted(c[1] for c in allocs) == [frame.nbytes] * 4
    world.calls.clear()
    be.infer({"input": frame})
    assert not [c for c in world.calls if c[0].startswith("cudaMalloc")]
    be.close()
    assert world.names().count("cudaFree") == 2 and world.names().count("cudaFreeHost") == 2
    assert "cudaStreamDestroy" in world.names()


def test_buffer_sizes_follow_tensor_dtypes_and_output_shapes(tmp_path, world, trt, cuda, frame):
    onnx, engine = make_engine(tmp_path, trt, cuda, scale=2, precision="fp16", model="deepfusionnet-sr")
    be = TensorRTBackend(engine, trt=trt, cuda=cuda)
    assert be.inputs[0].dtype == "float16" and be.outputs[0].dtype == "float16"
    x = frame.astype(np.float16)
    world.calls.clear()
    y = be.infer({"input": frame})["output"]  # float32 feed is converted to the engine's float16
    assert y.dtype == np.float16 and y.shape == (1, 3, 96, 128)
    sizes = sorted(c[1] for c in world.calls if c[0] == "cudaMalloc")
    assert sizes == [x.nbytes, x.nbytes * 4]  # 2 bytes per value; output 2x in H and W
    np.testing.assert_array_equal(y, ort_run(onnx, x))


def test_sidecar_mismatch_fails_with_rebuild_command(tmp_path, world, trt, cuda):
    _, engine = make_engine(tmp_path, trt, cuda, BuildOptions(shape=(64, 64)))
    other = make_tensorrt(world, "10.7.0.23")
    with pytest.raises(DFNError) as err:
        TensorRTBackend(engine, trt=other, cuda=cuda)
    msg = str(err.value)
    assert "built with TensorRT 10.3.0.30 but this is TensorRT 10.7.0.23" in msg and "\n" not in msg
    assert msg.endswith(f"dfn build {tmp_path / 'm.onnx'} -o {engine} --shape 64x64")
    world2 = World(device_name="NVIDIA GeForce RTX 4090", cc=(8, 9))
    with pytest.raises(DFNError, match=r"built for Orin \(compute capability 8.7\) but this GPU is NVIDIA GeForce"):
        TensorRTBackend(engine, trt=trt, cuda=CudaBindings(make_cudart(world2)))
    world3 = World(device_name="Orin NX")
    with pytest.raises(DFNError, match="built on Orin but this GPU is Orin NX"):
        TensorRTBackend(engine, trt=trt, cuda=CudaBindings(make_cudart(world3)))
    TensorRTBackend(engine, trt=trt, cuda=CudaBindings(make_cudart(world3)), check_sidecar=False).close()


def test_deserialize_returning_none_is_a_clear_error(tmp_path, world, trt, cuda):
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"\x00garbage plan")
    with pytest.raises(DFNError) as err:
        TensorRTBackend(bad, trt=trt, cuda=cuda)
    assert "could not deserialize this engine (IRuntime::deserializeCudaEngine" in str(err.value)
    # No sidecar to warn first (e.g. a plan copied without its .json): TensorRT's own message is shown.
    _, engine = make_engine(tmp_path, trt, cuda)
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(DFNError, match="expecting library version 11.4.0.106 got 10.3.0.30"):
        TensorRTBackend(engine, trt=make_tensorrt(world, "11.4.0.106"), cuda=cuda)
    with pytest.raises(DFNError, match="no such engine file"):
        TensorRTBackend(tmp_path / "missing.engine", trt=trt, cuda=cuda)


def test_cuda_errors_become_clear_messages(tmp_path, world, trt, frame):
    _, engine = make_engine(tmp_path, trt, CudaBindings(make_cudart(world)))
    world.fail["cudaMalloc"] = cudaError_t.cudaErrorMemoryAllocation
    be = TensorRTBackend(engine, trt=trt, cuda=CudaBindings(make_cudart(world)))
    with pytest.raises(CudaError) as err:
        be.infer({"input": frame})
    assert str(err.value).startswith("CUDA cudaMalloc failed: cudaErrorMemoryAllocation (2); out of GPU memory")
    with pytest.raises(CudaError, match="cuda-bindings 13.0.1 needs a CUDA 13 driver.*supports CUDA 12.6.*cuda-bindings==12"):
        CudaBindings(make_cudart(World()), version="13.0.1")
    w = World(fail={"cudaSetDevice": cudaError_t.cudaErrorNoDevice})
    with pytest.raises(CudaError, match="cudaErrorNoDevice.*no CUDA-capable GPU"):
        CudaBindings(make_cudart(w))
    drv_world = World(fail={"mem_alloc": 1})
    pc = PyCuda(make_pycuda_driver(drv_world))
    with pytest.raises(CudaError, match=r"CUDA mem_alloc failed \(pycuda\): mem_alloc failed: out of memory"):
        pc.device_alloc(16)


def test_cuda_graph_capture_and_replay(tmp_path, world, trt, cuda, frame):
    onnx, engine = make_engine(tmp_path, trt, cuda)
    be = TensorRTBackend(engine, trt=trt, cuda=cuda, cuda_graph=True)
    ref = ort_run(onnx, frame)
    world.calls.clear()
    np.testing.assert_allclose(be.infer({"input": frame})["output"], ref, atol=1e-6)
    names = world.names()
    # one plain enqueue (after the shape change), then a captured one that does not run
    assert names.count("execute_async_v3") == 2 and names.count("kernel") == 1
    assert names.index("cudaStreamBeginCapture") < names.index("cudaGraphInstantiate")
    # thread-local capture, as trtexec: a global one breaks CUDA work on other threads while it is open
    assert ("cudaStreamBeginCapture", int(be.stream), "cudaStreamCaptureModeThreadLocal") in world.calls
    world.calls.clear()
    other = np.ascontiguousarray(frame[..., ::-1])
    np.testing.assert_allclose(be.infer({"input": other})["output"], ort_run(onnx, other), atol=1e-6)
    names = world.names()
    assert "execute_async_v3" not in names and names.count("cudaGraphLaunch") == 1 and names.count("kernel") == 1
    world.calls.clear()
    small = np.ascontiguousarray(frame[..., :32, :40])  # new shape: re-capture
    np.testing.assert_allclose(be.infer({"input": small})["output"], ort_run(onnx, small), atol=1e-6)
    assert "cudaGraphExecDestroy" in world.names() and world.names().count("cudaStreamBeginCapture") == 1
    be.close()


def test_shapes_outside_the_engine_are_padded_or_tiled(tmp_path, world, trt, cuda, frame):
    onnx, engine = make_engine(tmp_path, trt, cuda, BuildOptions(shape=(32, 40)))
    be = TensorRTBackend(engine, trt=trt, cuda=cuda)
    assert be.shape_range("input") == ((1, 3, 32, 40),) * 3
    small = np.ascontiguousarray(frame[..., :20, :30])
    y = be.infer({"input": small})["output"]
    assert y.shape == small.shape
    np.testing.assert_allclose(y, reference(small), atol=1e-6)
    y = be.infer({"input": frame})["output"]  # 48x64 > 32x40: tiled
    np.testing.assert_allclose(y, ort_run(onnx, frame), atol=1e-5)
    strict = TensorRTBackend(engine, trt=trt, cuda=cuda, fit=False)
    with pytest.raises(DFNError, match="has shape 1x3x48x64 but this engine accepts exactly 1x3x32x40"):
        strict.infer({"input": frame})
    with pytest.raises(DFNError, match="do not match the engine inputs"):
        strict.infer({"image": frame})


def test_pycuda_route_gives_the_same_result(tmp_path, world, trt, cuda, frame, capsys):
    onnx, engine = make_engine(tmp_path, trt, cuda)
    pw = World()
    be = TensorRTBackend(engine, trt=trt, cuda=PyCuda(make_pycuda_driver(pw)))
    np.testing.assert_allclose(be.infer({"input": frame})["output"], ort_run(onnx, frame), atol=1e-6)
    assert [c[1] for c in pw.calls if c[0] == "cudaMemcpyAsync"] == ["htod", "dtoh"]
    be.close()
    # pycuda has no graph capture here: the backend says so once and runs without graphs.
    be = TensorRTBackend(engine, trt=trt, cuda=PyCuda(make_pycuda_driver(World())), cuda_graph=True)
    np.testing.assert_allclose(be.infer({"input": frame})["output"], ort_run(onnx, frame), atol=1e-6)
    assert be.cuda_graph is False and "CUDA graphs need CUDA Python" in capsys.readouterr().err


def test_engine_through_the_enhancer_like_dfn_enhance(tmp_path, world, trt, cuda, samples, monkeypatch):
    """open_enhancer on an .engine picks the tensorrt backend from the registry, as dfn enhance does."""
    from deepfusionnet.runtime.backends import tensorrt as trt_backend
    from deepfusionnet.runtime.enhancer import open_enhancer
    from deepfusionnet.runtime.processing import to_image

    onnx, engine = make_engine(tmp_path, trt, cuda, scale=2, model="deepfusionnet-sr")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "open_cuda", lambda *a, **k: cuda)
    enh = open_enhancer(str(engine))
    assert enh.backend.name == "tensorrt" and enh.scale == 2  # scale from the engine's sidecar
    path = sorted(p for p in samples.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    rgb = read_image(path)[:37, :53]  # odd size: the enhancer pads to the multiple, the engine profile fits it
    out = enh(rgb)
    assert out.shape == (74, 106, 3)
    np.testing.assert_array_equal(out, to_image(reference(to_tensor(rgb), 2)))
    enh.close()


def test_sidecar_of_the_engine_carries_model_fields(tmp_path, trt, cuda):
    from deepfusionnet.runtime.artifacts import resolve

    _, engine = make_engine(tmp_path, trt, cuda, scale=2, model="deepfusionnet-sr", multiple=16)
    art = resolve(engine)
    assert (art.kind, art.model, art.scale, art.multiple) == ("engine", "deepfusionnet-sr", 2, 16)
    assert json.loads((tmp_path / "m.engine.json").read_text())["onnx"]["path"] == str(tmp_path / "m.onnx")


def test_onnxruntime_trt_ep_option(tmp_path):
    from deepfusionnet.runtime.backends.onnxruntime import OnnxRuntimeBackend, tensorrt_ep_providers

    onnx = make_onnx(tmp_path / "m.onnx")
    providers = tensorrt_ep_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                                      onnx, tmp_path / "cache")
    name, opts = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts == {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path / "cache"),
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path / "cache"),
                    "trt_fp16_enable": False}
    with pytest.raises(DFNError, match="TensorRT execution provider is not available"):
        OnnxRuntimeBackend(onnx, trt_ep=True)
    assert OnnxRuntimeBackend(onnx).providers == ["CPUExecutionProvider"]  # the CPU default is untouched


def test_trt11_builds_and_runs_the_same_way(tmp_path, world, cuda, frame):
    trt11 = make_tensorrt(world, "11.4.0.106")
    onnx, engine = make_engine(tmp_path, trt11, cuda, precision="fp16")
    be = TensorRTBackend(engine, trt=trt11, cuda=cuda)
    x = frame.astype(np.float16)
    np.testing.assert_array_equal(be.infer({"input": x})["output"], ort_run(onnx, x))
    be.close()


def test_missing_tensorrt_or_cuda_python_is_one_line(tmp_path, monkeypatch, trt, cuda):
    from deepfusionnet.runtime.backends.base import load_backend
    from deepfusionnet.runtime.backends.cuda import open_cuda

    _, engine = make_engine(tmp_path, trt, cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DFNError, match="TensorRT is not installed .*pip install tensorrt"):
        load_backend("tensorrt", engine)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DFNError) as err:
        open_cuda()
    assert "no CUDA Python API found" in str(err.value) and "cuda-bindings" in str(err.value)
    assert "\n" not in str(err.value)


def test_corrupt_or_swapped_engine_is_caught_by_its_sidecar_hash(tmp_path, world, trt, cuda):
    from deepfusionnet.runtime.artifacts import read_sidecar
    from deepfusionnet.runtime.backends.tensorrt import verify_engine

    _, engine = make_engine(tmp_path, trt, cuda)
    sidecar = read_sidecar(engine)
    assert verify_engine(engine, sidecar) == "sha256 matches the sidecar"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the hash sees it
    engine.write_bytes(bytes(data))
    for check in (lambda: verify_engine(engine, sidecar), lambda: TensorRTBackend(engine, trt=trt, cuda=cuda)):
        with pytest.raises(DFNError, match="sha256 differs from its sidecar.*rebuild it: dfn build"):
            check()
    engine.write_bytes(bytes(data[:-10]))
    with pytest.raises(DFNError, match=r"bytes but its sidecar recorded \d+"):
        verify_engine(engine, sidecar)


def test_verify_engine_without_sidecar_deserializes_or_says_it_cannot(tmp_path, world, trt, cuda, monkeypatch):
    from deepfusionnet.runtime.backends.tensorrt import verify_engine
    from deepfusionnet.runtime.sidecar import Sidecar

    _, engine = make_engine(tmp_path, trt, cuda)
    assert verify_engine(engine, Sidecar(), trt=trt) == "deserialized by TensorRT 10.3.0.30"
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"\x00garbage plan")
    with pytest.raises(DFNError, match="could not deserialize this engine"):
        verify_engine(junk, Sidecar(), trt=trt)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # TensorRT absent
    with pytest.raises(DFNError, match="no sidecar .* and TensorRT is not installed"):
        verify_engine(junk, Sidecar())
    assert verify_engine(junk, Sidecar(engine_bytes=junk.stat().st_size)).startswith("not verified")


def _three_frames(frame):
    return [frame, np.ascontiguousarray(frame[..., ::-1]), np.ascontiguousarray(1.0 - frame)]


@pytest.mark.parametrize("failure", ["invalidate", "refuse"])
def test_failed_capture_falls_back_and_never_replays_a_stale_graph(tmp_path, world, trt, cuda, frame, failure,
                                                                    capsys):
    """execute_async_v3 returning False under capture (trtexec's two cases: the capture was invalidated, or
    TensorRT refused) ends the capture, discards it, clears the pending CUDA error and runs plainly."""
    onnx, engine = make_engine(tmp_path, trt, cuda)
    be = TensorRTBackend(engine, trt=trt, cuda=cuda, cuda_graph=True)
    world.capture_failure = failure
    frames = _three_frames(frame)
    world.calls.clear()
    np.testing.assert_allclose(be.infer({"input": frames[0]})["output"], ort_run(onnx, frames[0]), atol=1e-6)
    names = world.names()
    assert "cudaGraphInstantiate" not in names and be.cuda_graph is False
    assert names.index("cudaStreamEndCapture") < names.index("cudaGetLastError") and world.last_error == 0
    if failure == "refuse":  # the capture ended with a graph; it must be destroyed, not kept
        assert "cudaGraphDestroy" in names
    err = capsys.readouterr().err
    assert err.count("running without graphs") == 1 and "cannot run inside a CUDA graph" in err
    for x in frames[1:]:  # every later frame is computed, not frame 1 replayed
        world.calls.clear()
        np.testing.assert_allclose(be.infer({"input": x})["output"], ort_run(onnx, x), atol=1e-6)
        assert world.names().count("kernel") == 1 and "cudaGraphLaunch" not in world.names()
        assert "cudaStreamBeginCapture" not in world.names()
    be.close()


def test_failed_end_capture_clears_the_pending_error(tmp_path, world, trt, cuda, frame, capsys):
    onnx, engine = make_engine(tmp_path, trt, cuda)
    be = TensorRTBackend(engine, trt=trt, cuda=cuda, cuda_graph=True)
    world.fail["cudaStreamEndCapture"] = cudaError_t.cudaErrorStreamCaptureInvalidated
    for x in _three_frames(frame):
        np.testing.assert_allclose(be.infer({"input": x})["output"], ort_run(onnx, x), atol=1e-6)
    assert world.last_error == 0 and "cudaGetLastError" in world.names()
    assert be.cuda_graph is False and "cudaErrorStreamCaptureInvalidated" in capsys.readouterr().err
    be.close()


def test_stream_handle_is_the_raw_handle_never_a_pointer_to_it(tmp_path, monkeypatch):
    """cuda-bindings: get_cuda_native_handle(s) / int(s) are the handle, s.getPtr() is &handle."""
    gone = World(stream_int="removed", driver_version=13000)  # a cuda-bindings where int() is gone
    bare = CudaBindings(make_cudart(gone), version="13.9.0")  # ... and no cuda.bindings.utils either
    stream = bare.stream_create()
    assert stream.getPtr() != stream.handle
    with pytest.raises(CudaError, match="no raw CUDA stream handle.*12.9.1"):
        bare.stream_handle(stream)  # refused, never the pointer to the handle
    old = World()  # cuda-bindings 12.8 - 12.9.0: int() is the way, and there is no utils module
    s = CudaBindings(make_cudart(old)).stream_create()
    assert CudaBindings(make_cudart(old)).stream_handle(s) == s.handle

    # cuda-bindings 12.9.1+ / 13.x: get_cuda_native_handle, so the deprecated int() is never called.
    world = World(stream_int="deprecated", driver_version=13000)
    for name, mod in (("cuda", types.ModuleType("cuda")),
                      ("cuda.bindings", types.ModuleType("cuda.bindings")),
                      ("cuda.bindings.runtime", make_cudart(world)),
                      ("cuda.bindings.utils", make_bindings_utils(world))):
        monkeypatch.setitem(sys.modules, name, mod)
    sys.modules["cuda.bindings"].__version__ = "13.0.1"
    from deepfusionnet.runtime.backends.cuda import open_cuda

    cuda = open_cuda("cuda-bindings")
    trt = make_tensorrt(world)
    _, engine = make_engine(tmp_path, trt, cuda)
    x = np.random.default_rng(0).random((1, 3, 16, 24), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        be = TensorRTBackend(engine, trt=trt, cuda=cuda, cuda_graph=True)
        for _ in range(2):  # capture, then replay
            np.testing.assert_allclose(be.infer({"input": x})["output"], reference(x), atol=1e-6)
    on = ("execute_async_v3", "cudaMemcpyAsync", "cudaGraphLaunch")
    streams = {c[-1] for c in world.calls if c[0] in on}
    assert streams == {be.stream.handle}
    be.close()


def test_refused_tensor_address_is_a_clear_error(tmp_path, trt, cuda, frame):
    """set_tensor_address returns False (TensorRT 10.x) for a misaligned address: one line, no stale run."""
    _, engine = make_engine(tmp_path, trt, cuda)
    skewed = World(device_offset=8)  # device buffers off TensorRT's 256-byte alignment
    be = TensorRTBackend(engine, trt=trt, cuda=CudaBindings(make_cudart(skewed)))
    with pytest.raises(DFNError) as err:
        be.infer({"input": frame})
    msg = str(err.value)
    assert "TensorRT refused the device address of tensor 'input'" in msg and "% 256" in msg
    assert "\n" not in msg
    assert "execute_async_v3" not in skewed.names()


def test_pycuda_context_is_popped_on_close_and_at_exit(tmp_path, world, trt, cuda, frame, monkeypatch):
    """pycuda aborts at exit when its context stack is not empty: each push is popped, on close or at exit."""
    import atexit

    from deepfusionnet.runtime.backends import tensorrt as trt_backend

    at_exit = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    monkeypatch.setattr(atexit, "unregister", at_exit.remove)
    onnx, engine = make_engine(tmp_path, trt, cuda)
    pw = World()
    pc = PyCuda(make_pycuda_driver(pw))
    assert len(pw.ctx_stack) == 1
    monkeypatch.setattr(trt_backend, "open_cuda", lambda *a, **k: pc)  # the backend opens it, so it closes it
    be = TensorRTBackend(engine, trt=trt)
    np.testing.assert_allclose(be.infer({"input": frame})["output"], ort_run(onnx, frame), atol=1e-6)
    be.close()
    names = pw.names()
    assert pw.ctx_stack == [] and at_exit == [] and names.count("Context.pop") == 1
    assert names.index("Context.pop") > max(i for i, n in enumerate(names) if n == "free")  # buffers first
    pc.close()
    assert pw.names().count("Context.pop") == 1  # once only
    # Never closed: the exit hook pops it, before pycuda's own clean-up would abort on a non-empty stack.
    lost = World()
    PyCuda(make_pycuda_driver(lost))
    at_exit[0]()
    assert lost.ctx_stack == [] and at_exit == []
    # A CUDA interface handed in by the caller stays the caller's to close.
    mine = World()
    pc3 = PyCuda(make_pycuda_driver(mine))
    TensorRTBackend(engine, trt=trt, cuda=pc3).close()
    assert len(mine.ctx_stack) == 1
    pc3.close()
    assert mine.ctx_stack == []


def _load_gpu_check():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _install_fake_cuda_bindings(monkeypatch, world, version="13.0.1"):
    rt = make_cudart(world)
    pkg = types.ModuleType("cuda.bindings")
    pkg.__version__, pkg.runtime = version, rt
    for name, mod in (("cuda", types.ModuleType("cuda")), ("cuda.bindings", pkg),
                      ("cuda.bindings.runtime", rt), ("cuda.bindings.utils", make_bindings_utils(world))):
        monkeypatch.setitem(sys.modules, name, mod)
    rt.cudaGetDeviceCount = lambda: (cudaError_t.cudaSuccess, 1)
    return rt


def test_gpu_check_cuda_layer_runs_on_the_doubles(monkeypatch):
    """benchmarks/gpu_check.py part (a) through the fake cuda-bindings: every check passes, and the
    other-thread check is a real one (it fails when the capture is global, as the old code's was)."""
    gpu_check = _load_gpu_check()
    world = World(driver_version=13000)
    rt = _install_fake_cuda_bindings(monkeypatch, world)
    res = gpu_check.cuda_layer(nbytes=4096)
    assert res["ok"], res["checks"]
    assert set(res["checks"]) == {
        "stream_handle_is_a_live_stream", "pinned_h2d_d2h_round_trip", "graph_replay_follows_input",
        "other_thread_cudaMalloc_during_threadlocal_capture", "failed_capture_is_ended_and_error_cleared",
        "copies_after_failed_capture"}
    assert world.capturing == {} and world.last_error == 0
    glob = rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
    monkeypatch.setattr(rt, "cudaStreamCaptureMode",
                        types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=glob))
    res = gpu_check.cuda_layer(nbytes=4096)
    assert not res["checks"]["other_thread_cudaMalloc_during_threadlocal_capture"]["ok"]


def test_gpu_check_without_cuda_says_so_and_exits_4(monkeypatch, tmp_path, capsys):
    gpu_check = _load_gpu_check()
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "torch"):
        monkeypatch.setitem(sys.modules, name, None)
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == gpu_check.NO_CUDA == 4
    assert "no CUDA GPU visible" in capsys.readouterr().err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["status"] == "no-cuda" and res["device"] is None and res["date"]


def test_gpu_check_main_on_the_doubles(monkeypatch, tmp_path, capsys):
    """With a (fake) GPU but no torch CUDA and no TensorRT: part (a) runs, (b) and (c) are skipped, exit 0."""
    gpu_check = _load_gpu_check()
    _install_fake_cuda_bindings(monkeypatch, World(driver_version=13000))
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert gpu_check.main(["--out", str(tmp_path / "r.json"), "--work", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["device"] == "Orin" and res["status"] == "ok" and res["parts"]["cuda_layer"]["ok"]
    assert res["parts"]["torch_backend"]["skipped"].startswith("torch not installed")
    assert res["parts"]["tensorrt"]["skipped"] == "TensorRT: not installed"
    assert "TensorRT: not installed, skipped" in capsys.readouterr().err
