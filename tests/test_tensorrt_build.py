"""dfn build / export.tensorrt driven through the fake TensorRT and CUDA modules (no GPU needed)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.export.tensorrt import BuildOptions, engine_from_onnx, hw_from_size, resolve_profile
from deepfusionnet.runtime.backends.cuda import CudaBindings
from fakes.cuda import World, make_cudart
from fakes.graphs import make_onnx
from fakes.tensorrt import PLAN_MAGIC, make_tensorrt


@pytest.fixture
def world():
    return World()


@pytest.fixture
def cuda(world):
    return CudaBindings(make_cudart(world), version="12.9.10")


def build(tmp_path, world, cuda, trt=None, options=None, onnx=None, **kw):
    trt = trt or make_tensorrt(world)
    onnx = onnx or make_onnx(tmp_path / "m.onnx")
    return engine_from_onnx(onnx, tmp_path / "m.engine", options or BuildOptions(), trt=trt, cuda=cuda, **kw)


@pytest.mark.parametrize("version", ["10.3.0.30", "11.4.0.106"])
def test_strongly_typed_network_on_trt10_and_trt11(tmp_path, world, cuda, version):
    res = build(tmp_path, world, cuda, make_tensorrt(world, version), onnx=make_onnx(tmp_path / "m.onnx", precision="fp16"))
    assert ("create_network", 1 << 1) in world.calls  # 1 << STRONGLY_TYPED
    assert not [c for c in world.calls if c[0] == "set_flag"]  # no precision flags: precision is in the graph
    assert res["strongly_typed"] and res["precision"] == "fp16" and res["tensorrt"] == version


def test_fp16_flag_only_on_trt10(tmp_path, world, cuda):
    res = build(tmp_path, world, cuda, make_tensorrt(world, "10.3.0.30"), BuildOptions(fp16_flag=True))
    assert ("create_network", 0) in world.calls and ("set_flag", "FP16") in world.calls
    assert res["strongly_typed"] is False and res["precision"] == "fp16"
    assert json.loads((tmp_path / "m.engine").read_bytes()[len(PLAN_MAGIC):])["fp16"] is True
    with pytest.raises(DFNError, match="removed BuilderFlag.FP16"):
        build(tmp_path, world, cuda, make_tensorrt(world, "11.4.0.106"), BuildOptions(fp16_flag=True))
    with pytest.raises(DFNError, match="already fp16"):
        build(tmp_path, world, cuda, make_tensorrt(world, "10.3.0.30"), BuildOptions(fp16_flag=True),
              onnx=make_onnx(tmp_path / "h.onnx", precision="fp16"))


def test_profile_defaults_fixed_shape_and_validation(tmp_path, world, cuda):
    build(tmp_path, world, cuda)
    assert ("profile.set_shape", "input", (1, 3, 64, 64), (1, 3, 480, 640), (1, 3, 1024, 1024)) in world.calls
    world.calls.clear()
    res = build(tmp_path, world, cuda, options=BuildOptions(shape=hw_from_size("640x480")))
    assert ("profile.set_shape", "input", (1, 3, 480, 640), (1, 3, 480, 640), (1, 3, 480, 640)) in world.calls
    assert res["profile"]["input"]["min"] == res["profile"]["input"]["max"] == [1, 3, 480, 640]
    opts = BuildOptions(min_shape=(256, 256), opt_shape=(720, 1280), max_shape=(1088, 1920))
    assert resolve_profile("input", (1, 3, -1, -1), opts, 8) == ((1, 3, 256, 256), (1, 3, 720, 1280), (1, 3, 1088, 1920))
    # only bounds given: the default opt is kept inside them
    assert resolve_profile("input", (1, 3, -1, -1), BuildOptions(max_shape=(256, 256)), 8)[1] == (1, 3, 256, 256)
    with pytest.raises(DFNError, match="min size 640x481 is not a multiple of 8.*640x488"):
        resolve_profile("input", (1, 3, -1, -1), BuildOptions(shape=(481, 640)), 8)
    with pytest.raises(DFNError, match="min <= opt <= max"):
        resolve_profile("input", (1, 3, -1, -1), BuildOptions(min_shape=(512, 512), opt_shape=(256, 256)), 8)
    with pytest.raises(DFNError, match="fixed at 1x3x64x64"):
        resolve_profile("input", (1, 3, 64, 64), BuildOptions(shape=(128, 128)), 8)
    assert resolve_profile("input", (1, 3, 64, 64), BuildOptions(), 8) is None
    with pytest.raises(DFNError, match="need a graph exported with --dynamic"):
        resolve_profile("input", (1, 3, 64, 64), BuildOptions(max_shape=(128, 128)), 8)
    with pytest.raises(DFNError, match="expected WIDTHxHEIGHT"):
        hw_from_size("640")


def test_static_graph_builds_without_profile(tmp_path, world, cuda):
    res = build(tmp_path, world, cuda, onnx=make_onnx(tmp_path / "s.onnx", h=64, w=96))
    assert not [c for c in world.calls if c[0] == "profile.set_shape"]
    assert res["profile"]["input"]["opt"] == [1, 3, 64, 96]


def test_timing_cache_round_trip(tmp_path, world, cuda):
    cache = tmp_path / "cache" / "trt.cache"
    first = build(tmp_path, world, cuda, options=BuildOptions(timing_cache=str(cache)))
    assert first["build"]["timing_cache_status"] == "created" and cache.is_file()
    saved = cache.read_bytes()
    assert json.loads(saved)["entries"] == 1
    world.calls.clear()
    second = build(tmp_path, world, cuda, options=BuildOptions(timing_cache=str(cache)))
    assert ("create_timing_cache", saved) in world.calls  # the saved cache was read back ...
    assert ("set_timing_cache", 1, False) in world.calls  # ... attached without ignoring mismatches ...
    assert second["build"]["timing_cache_status"] == "loaded"
    assert json.loads(cache.read_bytes())["entries"] == 2  # ... and extended by this build
    # A cache from another TensorRT version is not forced on the builder; a fresh one replaces it.
    third = build(tmp_path, world, cuda, make_tensorrt(world, "10.7.0.23"), BuildOptions(timing_cache=str(cache)))
    assert third["build"]["timing_cache_status"].startswith("ignored")
    assert json.loads(cache.read_bytes()) == {"tag": "10.7.0.23", "entries": 1}


def test_sidecar_and_pure_plan(tmp_path, world, cuda):
    onnx = make_onnx(tmp_path / "sr.onnx", scale=2, model="deepfusionnet-sr", precision="fp16")
    opts = BuildOptions(shape=(240, 320), workspace_mb=512)
    res = build(tmp_path, world, cuda, options=opts, onnx=onnx)
    plan = (tmp_path / "m.engine").read_bytes()
    assert plan.startswith(PLAN_MAGIC)  # exactly the builder's bytes: no header other tools would choke on
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["tensorrt"] == "10.3.0.30"
    assert side["gpu"] == {"name": "Orin", "compute_capability": "8.7", "cuda_driver": "12.6",
                           "cuda_api": "cuda-bindings 12.9.10"}
    assert (side["model"], side["scale"], side["multiple"], side["precision"]) == ("deepfusionnet-sr", 2, 8, "fp16")
    assert side["onnx"]["sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert side["inputs"] == [{"name": "input", "shape": [1, 3, -1, -1], "dtype": "float16"}]
    assert side["build"]["cli_args"] == ["--shape", "320x240", "--workspace", "512"]
    assert ("set_memory_pool_limit", "WORKSPACE", 512 << 20) in world.calls
    assert res["engine_bytes"] == len(plan)
    assert "exposure" not in side


def test_engine_sidecar_carries_the_exposure_calibration(tmp_path, world, cuda):
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.exposure import Exposure

    cal = Exposure(slope=-0.3, centre=-0.85, offset=0.01)
    onnx = make_onnx(tmp_path / "cal.onnx", exposure=cal.to_json())
    build(tmp_path, world, cuda, onnx=onnx)
    side = json.loads((tmp_path / "m.engine.json").read_text())
    assert side["exposure"] == {"slope": -0.3, "centre": -0.85, "offset": 0.01}
    assert resolve(tmp_path / "m.engine").exposure == cal  # so the TensorRT path applies the same gain


def test_progress_monitor_reports_and_ctrl_c_cancels(tmp_path, world, cuda):
    seen = []
    build(tmp_path, world, cuda, progress=lambda *a: seen.append(a))
    assert seen == [("Building engine", 0, 3, 0), ("Building engine", 1, 3, 0), ("Building engine", 2, 3, 0),
                    ("Building engine", 3, 3, 0)]

    def interrupt(phase, step, steps, depth):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, world, cuda, progress=interrupt)


def test_parse_and_build_failures_are_one_line(tmp_path, world, cuda):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    with pytest.raises(DFNError) as err:
        engine_from_onnx(bad, tmp_path / "b.engine", trt=make_tensorrt(world), cuda=cuda)
    assert "could not parse the ONNX graph" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DFNError, match="engine build failed .*could not find any implementation"):
        build(tmp_path, world, cuda, make_tensorrt(world, fail_build=True))
    assert not (tmp_path / "m.engine").exists()


def test_dla_core(tmp_path, world, cuda):
    with pytest.raises(DFNError, match="no DLA"):
        build(tmp_path, world, cuda, options=BuildOptions(dla_core=0))
    with pytest.raises(DFNError, match="has 2 DLA core"):
        build(tmp_path, world, cuda, make_tensorrt(world, dla_cores=2),
              BuildOptions(dla_core=2, shape=(64, 64)))
    build(tmp_path, world, cuda, make_tensorrt(world, dla_cores=2),
          BuildOptions(dla_core=1, shape=(480, 640)))
    plan = json.loads((tmp_path / "m.engine").read_bytes()[len(PLAN_MAGIC):])
    assert plan["dla"] == 1 and ("set_flag", "GPU_FALLBACK") in world.calls
    assert plan["io"][0]["profile"] == [[1, 3, 480, 640]] * 3
    # A graph of fixed size needs no --shape.
    build(tmp_path, world, cuda, make_tensorrt(world, dla_cores=2), BuildOptions(dla_core=0),
          onnx=make_onnx(tmp_path / "s.onnx", h=64, w=96))


@pytest.mark.parametrize("options", [BuildOptions(dla_core=0),  # the default range of a dynamic graph
                                     BuildOptions(dla_core=0, min_shape=(256, 256), max_shape=(1088, 1920))])
def test_dla_refuses_a_shape_range(tmp_path, world, cuda, options):
    """DLA has no dynamic shapes (min = opt = max): refused in one line before anything is built."""
    with pytest.raises(DFNError) as err:
        build(tmp_path, world, cuda, make_tensorrt(world, dla_cores=2), options)
    msg = str(err.value)
    assert msg.startswith("--dla-core needs a fixed input size") and "\n" not in msg
    assert "input 'input' would get min " in msg and "--shape 640x480" in msg
    assert "build_serialized_network" not in world.names() and not (tmp_path / "m.engine").exists()


def test_trt_extra_pins_cuda_bindings_12():
    """[trt] must resolve to CUDA 12 bindings that have cuda.bindings: not 13.x (needs a CUDA 13 driver;
    JetPack 6 is CUDA 12), not cuda-python 12.6.0 (no cuda.bindings module)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement  # a dependency of pytest

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    reqs = [Requirement(r) for r in extras["trt"]]
    cuda = [r for r in reqs if r.name in ("cuda-bindings", "cuda-python")]
    assert len(cuda) == 1, extras["trt"]
    spec = cuda[0].specifier
    assert not spec.contains("13.0.0") and not spec.contains("13.4.4")
    assert not spec.contains("12.6.0") and spec.contains("12.9.10")


def test_old_tensorrt_refused(tmp_path, world, cuda):
    with pytest.raises(DFNError, match="too old"):
        build(tmp_path, world, cuda, make_tensorrt(world, "8.6.1"))


def test_dfn_build_without_tensorrt_is_one_line(monkeypatch, capsys, tmp_path):
    from deepfusionnet.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert main(["build", str(tmp_path / "x.onnx"), "-o", str(tmp_path / "x.engine")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT is not installed" in err and "pip install tensorrt" in err


def test_dfn_build_cli_with_fake_tensorrt(monkeypatch, capsys, tmp_path, world, cuda):
    from deepfusionnet import cli
    from deepfusionnet.runtime.backends import cuda as cuda_mod

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(world))
    monkeypatch.setattr(cuda_mod, "open_cuda", lambda *a, **k: cuda)
    onnx = make_onnx(tmp_path / "m.onnx")
    code = cli.main(["build", str(onnx), "--shape", "96x64", "--timing-cache", str(tmp_path / "t.cache"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    res = json.loads(out.out)
    assert res["engine"] == str(tmp_path / "m.engine") and (tmp_path / "m.engine.json").is_file()
    assert "built " in out.err and "timing cache created" in out.err
    assert res["profile"]["input"]["max"] == [1, 3, 64, 96]
    assert res["build"]["cli_args"] == ["--shape", "96x64", "--timing-cache", str(tmp_path / "t.cache")]


def test_modules_import_without_tensorrt_or_torch():
    code = ("import sys; sys.modules['tensorrt'] = None; sys.modules['torch'] = None\n"
            "import deepfusionnet.export.tensorrt, deepfusionnet.runtime.backends.tensorrt, "
            "deepfusionnet.runtime.backends.cuda, deepfusionnet.commands.build")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_companion_engines_follow_the_onnx_companions(tmp_path, world, cuda):
    """dfn build builds X.context.engine and X.tile.engine when the graph has companions, with the same
    options; a graph without them leaves no stale companion engines behind."""
    import shutil

    from deepfusionnet.export.tensorrt import companion_engines
    from deepfusionnet.runtime.tile_context import companion_path

    trt = make_tensorrt(world)
    onnx = make_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    assert companion_engines(onnx, engine, BuildOptions(), trt=trt, cuda=cuda) == {}
    for role in ("context", "tile"):
        shutil.copy(onnx, companion_path(onnx, role))
    built = companion_engines(onnx, engine, BuildOptions(shape=(240, 320)), trt=trt, cuda=cuda)
    assert built == {r: str(companion_path(engine, r)) for r in ("context", "tile")}
    for role in ("context", "tile"):
        side = json.loads(Path(built[role] + ".json").read_text())
        assert side["build"]["shape"] == [240, 320]
    companion_path(onnx, "tile").unlink()
    assert companion_engines(onnx, engine, trt=trt, cuda=cuda) == {}
    assert not companion_path(engine, "context").exists() and not companion_path(engine, "tile").exists()


def test_a_static_context_input_takes_no_profile():
    assert resolve_profile("context", (1, 1152), BuildOptions(shape=(480, 640)), 8) is None
