"""The device runtime works with torch, TensorRT and CUDA Python modules absent (blocked in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2

from helpers import REPO, small_night

BLOCK = ("torch", "torchvision", "tensorrt", "tensorrt_bindings", "tensorrt_libs", "cuda", "pycuda")

PRELUDE = f"""
import sys
for name in {BLOCK!r}:
    sys.modules[name] = None  # any import of these now raises ImportError
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_every_runtime_module_imports_without_torch():
    proc = run_blocked("""
        import importlib, pkgutil
        import deepfusionnet.runtime as rt
        from deepfusionnet.cli import build_parser
        build_parser()  # imports every command module
        failed = []
        for mod in pkgutil.walk_packages(rt.__path__, "deepfusionnet.runtime."):
            try:
                importlib.import_module(mod.name)
            except Exception as exc:
                failed.append(f"{mod.name}: {type(exc).__name__}: {exc}")
        print("\\n".join(failed))
        heavy = sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in
                       ("torch", "tensorrt", "cuda", "pycuda"))
        sys.exit(1 if failed or heavy else 0)
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dfn_enhance_without_torch(tmp_path, samples, models):
    src = tmp_path / "night.png"
    cv2.imwrite(str(src), cv2.cvtColor(small_night(samples / "lol-748.png", (97, 65)), cv2.COLOR_RGB2BGR))
    proc = run_blocked(f"""
        from deepfusionnet.cli import main
        code = main(["enhance", {str(src)!r}, "-o", {str(tmp_path / "out")!r}, "--upscale", "2",
                     "--model", {str(models["deepfusionnet"])!r}, "--sr-model", {str(models["deepfusionnet-sr"])!r},
                     "--backend", "onnxruntime"])
        assert "torch" not in [k.split(".")[0] for k, v in sys.modules.items() if v is not None]
        sys.exit(code)
    """)
    assert proc.returncode == 0, proc.stderr
    out = cv2.imread(str(tmp_path / "out" / "night.png"))
    assert out.shape == (130, 194, 3) and out.mean() > cv2.imread(str(src)).mean() + 20
