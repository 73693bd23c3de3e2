"""The backend registry is the one list of backends: a backend added with one module and one
``register`` call is a ``--backend`` choice of dfn enhance/eval/bench, a candidate of ``--backend auto``,
a bench row, and the default backend of the artifact kind it owns."""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest

from deepfusionnet.cli import main
from deepfusionnet.runtime.artifacts import resolve
from deepfusionnet.runtime.backends.base import BACKENDS, BackendEntry, TensorInfo, kind_by_suffix, register
from deepfusionnet.runtime.enhancer import backend_for
from deepfusionnet.runtime.measure import auto, bench, plan

pytest.importorskip("onnx")
from helpers import tiny_onnx  # noqa: E402


class ToyBackend:
    """A numpy 'network': the identity, whatever file it is given."""

    name = "toy"

    def __init__(self, path, gain: float = 1.0, threads: int | None = None) -> None:
        self.path, self.gain = path, gain
        self.inputs = [TensorInfo("input", (1, 3, None, None), "float32")]
        self.outputs = [TensorInfo("output", (1, 3, None, None), "float32")]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": np.clip(feed["input"] * self.gain, 0, 1)}

    def close(self) -> None:
        pass


@pytest.fixture()
def toy(monkeypatch, tmp_path):
    """The one module (made here in-process) and the one registry line."""
    module = types.ModuleType("toy_numpy_backend")
    module.load = lambda path, **options: ToyBackend(path, **options)
    monkeypatch.setitem(sys.modules, "toy_numpy_backend", module)
    monkeypatch.setenv("DFN_CACHE", str(tmp_path / "cache"))
    register("toy", BackendEntry("toy_numpy_backend:load", "toy", (".toy",), description="numpy identity",
                                 reads=("onnx",), requires="numpy", auto=True))
    yield "toy"
    BACKENDS.pop("toy")


def _help(capsys, *argv) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_a_registered_backend_is_a_choice_of_every_command(toy, capsys):
    for command in ("enhance", "eval"):
        text = _help(capsys, command)
        assert "--backend {auto,onnxruntime," in text and ",toy}" in text, text
    assert "toy" in _help(capsys, "bench")
    assert "toy" in plan.bench_backends()


def test_a_registered_backend_is_an_auto_candidate_and_a_bench_row(toy, tmp_path):
    base = tiny_onnx(tmp_path / "m.onnx")
    labels = [c.label for c in auto.candidates(base)]
    assert "toy fp32" in labels and labels[0] == "onnxruntime fp32"  # the reference stays first
    name, path, options, art = plan.plan_stage(str(base), "toy", "fp32")
    assert (name, path, options, art.kind) == ("toy", base, {}, "onnx")
    with pytest.raises(plan.Unsupported, match="toy has no bf16 path"):
        plan.plan_stage(str(base), "toy", "bf16")
    (row,) = bench.bench([str(base)], ["toy"], ["fp32"], [(32, 24)], runs=2)["rows"]
    assert row["status"] == "ok" and row["runs"] == 2 and row["backend"] == "toy"


def test_a_registered_backend_owns_its_files_and_runs_in_dfn_enhance(toy, tmp_path):
    weights = tmp_path / "m.toy"
    weights.write_bytes(b"toy")
    assert kind_by_suffix()[".toy"] == "toy" and kind_by_suffix()[".onnx"] == "onnx"
    assert backend_for(resolve(weights), "default") == "toy"
    src = tmp_path / "in.png"
    frame = np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)
    cv2.imwrite(str(src), frame)
    out = tmp_path / "out.png"
    assert main(["enhance", str(src), "-o", str(out), "--model", str(weights), "--backend", "auto"]) == 0
    np.testing.assert_array_equal(cv2.imread(str(out)), frame)  # the identity, through the toy backend
    assert main(["enhance", str(src), "-o", str(out), "--model", str(tiny_onnx(tmp_path / "m.onnx")),
                 "--backend", "toy"]) == 0


def test_unregistered_names_are_refused_with_the_registry_list(capsys):
    assert main(["enhance", "x.png", "-o", "y.png", "--backend", "toy"]) == 1
    assert "invalid choice: 'toy'" in capsys.readouterr().err
