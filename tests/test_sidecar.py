"""The sidecar record (runtime/sidecar.py): typed fields, one-line errors, provenance kept, shipped
files load."""

from __future__ import annotations

import json

import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.artifacts import WEIGHTS_DIR, read_sidecar
from deepfusionnet.runtime.sidecar import Sidecar, sidecar_path


@pytest.mark.parametrize("name", ["deepfusionnet.onnx", "deepfusionnet-sr.onnx"])
def test_shipped_sidecars_load_and_round_trip(name):
    path = WEIGHTS_DIR / name
    doc = json.loads(sidecar_path(path).read_text())
    sc = Sidecar.read(path)
    assert sc.model == doc["model"] and sc.scale == doc["scale"] and sc.multiple == 8
    assert sc.precision == "fp32" and sc.inputs[0]["name"] == "input"
    assert "tools" in sc.extra and "model" not in sc.extra  # provenance kept, typed fields not doubled
    assert sc.to_dict() == doc and list(sc.to_dict()) == list(doc)  # same fields, same order
    assert read_sidecar(path) == sc and read_sidecar(path).to_dict() == doc  # the runtime reads it typed


def test_text_numbers_are_normalised_and_null_is_absent():
    doc = {"scale": "2", "multiple": 8.0, "task": "sr", "params": None, "note": None}
    sc = Sidecar.from_dict(doc, "x.json")
    assert (sc.scale, sc.multiple, sc.task, sc.params) == (2, 8, "sr", None)
    assert sc.to_dict() == {"scale": 2, "multiple": 8, "task": "sr", "note": None}  # unknown null kept


@pytest.mark.parametrize("doc,field", [
    ({"scale": 0}, "scale"),
    ({"multiple": "abc"}, "multiple"),
    ({"task": "denoise"}, "task"),
    ({"model": 5}, "model"),
    ({"inputs": [{"shape": [1]}]}, "inputs"),
    ({"gpu": "h200"}, "gpu"),
    ({"conformance": ["pass"]}, "conformance"),
    ({"parity": "passed"}, "parity"),
])
def test_bad_field_is_one_line_error_naming_file_and_field(doc, field):
    with pytest.raises(DFNError) as err:
        Sidecar.from_dict(doc, "m.onnx.json")
    text = str(err.value)
    assert text.startswith("m.onnx.json: ") and f'"{field}"' in text and "expected" in text
    assert "\n" not in text


def test_not_an_object_and_not_json(tmp_path):
    with pytest.raises(DFNError, match="not a model sidecar.*JSON object"):
        Sidecar.from_dict([1, 2], "m.onnx.json")
    model = tmp_path / "m.onnx"
    sidecar_path(model).write_text("{scale: 2")
    with pytest.raises(DFNError, match="unreadable sidecar, not valid JSON"):
        Sidecar.read(model)
    assert Sidecar.read(tmp_path / "none.onnx").to_dict() == {}


def test_written_sidecar_reads_back_typed(tmp_path):
    from deepfusionnet.export.sidecar import write_sidecar

    sc = Sidecar(model="deepfusionnet", scale=1, multiple=8, task="enhance", precision="fp16",
                 extra={"opset": 17})
    sc.conformance = {"trt10": "pass"}
    target = write_sidecar(tmp_path / "m.onnx", sc)
    doc = json.loads(target.read_text())
    assert list(doc)[:2] == ["schema", "created"] and doc["opset"] == 17
    back = Sidecar.read(tmp_path / "m.onnx")
    assert back.conformance == {"trt10": "pass"} and back.precision == "fp16" and back.extra["schema"] == 1
    with pytest.raises(DFNError, match='"scale"'):
        write_sidecar(tmp_path / "bad.onnx", {"scale": -1})  # the export writes only what the runtime accepts
    assert not sidecar_path(tmp_path / "bad.onnx").exists()
