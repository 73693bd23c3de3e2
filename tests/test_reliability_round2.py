"""Issue #35: a corpus of bad and odd inputs, each tried as a new user would, and the promise that holds.

Numbered as in the issue: 1 numeric options, 2 concurrent runs' temporaries, 3 FIFOs and other
non-regular files, 4 hostile sidecars, 5 NaN/Inf outputs, 6 foreign models under ``auto``, 7 library
noise, 8 unsafe training checkpoints, 9 misleading messages, 10 silent skips in folder batches. Runs
that can hang on a defect (a FIFO blocks ``open``) or that print from native code (OpenVINO, OpenCV,
warnings) are separate ``dfn`` processes with a timeout; the rest run in this process.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from deepfusionnet.cli import build_parser, main  # noqa: E402
from deepfusionnet.runtime import images  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(35)
TIMEOUT = 120  # a run that has not ended by then is hanging


# ---------------------------------------------------------------------------------------------------
# Small models and inputs


def _model(path: Path, nodes, inits=(), cin: int = 3, cout: int = 3) -> Path:
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, "h", "w"])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, cout, "h", "w"])],
                          initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _identity(path: Path) -> Path:
    w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    return _model(path, [helper.make_node("Conv", ["input", "w"], ["output"])],
                  [numpy_helper.from_array(w, "w")])


def _times(path: Path, k: float) -> Path:
    """output = input * k (k = NaN gives a NaN picture)."""
    return _model(path, [helper.make_node("Mul", ["input", "k"], ["output"])],
                  [numpy_helper.from_array(np.array([k], np.float32), "k")])


def _over_zero(path: Path) -> Path:
    """output = input / 0: +Inf wherever the input is not black."""
    return _model(path, [helper.make_node("Div", ["input", "k"], ["output"])],
                  [numpy_helper.from_array(np.array([0.0], np.float32), "k")])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {"identity": _identity(d / "identity.onnx"), "nan": _times(d / "nan.onnx", float("nan")),
            "inf": _over_zero(d / "inf.onnx"),
            "mono": _model(d / "mono.onnx", [helper.make_node("Relu", ["input"], ["output"])], cin=1, cout=1)}


def _png(path: Path, h: int = 24, w: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), RNG.integers(10, 90, (h, w, 3), dtype=np.uint8))
    return path


def enhance(capsys, *args) -> tuple[int, str]:
    code = main(["enhance", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def dfn_process(*args, cwd: Path | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``dfn`` as a separate process; a hang fails the test instead of stalling the suite."""
    env = {k: v for k, v in os.environ.items() if k != "DFN_DEBUG"}
    try:
        return subprocess.run([sys.executable, "-m", "deepfusionnet.cli", *map(str, args)], cwd=cwd or REPO,
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dfn {' '.join(map(str, args))} did not end within {timeout} s")


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dfn ") and "error:" in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# 1. Numeric options are checked when the command line is parsed


BAD_NUMBERS = [
    ("enhance", ["x.png", "-o", "o/", "--overlap=-30"], "--overlap"),
    ("enhance", ["x.png", "-o", "o/", "--tile=-96"], "--tile"),
    ("enhance", ["x.png", "-o", "o/", "--max-frames", "0"], "--max-frames"),
    ("enhance", ["x.png", "-o", "o/", "--reconnect=-1"], "--reconnect"),
    ("enhance", ["x.png", "-o", "o/", "--max-pixels", "0"], "--max-pixels"),
    ("eval", ["m.onnx", "--data", "d", "--tile", "0"], "--tile"),
    ("eval", ["m.onnx", "--data", "d", "--limit=-1"], "--limit"),
    ("bench", ["m.onnx", "--runs", "0"], "--runs"),
    ("bench", ["m.onnx", "--threads=-2"], "--threads"),
    ("train", ["--data", "d", "--lr", "nan"], "--lr"),
    ("train", ["--data", "d", "--lr", "0"], "--lr"),
    ("train", ["--data", "d", "--epochs", "0"], "--epochs"),
    ("train", ["--data", "d", "--checkpoint-minutes", "inf"], "--checkpoint-minutes"),
    ("train", ["--data", "d", "--synthetic-prob", "1.5"], "--synthetic-prob"),
    ("export", ["deepfusionnet", "-o", "x.onnx", "--calib-count", "0"], "--calib-count"),
    ("parity", ["a.onnx", "b.onnx", "--data", "d", "--limit=-3"], "--limit"),
]


@pytest.mark.parametrize("command,args,option", BAD_NUMBERS, ids=[f"{c}{o}" for c, _, o in BAD_NUMBERS])
def test_bad_numeric_option_refused_at_parse_time_in_one_line(command, args, option, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, *args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1
    assert len(err.splitlines()) == 1 and err.startswith(f"dfn {command}: error: ") and option in err, err


def test_every_numeric_option_of_every_command_is_range_checked():
    """Also the options added after this test: the one place that checks them wraps every int/float option."""
    import argparse

    from deepfusionnet.options import range_for

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    numeric = [(name, opt) for name, p in sub.choices.items() for opt in p._actions
               if opt.option_strings and getattr(opt.type, "__name__", "") in ("int", "float")]
    assert len(numeric) > 30
    for name, opt in numeric:
        option = max(opt.option_strings, key=len)
        assert opt.type not in (int, float), f"{name} {option} is not range-checked"
        lo = range_for(name, option).lo
        for text in ["nan", "inf", str(int(lo) - 1 if lo is not None else -1)]:
            with pytest.raises(argparse.ArgumentTypeError):
                opt.type(text)


def test_negative_overlap_no_longer_paints_stripes(tmp_path, models, capsys):
    """The user's case: exit 0 with black stripes and a RuntimeWarning. Now: exit 1 before any work."""
    src = _png(tmp_path / "a.png", 200, 200)
    code, err = enhance(capsys, src, "-o", tmp_path / "o.png", "--model", models["identity"], "--tile", "96",
                        "--overlap=-30")
    assert code == 1 and not (tmp_path / "o.png").exists()
    assert err.strip() == ("dfn enhance: error: argument --overlap: must be 0 or more, not -30 "
                           "(see dfn enhance --help)"), err


def test_bad_option_value_is_one_line_without_the_usage_block(capsys):
    code, err = enhance(capsys, "x.png", "-o", "o/", "--tile", "abc")
    err = err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--tile" in err and "usage:" not in err, err


# ---------------------------------------------------------------------------------------------------
# 2. Temporaries belong to their process; clean-up removes only what a dead process left


_HOLDER = """
import os, sys, time
from pathlib import Path
from deepfusionnet.runtime import images
release = Path(sys.argv[2])
real_replace = os.replace

def slow_replace(src, dst):
    Path(sys.argv[3]).write_text(str(src))  # the temporary exists now
    while not release.exists():
        time.sleep(0.02)
    real_replace(src, dst)

images.os.replace = slow_replace
images.atomic_write_bytes(sys.argv[1], b"from the other process")
"""


def test_concurrent_writer_keeps_its_in_flight_temporary(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    release, ready = tmp_path / "release", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / "x.png"), str(release), str(ready)],
                              stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() - t0 < 60, holder.communicate()[1]
            time.sleep(0.02)
        theirs = Path(ready.read_text())
        # This process writes the same name while the other is between its write and its rename.
        images.atomic_write_bytes(out / "x.png", b"from this process")
        assert theirs.exists(), "this process deleted the other's in-flight temporary"
    finally:
        release.write_text("go")
        _, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert (out / "x.png").read_bytes() == b"from the other process"  # the later rename wins, whole
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_temporary_of_a_dead_process_is_removed_a_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = out / images.temporary_name("x.png", pid=4194304)  # above Linux's pid_max: never running
        live = out / images.temporary_name("x.png", pid=sleeper.pid)
        legacy = out / ".x.png.k3j4h5.part"  # no owner in the name: not provably abandoned
        for p in (dead, live, legacy):
            p.write_bytes(b"half")
        images.atomic_write_bytes(out / "x.png", b"done")
        assert not dead.exists() and live.exists() and legacy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_enhance_processes_into_one_folder_both_succeed(tmp_path, models):
    src = tmp_path / "in"
    for i in range(12):
        _png(src / f"{i:02d}.png", 64, 64)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "deepfusionnet.cli", "enhance", str(src), "-o", str(out), "--model",
            str(models["identity"]), "--backend", "onnxruntime"]
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())


# ---------------------------------------------------------------------------------------------------
# 3. FIFOs, devices and other non-regular files are refused before they are opened


def test_fifo_input_is_refused_not_waited_on(tmp_path, models):
    os.mkfifo(tmp_path / "pipe.png")
    proc = dfn_process("enhance", "pipe.png", "-o", "out/", "--model", models["identity"], cwd=tmp_path,
                       timeout=60)
    line = one_error_line(proc)
    assert proc.returncode == 1 and "pipe.png" in line and "FIFO" in line, line


def test_fifo_as_model_is_refused(tmp_path, capsys):
    _png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "m.onnx")
    proc = dfn_process("enhance", "a.png", "-o", "out/", "--model", "m.onnx", "--backend", "onnxruntime",
                       cwd=tmp_path, timeout=60)
    line = one_error_line(proc)
    assert proc.returncode == 1 and "m.onnx" in line and "FIFO" in line, line


# ---------------------------------------------------------------------------------------------------
# 4. Sidecars are checked against a schema


HOSTILE_SIDECARS = {
    "multiple-zero": ('{"multiple": 0}', "multiple"),
    "multiple-negative": ('{"multiple": -8}', "multiple"),
    "scale-text": ('{"scale": "abc"}', "scale"),
    "scale-zero": ('{"scale": 0}', "scale"),
    "scale-bool": ('{"scale": true}', "scale"),
    "list": ("[1, 2]", "JSON object"),
    "null": ("null", "JSON object"),
    "model-number": ('{"model": 5}', "model"),
    "precision-list": ('{"precision": ["fp32"]}', "precision"),
    "not-json": ("{scale: 2", "JSON"),
}


@pytest.mark.parametrize("name", list(HOSTILE_SIDECARS))
def test_hostile_sidecar_is_one_line_user_error(name, tmp_path, models, capsys):
    text, needle = HOSTILE_SIDECARS[name]
    model = tmp_path / "m.onnx"
    model.write_bytes(models["identity"].read_bytes())
    (tmp_path / "m.onnx.json").write_text(text)
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "o.png", "--model", model,
                        "--backend", "onnxruntime")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "m.onnx.json" in lines[0] and needle in lines[0] and "internal error" not in lines[0], lines[0]
    assert not (tmp_path / "o.png").exists()


def test_hostile_onnx_metadata_is_one_line_user_error(tmp_path, capsys):
    model = _identity(tmp_path / "m.onnx")
    proto = onnx.load(str(model))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "dfn.multiple", "0"
    onnx.save(proto, str(model))
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "o.png", "--model", model,
                        "--backend", "onnxruntime")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "multiple" in err, err


def test_valid_sidecar_still_accepted(tmp_path, models, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(models["identity"].read_bytes())
    (tmp_path / "m.onnx.json").write_text(json.dumps({"schema": 1, "model": "deepfusionnet", "scale": 1,
                                                      "multiple": "8", "precision": "fp32", "parity": []}))
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "o.png", "--model", model,
                        "--backend", "onnxruntime")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------------
# 5. NaN/Inf outputs fail the frame on every backend


def _backends() -> list[str]:
    import importlib.util

    return ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_output_fails_the_frame(kind, backend, tmp_path, models, capsys):
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "o.png", "--model", models[kind],
                        "--backend", backend)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "a.png" in lines[0] and "NaN or Inf" in lines[0], err
    assert not (tmp_path / "o.png").exists()


def test_non_finite_output_in_a_batch_is_listed(tmp_path, models, capsys):
    src = tmp_path / "in"
    for i in range(3):
        _png(src / f"{i}.png")
    code, err = enhance(capsys, src, "-o", tmp_path / "out", "--model", models["nan"], "--backend",
                        "onnxruntime")
    failed = [ln for ln in err.splitlines() if ln.startswith("failed: ")]
    assert code == 2 and len(failed) == 3 and all("NaN or Inf" in ln for ln in failed), err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_non_finite_check_is_backend_independent():
    """Any backend (a stand-in here: the check sits between every backend and the picture)."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.artifacts import Artifact
    from deepfusionnet.runtime.backends.base import TensorInfo
    from deepfusionnet.runtime.enhancer import Enhancer

    class Broken:
        name = "somebackend"
        inputs = [TensorInfo("input", (1, 3, None, None), "float32")]
        outputs = [TensorInfo("output", (1, 3, None, None), "float32")]

        def infer(self, feed):
            y = np.array(feed["input"], np.float32)
            y[..., 0, 0] = np.inf
            return {"output": y}

        def close(self):
            pass

    enh = Enhancer(Broken(), Artifact(Path("x.engine"), "engine", "deepfusionnet"))
    with pytest.raises(DFNError, match="NaN or Inf"):
        enh(np.zeros((8, 8, 3), np.uint8))


# ---------------------------------------------------------------------------------------------------
# 6. auto refuses a foreign model with the named backends' message


def test_auto_names_a_one_channel_model_like_the_named_backends(tmp_path, models, capsys):
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "o.png", "--model", models["mono"])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "not an image enhancement model" in lines[0], err
    assert "ONNXRuntimeError" not in err and "gate" not in err


# ---------------------------------------------------------------------------------------------------
# 7. Library noise stays off the terminal


def _broken_exif_jpeg(path: Path) -> Path:
    im = Image.fromarray(RNG.integers(10, 90, (24, 32, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif)
    data = bytearray(path.read_bytes())
    i = data.find(b"Exif")
    data[i + 10:i + 20] = b"\xff" * 10
    path.write_bytes(bytes(data))
    return path


def test_library_noise_stays_off_the_terminal(tmp_path, models):
    from concurrent.futures import ThreadPoolExecutor

    _broken_exif_jpeg(tmp_path / "exif.jpg")
    _png(tmp_path / "a.png")
    (tmp_path / "junk.xml").write_bytes(RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    cases = {
        "exif": ("enhance", "exif.jpg", "-o", "o1/", "--model", models["identity"], "--backend",
                 "onnxruntime"),
        "rtsp": ("enhance", "rtsp://127.0.0.1:9/none", "-o", "o2/", "--reconnect", "0", "--model",
                 models["identity"]),
        "bad-value": ("enhance", "a.png", "-o", "o3/", "--overlap", "wide"),
    }
    import importlib.util

    if importlib.util.find_spec("openvino"):
        cases["openvino-junk-xml"] = ("enhance", "a.png", "-o", "o4/", "--model", "junk.xml")
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(cases, pool.map(lambda a: dfn_process(*a, cwd=tmp_path), cases.values())))
    exif = results.pop("exif")
    assert exif.returncode == 0 and exif.stderr.strip().splitlines() == [
        exif.stderr.strip().splitlines()[-1]] and "output(s) written" in exif.stderr, exif.stderr
    for name, proc in results.items():
        assert proc.returncode == 1, (name, proc.stderr)
        one_error_line(proc)


def test_library_warnings_reach_the_debug_log(tmp_path, models):
    _broken_exif_jpeg(tmp_path / "exif.jpg")
    env = {**os.environ, "DFN_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "deepfusionnet.cli", "enhance", "exif.jpg", "-o", "o/",
                           "--model", str(models["identity"]), "--backend", "onnxruntime"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and "EXIF" in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------------
# 8. Training checkpoints: unsafe or random ones are refused in the words --model and --init use


@pytest.fixture
def run_folder(tmp_path):
    torch = pytest.importorskip("torch")
    import dataclasses

    from deepfusionnet.train.trainer import TrainConfig

    data = tmp_path / "pairs"
    for sub in ("low", "high"):
        _png(data / sub / "1.png", 48, 64)
    out = tmp_path / "run"
    out.mkdir()
    config = dataclasses.asdict(TrainConfig(data=str(data), out=str(out)))
    (out / "config.json").write_text(json.dumps(config))
    return torch, data, out


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_code_running_checkpoint_naming_the_global(run_folder, tmp_path, capsys):
    torch, data, out = run_folder
    torch.save({"model": _Evil(tmp_path / "PWNED")}, out / "checkpoint.pt")
    code = main(["train", "--data", str(data), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "refused" in err and "posix.system" in err and "weights_only" not in err, err
    assert not (tmp_path / "PWNED").exists()


def test_resume_refuses_random_checkpoint_without_torch_advice(run_folder, capsys):
    _, data, out = run_folder
    (out / "checkpoint.pt").write_bytes(RNG.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    code = main(["train", "--data", str(data), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "checkpoint.pt" in err, err
    assert "weights_only" not in err and "PyTorch 2.6" not in err, err


@pytest.mark.slow
def test_resume_says_where_it_resumed(lol_train, tmp_path, capsys):
    pytest.importorskip("torch")
    data = tmp_path / "pairs"
    for sub in ("low", "high"):
        (data / sub).mkdir(parents=True)
        for n in ("100.png", "101.png", "102.png", "103.png"):
            img = cv2.imread(str(lol_train / sub / n))
            cv2.imwrite(str(data / sub / n), cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA))
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "2",
            "--batch-size", "1", "--crop", "32", "--val-count", "1", "--val-group", "image", "--threads", "1"]
    assert main([*args, "--max-steps", "4"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "epoch 2/2" in err and "step 1/3" in err, err


# ---------------------------------------------------------------------------------------------------
# 9. Messages say what is really wrong


def test_what_a_path_really_is(tmp_path, models, capsys):
    (tmp_path / "dev.png").symlink_to("/dev/null")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    for name, needle in [("dev.png", "character device"), ("loop.png", "symbolic link loop"),
                         ("dangling.png", "broken symbolic link")]:
        code, err = enhance(capsys, tmp_path / name, "-o", tmp_path / "out/", "--model", models["identity"])
        assert code == 1 and len(err.strip().splitlines()) == 1 and name in err and needle in err, err
        assert "empty file" not in err and "no such file" not in err


def test_full_disk_names_the_output_file(tmp_path, models, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(images.os, "fsync", full)
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "out" / "b.png", "--model",
                        models["identity"], "--backend", "onnxruntime")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(tmp_path / "out" / "b.png") in err and "No space left" in err, err
    assert not list((tmp_path / "out").iterdir())


def test_permission_error_names_the_output_not_the_temporary(tmp_path, models, capsys, monkeypatch):
    def denied(prefix="", suffix="", dir=None):
        hidden = os.path.join(dir, f"{prefix}k3j4{suffix}")
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), hidden)

    monkeypatch.setattr(images.tempfile, "mkstemp", denied)
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "out" / "b.png", "--model",
                        models["identity"], "--backend", "onnxruntime")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(tmp_path / "out" / "b.png") in err and ".part" not in err and "ermission denied" in err, err


def test_output_with_a_bang_is_a_file_not_a_pipeline(tmp_path, models, capsys):
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / "x!.png", "--model",
                        models["identity"], "--backend", "onnxruntime")
    assert code == 0 and (tmp_path / "x!.png").is_file(), err


@pytest.mark.parametrize("name", ["x.gif", "x.heic"])
def test_unsupported_output_format_is_refused_not_made_a_folder(name, tmp_path, models, capsys):
    code, err = enhance(capsys, _png(tmp_path / "a.png"), "-o", tmp_path / name, "--model",
                        models["identity"])
    assert code == 1 and len(err.strip().splitlines()) == 1 and name in err and ".png" in err, err
    assert not (tmp_path / name).exists()


# ---------------------------------------------------------------------------------------------------
# 10. Folder batches list every entry they skip; a skipped input makes the batch exit 2


def test_mixed_folder_every_good_output_one_line_per_bad_input(tmp_path, models):
    src = tmp_path / "in"
    good = ["good.png", "sub/good2.jpg"]
    for name in good:
        _png(src / name)
    (src / "dangling.png").symlink_to(src / "nowhere.png")
    (src / "loop.jpg").symlink_to(src / "loop.jpg")
    os.mkfifo(src / "pipe.png")
    Image.new("RGB", (8, 8)).save(src / "anim.gif")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("shot at night\n")
    bad = ["dangling.png", "loop.jpg", "pipe.png", "anim.gif", "broken.png", "empty.jpg"]
    proc = dfn_process("enhance", src, "-o", tmp_path / "out", "--model", models["identity"], "--backend",
                       "onnxruntime", "--json", timeout=90)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    failed = [ln for ln in lines if ln.startswith("failed: ")]
    assert sorted(Path(ln.split(": ")[1]).name for ln in failed) == sorted(bad), proc.stderr
    reasons = {Path(ln.split(": ")[1]).name: ln for ln in failed}
    assert "broken symbolic link" in reasons["dangling.png"] and "loop" in reasons["loop.jpg"]
    assert "FIFO" in reasons["pipe.png"] and "GIF" in reasons["anim.gif"]
    assert any(ln.startswith("skipped: ") and "notes.txt" in ln for ln in lines), proc.stderr
    out = tmp_path / "out"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(good)
    doc = json.loads(proc.stdout)
    assert len(doc["failures"]) == len(bad)
    assert [i["input"] for i in doc["ignored"]] == [str(src / "notes.txt")]


def test_folder_of_only_skipped_inputs_exits_2_listing_them(tmp_path, models, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "anim.gif")
    (src / "dangling.png").symlink_to(src / "nowhere.png")
    code, err = enhance(capsys, src, "-o", tmp_path / "out", "--model", models["identity"])
    assert code == 2 and "anim.gif" in err and "dangling.png" in err, err


# ---------------------------------------------------------------------------------------------------
# The auto backend's decision cache: never the user's during tests; refreshable from the CLI


def test_suite_uses_a_temporary_auto_cache():
    from deepfusionnet.runtime.measure.auto import cache_path

    assert Path(tempfile.gettempdir()) in cache_path().resolve().parents, cache_path()
    assert Path.home() not in cache_path().resolve().parents or Path.home() == Path("/tmp")


def test_remeasure_refreshes_the_auto_decision(tmp_path, models, capsys, monkeypatch):
    from deepfusionnet.runtime.measure import auto

    monkeypatch.setenv("DFN_CACHE", str(tmp_path / "cache"))
    calls = []
    real = auto.measure
    monkeypatch.setattr(auto, "measure", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    img = _png(tmp_path / "a.png")
    for extra in ([], [], ["--remeasure"]):
        code, err = enhance(capsys, img, "-o", tmp_path / "o.png", "--model", models["identity"], *extra)
        assert code == 0, err
    assert len(calls) == 2  # measured, then cached, then measured again on request
