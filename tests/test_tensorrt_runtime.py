"""The TensorRT runtime backend driven through the fake TensorRT and CUDA modules (no GPU needed).

Engines are built by the real build code from real ONNX graphs; fake device memory is host memory, so
pixels really travel pinned buffer -> "device" -> engine -> "device" -> pinned buffer, and outputs are
compared with ONNX Runtime on the same graph.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.export.tensorrt import BuildOptions, engine_from_onnx
from deepfusionnet.runtime.backends.cuda import CudaBindings, CudaError, PyCuda
from deepfusionnet.runtime.backends.tensorrt import TensorRTBackend
from deepfusionnet.runtime.images import read_image
from deepfusionnet.runtime.processing import to_tensor
from fakes.cuda import World, cudaError_t, make_cudart, make_pycuda_driver
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
    assert "no CUDA Python API found" in str(err.value) and "cuda-python" in str(err.value)
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

    _, engine = make_engine(tmp_path, trt, cuda)
    assert verify_engine(engine, {}, trt=trt) == "deserialized by TensorRT 10.3.0.30"
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"\x00garbage plan")
    with pytest.raises(DFNError, match="could not deserialize this engine"):
        verify_engine(junk, {}, trt=trt)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # TensorRT absent
    with pytest.raises(DFNError, match="no sidecar .* and TensorRT is not installed"):
        verify_engine(junk, {})
    assert verify_engine(junk, {"engine_bytes": junk.stat().st_size}).startswith("not verified")
