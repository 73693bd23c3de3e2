"""Exposure calibration: the gain, its metadata on every artifact kind, the fit, and that the Enhancer
applies it once to the whole stitched frame."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfusionnet.cli import main
from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.artifacts import Artifact, resolve
from deepfusionnet.runtime.backends.base import TensorInfo
from deepfusionnet.runtime.enhancer import Enhancer
from deepfusionnet.runtime.exposure import EPS, Exposure, parse_exposure

SHRINK = Exposure(slope=-0.3, centre=float(np.log(0.4)), offset=0.05)


def test_gain_pulls_the_mean_brightness_toward_the_centre():
    dark, bright = np.full((1, 3, 8, 8), 0.2, np.float32), np.full((1, 3, 8, 8), 0.8, np.float32)
    for frame in (dark, bright):
        m = float(frame.mean())
        expected = m * np.exp(0.05 - 0.3 * (np.log(m + EPS) - np.log(0.4)))
        assert float(SHRINK.apply(frame).mean()) == pytest.approx(expected, rel=1e-5)
    # 0.2 and 0.8 are 2 stops apart; after calibration 0.7 of that (1 + slope) remains
    ratio = SHRINK.apply(bright).mean() / SHRINK.apply(dark).mean()
    assert np.log2(ratio) == pytest.approx(0.7 * 2, rel=1e-3)
    batch = np.concatenate([dark, bright])
    assert np.allclose(SHRINK.apply(batch), np.concatenate([SHRINK.apply(dark), SHRINK.apply(bright)]))
    assert np.array_equal(Exposure(0.0, 0.0, 0.0).apply(bright), bright)


@pytest.mark.parametrize("value", [SHRINK.to_json(), json.loads(SHRINK.to_json())])
def test_parse_reads_json_text_and_dicts(value):
    assert parse_exposure(value, "x") == SHRINK
    assert parse_exposure(None, "x") is None and parse_exposure("", "x") is None


@pytest.mark.parametrize("value,needle", [
    ("{not json", "unreadable exposure calibration"),
    ({"slope": 0.1}, "unreadable exposure calibration"),
    ({"slope": 2.0, "centre": 0, "offset": 0}, "out of range"),
    ({"slope": "nan", "centre": 0, "offset": 0}, "out of range"),
])
def test_bad_calibration_is_one_line_naming_the_file(value, needle):
    with pytest.raises(DFNError, match=needle) as exc:
        parse_exposure(value, "model.onnx")
    assert str(exc.value).startswith("model.onnx:") and "\n" not in str(exc.value)


@dataclass
class LocalGain:
    """A backend double: output = 3 * input (the test's input ramps left to right, so tiles differ)."""

    name: str = "double"
    inputs: list = field(default_factory=lambda: [TensorInfo("input", (1, 3, None, None), "float32")])
    outputs: list = field(default_factory=lambda: [TensorInfo("output", (1, 3, None, None), "float32")])
    calls: int = 0

    def infer(self, feed):
        self.calls += 1
        return {"output": feed["input"] * 3.0}

    def close(self):
        pass


def test_enhancer_calibrates_the_whole_stitched_frame_once(tmp_path):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.02, 0.3, 160, dtype=np.float32)
    x = np.clip(rng.random((1, 3, 96, 160), dtype=np.float32) * ramp, 0, 1)
    art = Artifact(tmp_path / "m.onnx", "onnx", "deepfusionnet", exposure=SHRINK)
    tiled = Enhancer(LocalGain(), art, tile=64, overlap=8)
    whole = Enhancer(LocalGain(), art, tile=1024)
    raw = whole.run_network(x)
    assert np.allclose(raw, x * 3.0)
    out_tiled, out_whole = tiled.run_tensor(x), whole.run_tensor(x)
    assert tiled.backend.calls > 1 and whole.backend.calls == 2
    # one gain for the frame: tiles cannot disagree, and tiling changes nothing
    assert np.allclose(out_tiled, out_whole, atol=1e-6)
    assert np.allclose(out_whole / raw, SHRINK.gain(raw), rtol=1e-5)
    plain = Enhancer(LocalGain(), Artifact(tmp_path / "m.onnx", "onnx", "deepfusionnet"))
    assert np.array_equal(plain.run_tensor(x), plain.run_network(x))


def test_resolve_reads_the_calibration_from_every_artifact_kind(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["input"], ["output"])
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, None, None]) for n in ("input", "output")]
    graph = helper.make_graph([node], "g", io[:1], io[1:])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    from deepfusionnet.export.sidecar import set_metadata

    set_metadata(proto, "deepfusionnet", 1, 8, "fp32", SHRINK.to_json())
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    assert resolve(bare).exposure == SHRINK  # no sidecar: from the graph's dfn.exposure property

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    sidecar = {"model": "deepfusionnet", "exposure": json.loads(SHRINK.to_json())}
    (tmp_path / "m.engine.json").write_text(json.dumps(sidecar))
    assert resolve(engine).exposure == SHRINK

    (tmp_path / "bad.engine").write_bytes(b"plan")
    (tmp_path / "bad.engine.json").write_text(json.dumps({"model": "deepfusionnet", "exposure": {"slope": 5}}))
    with pytest.raises(DFNError, match="bad.engine"):
        resolve(tmp_path / "bad.engine")

    set_metadata(proto, "deepfusionnet", 1, 8, "fp32")  # re-export without a calibration drops the old one
    assert not [p for p in proto.metadata_props if p.key == "dfn.exposure"]


def test_fit_recovers_an_over_dispersed_exposure():
    from deepfusionnet.train.exposure import fit_exposure, fit_from_samples, score

    rng = np.random.default_rng(1)
    pairs = []
    for _ in range(24):
        hi = np.clip(rng.normal(rng.uniform(60, 170), 30, (32, 48, 3)), 0, 255).astype(np.uint8)
        pairs.append((hi // 8, hi))  # the "low" frame carries the truth in this double
    centre = np.log(0.4)

    def network(x):  # over-disperses: log mean = centre + 1.5 * (true log mean - centre)
        hi = x * 8.0
        m = float(hi.mean())
        target = np.exp(centre + 1.5 * (np.log(m) - centre))
        return hi * (target / m)

    exp = fit_exposure(network, pairs)
    assert exp.slope == pytest.approx(1 / 1.5 - 1, abs=0.03)  # undoes the 1.5x spread
    s = score(network, pairs, exp)
    assert s["images"] == 24 and s["psnr_calibrated"] > s["psnr"] + 3
    with pytest.raises(DFNError, match="at least 8"):
        fit_from_samples(np.zeros(3), np.zeros(3))


def test_fit_exposure_command_writes_new_weights_and_keeps_the_input(lol_train, tmp_path, capsys):
    pytest.importorskip("torch")
    data = tmp_path / "pairs"
    names = sorted(p.name for p in (lol_train / "low").iterdir())[:12]
    for sub in ("low", "high"):
        (data / sub).mkdir(parents=True)
        for n in names:
            img = cv2.imread(str(lol_train / sub / n))
            cv2.imwrite(str(data / sub / n), cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA))
    out = tmp_path / "cal.safetensors"
    assert main(["fit-exposure", "deepfusionnet", "--data", str(data), "--val-count", "3", "-o", str(out),
                 "--threads", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    art = resolve(out)
    assert art.model == "deepfusionnet" and art.exposure == Exposure(**doc["exposure"])
    assert doc["training_frames"] + doc["held_out"]["images"] == 12 and doc["held_out"]["images"] >= 3
    shipped = resolve("deepfusionnet", "weights")
    from deepfusionnet.train.weights import load_state

    a, b = load_state(out), load_state(shipped.path)
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)  # same weights, new metadata
    code = main(["fit-exposure", "deepfusionnet", "--data", str(data), "--val-count", "6", "--val-group", "image",
                 "-o", str(tmp_path / "b.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and "training pairs left after holding out" in err and str(data) in err
    assert not (tmp_path / "b.safetensors").exists()
    code = main(["fit-exposure", str(out), "--data", str(data), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "is the input weights file" in err and len(err.strip().splitlines()) == 1


def test_export_carries_the_weights_calibration_into_graph_and_sidecar(tmp_path):
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from deepfusionnet.export.pipeline import ExportOptions, export_model
    from deepfusionnet.train.weights import load_model, save_weights

    net, name = load_model(resolve("deepfusionnet-sr", "weights").path)  # small: a quick export
    weights = tmp_path / "cal.safetensors"
    save_weights(net, name, weights, {"exposure": SHRINK.to_json()})
    out = tmp_path / "cal.onnx"
    export_model(str(weights), out, ExportOptions(check=False, simplify=False))
    assert json.loads((tmp_path / "cal.onnx.json").read_text())["exposure"] == json.loads(SHRINK.to_json())
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert parse_exposure(props["dfn.exposure"], "x") == SHRINK
    (tmp_path / "cal.onnx.json").unlink()
    assert resolve(out).exposure == SHRINK  # a bare graph keeps it too
    plain = tmp_path / "plain.onnx"
    export_model("deepfusionnet-sr", plain, ExportOptions(check=False, simplify=False))
    assert resolve(plain).exposure is None
    assert "dfn.exposure" not in {p.key for p in onnx.load(str(plain)).metadata_props}
