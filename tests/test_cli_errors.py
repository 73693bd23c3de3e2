"""Every command, run as a new user would (a real `dfn` process), on broken or foreign inputs:
the documented exit code, one line on stderr naming the problem, never a traceback.

All cases are started together (each is a separate process) and then checked one by one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int = 1
    needle: str = ""  # must appear in the last stderr line
    one_line: bool = True  # stderr is exactly one line
    xfail: str = ""  # known failure, reported to the owner; strict, so a fix turns it green


def _onnx(path: Path, nodes, inputs, outputs, inits=(), ir: int = 8) -> None:
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits)),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = ir
    onnx.save(m, str(path))


def _identity(path: Path, ir: int = 8) -> None:
    """A valid image-to-image model (1x1 convolution with identity weights), dynamic H/W."""
    w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    _onnx(path, [helper.make_node("Conv", ["input", "w"], ["output"])],
          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "height", "width"])],
          [numpy_helper.from_array(w, "w")], ir)


def make_corpus(d: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(d / "a.png"), img)
    cv2.imwrite(str(d / "noise.jpg"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (d / "trunc.jpg").write_bytes((d / "noise.jpg").read_bytes()[:600])
    (d / "empty.png").write_bytes(b"")
    (d / "notes.png").write_text("not a picture\n")
    from helpers import huge_png

    (d / "bomb.png").write_bytes(huge_png())
    _identity(d / "identity.onnx")
    _identity(d / "newir.onnx", ir=99)  # from an ONNX newer than this ONNX Runtime
    _onnx(d / "foreign.onnx", [helper.make_node("Relu", ["x"], ["y"])],
          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    (d / "junk.onnx").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (d / "empty.onnx").write_bytes(b"")
    data = (d / "identity.onnx").read_bytes()
    (d / "trunc.onnx").write_bytes(data[: len(data) // 2])
    (d / "junk.engine").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (d / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    writer = cv2.VideoWriter(str(d / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    data = (d / "v.mp4").read_bytes()
    (d / "trunc.mp4").write_bytes(data[: len(data) // 3])  # no moov atom
    (d / "empty.mp4").write_bytes(b"")
    for sub in ("low", "high"):
        (d / "pairs" / sub).mkdir(parents=True)
        cv2.imwrite(str(d / "pairs" / sub / "1.png"), img)


NEEDS_TORCH = {"foreign.safetensors", "evil.pt"}

CASES: dict[str, Case] = {
    "no-command": Case((), 1, one_line=False),
    "usage-error": Case(("train", "--bogus"), 1, "required: --data", one_line=False),
    "enhance-missing": Case(("enhance", "missing.png", "-o", "out/", "--model", "identity.onnx"), 1, "no such file"),
    "enhance-empty": Case(("enhance", "empty.png", "-o", "out.png", "--model", "identity.onnx"), 1, "empty file"),
    "enhance-truncated": Case(("enhance", "trunc.jpg", "-o", "out.png", "--model", "identity.onnx"), 1, "truncated"),
    "enhance-not-image": Case(("enhance", "notes.png", "-o", "out/", "--model", "identity.onnx"), 1, "not an image"),
    "enhance-bomb": Case(("enhance", "bomb.png", "-o", "out/", "--model", "identity.onnx"), 1,
                         "refused before decoding"),
    "enhance-onnx-junk-ort": Case(("enhance", "a.png", "-o", "out/", "--model", "junk.onnx", "--backend",
                                   "onnxruntime"), 1, "junk.onnx"),
    "enhance-onnx-junk-auto": Case(
        ("enhance", "a.png", "-o", "out/", "--model", "junk.onnx"), 1, "junk.onnx"),
    "enhance-video-truncated": Case(("enhance", "trunc.mp4", "-o", "out/", "--model", "identity.onnx"), 1,
                                    "trunc.mp4"),
    "enhance-video-empty": Case(("enhance", "empty.mp4", "-o", "out/", "--model", "identity.onnx"), 1, "empty"),
    "enhance-onnx-foreign": Case(("enhance", "a.png", "-o", "out/", "--model", "foreign.onnx", "--backend",
                                  "onnxruntime"), 1, "not an image enhancement model"),
    "enhance-onnx-foreign-auto": Case(("enhance", "a.png", "-o", "out/", "--model", "foreign.onnx"), 1, "foreign.onnx"),
    "info-onnx-newer-ir": Case(
        ("info", "newir.onnx"), 1, "IR version"),
    "info-missing": Case(("info", "missing.onnx"), 1, "no such file"),
    "info-onnx-junk": Case(("info", "junk.onnx"), 1, "junk.onnx"),
    "info-onnx-empty": Case(("info", "empty.onnx"), 1, "empty.onnx"),
    "info-onnx-truncated": Case(("info", "trunc.onnx"), 1, "trunc.onnx"),
    "info-engine-corrupt": Case(
        ("info", "junk.engine"), 1, "junk.engine"),
    "enhance-engine-corrupt": Case(("enhance", "a.png", "-o", "out/", "--model", "junk.engine"), 1, ""),
    "eval-engine-corrupt": Case(("eval", "junk.engine", "--data", "pairs"), 1, ""),
    "eval-missing-data": Case(("eval", "identity.onnx", "--data", "nowhere"), 1, "nowhere"),
    "parity-junk": Case(("parity", "identity.onnx", "junk.onnx", "--data", "pairs"), 1, "junk.onnx"),
    "bench-junk": Case(
        ("bench", "junk.onnx", "--runs", "1", "--backend", "onnxruntime"), 1, "junk.onnx", one_line=False),
    "enhance-safetensors-corrupt": Case(("enhance", "a.png", "-o", "out/", "--model", "junk.safetensors",
                                         "--backend", "torch"), 1, "not a readable safetensors file"),
    "enhance-weights-other-model": Case(("enhance", "a.png", "-o", "out/", "--model", "foreign.safetensors",
                                         "--backend", "torch"), 1, "do not fit model"),
    "enhance-unsafe-pickle": Case(("enhance", "a.png", "-o", "out/", "--model", "evil.pt", "--backend", "torch"),
                                  1, "refused"),
    "train-missing-data": Case(("train", "--data", "nowhere", "--out", "run"), 1, "nowhere"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("cli")
    sys.path.insert(0, str(Path(__file__).parent))
    make_corpus(d)
    try:
        import torch

        from deepfusionnet.train.models import create_model

        sd = create_model("deepfusionnet-sr").state_dict()
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "foreign.safetensors"),
                  metadata={"model": "deepfusionnet"})
        torch.save({"state_dict": create_model("deepfusionnet").state_dict(), "hook": _Evil(d / "PWNED")},
                   d / "evil.pt")
    except ImportError:
        pass
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    env.pop("DFN_DEBUG", None)

    def one(case: Case) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deepfusionnet.cli", *case.args], cwd=d, env=env,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=6) as pool:
        out = dict(zip(CASES, pool.map(one, CASES.values())))
    out["_dir"] = d
    return out


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=c.xfail))
                                  if c.xfail else n for n, c in CASES.items()])
def test_cli_case(results, name):
    case = CASES[name]
    if set(case.args) & NEEDS_TORCH and not (results["_dir"] / "evil.pt").exists():
        pytest.skip("needs torch to build the weights files")
    proc = results[name]
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert proc.returncode == case.code, f"exit {proc.returncode}: {err[-1500:]}"
    lines = err.splitlines()
    assert lines, "no message at all"
    if case.one_line:
        assert len(lines) == 1, err
        assert lines[0].startswith("dfn ") and "error:" in lines[0], lines[0]
    assert case.needle in lines[-1], lines[-1]
    assert not (results["_dir"] / "PWNED").exists()
