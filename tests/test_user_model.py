"""Bring your own model: a network defined outside the package (the worked example of docs/models.md,
written to a temporary module) goes through ``dfn export``, ``dfn check``, ``dfn enhance``, ``dfn eval``
and ``dfn bench``, with its scale and multiple declared once."""

from __future__ import annotations

import json
import re
import sys
import uuid

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from conftest import REPO, SAMPLES  # noqa: E402

from deepfusionnet.cli import main  # noqa: E402


def doc_model_source() -> str:
    """The ``# my_enhancer.py`` block of docs/models.md: the test runs the documented example."""
    text = (REPO / "docs" / "models.md").read_text()
    block = re.search(r"```python\n(# my_enhancer\.py\n.*?)```", text, re.S)
    assert block, "docs/models.md lost its worked example"
    return block.group(1)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The documented module under a fresh name on sys.path, and a registry that forgets it afterwards."""
    from deepfusionnet.train.models import registry

    name = f"dfn_user_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(doc_model_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = dict(registry._REGISTRY)  # one table, shared with train.models.spec.register: restored in place
    yield name
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    sys.modules.pop(name, None)


def plain_weights(module_name: str, path, seed: int = 0):
    """What a user's own training leaves: a bare state dict, no deepfusionnet metadata."""
    import importlib

    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = importlib.import_module(module_name).build().eval()
    save_file(net.state_dict(), str(path))
    return net


def test_user_model_exports_checks_and_enhances_through_the_cli(user_module, tmp_path, capsys):
    from deepfusionnet.runtime.artifacts import file_sha256, resolve
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import crop, pad_to_multiple, to_image, to_tensor

    entry = f"{user_module}:build"
    weights = tmp_path / "my.safetensors"
    net = plain_weights(user_module, weights)
    out = tmp_path / "my.onnx"
    assert main(["export", entry, "--weights", str(weights), "--scale", "1", "--multiple", "8",
                 "-o", str(out), "--check-images", "2"]) == 0, capsys.readouterr().err
    side = json.loads(out.with_name("my.onnx.json").read_text())
    assert (side["model"], side["scale"], side["multiple"]) == (entry, 1, 8)
    assert side["parity"]["onnxruntime"]["passed"] and side["parity"]["onnxruntime"]["summary"]["images"] == 2
    assert side["conformance"]["trt10"] == side["conformance"]["trt11"] == "pass"
    assert side["source_weights"] == "my.safetensors"
    assert side["source_weights_sha256"] == file_sha256(weights)  # the user's file, not the tagged copy
    art = resolve(out)  # what every runtime command reads from the graph
    assert (art.model, art.scale, art.multiple) == (entry, 1, 8)

    assert main(["check", str(out)]) == 0

    enhanced = tmp_path / "out.png"
    frame = SAMPLES / "lol-22.png"
    assert main(["enhance", str(frame), "--model", str(out), "-o", str(enhanced)]) == 0
    got = read_image(enhanced)
    rgb = read_image(frame)
    x, size = pad_to_multiple(to_tensor(rgb), 8)
    with torch.no_grad():
        want = to_image(crop(net(torch.from_numpy(x)).numpy(), size))
    assert got.shape == rgb.shape
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1  # the user's network, not another
    assert float(got.mean()) > float(rgb.mean())  # and it did something: the gain only brightens


def test_user_model_runs_through_eval_and_bench(user_module, tmp_path, capsys):
    from deepfusionnet.runtime.images import read_image, write_image

    entry = f"{user_module}:build"
    weights = tmp_path / "my.safetensors"
    plain_weights(user_module, weights)
    out = tmp_path / "my.onnx"
    assert main(["export", entry, "--weights", str(weights), "--multiple", "8", "-o", str(out), "--no-check",
                 "--no-lint"]) == 0
    pairs = tmp_path / "pairs"
    for sub in ("low", "high"):
        (pairs / sub).mkdir(parents=True)
    img = read_image(SAMPLES / "lol-22.png")
    for i in range(2):  # odd sizes: the runtime pads to the recorded multiple and crops back
        write_image(pairs / "low" / f"{i}.png", img[i * 50:i * 50 + 61, 100:183])
        bright = np.clip(img[i * 50:i * 50 + 61, 100:183].astype(int) * 3, 0, 255).astype(np.uint8)
        write_image(pairs / "high" / f"{i}.png", bright)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(pairs), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["images"] == 2 and not scores["failed"] and scores["task"] == "enhance"
    assert 5.0 < scores["psnr"] < 60.0
    assert main(["bench", str(out), "--backend", "onnxruntime", "--size", "64x48", "--runs", "2",
                 "--warmup", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["status"] == "ok" and row["backend"] == "onnxruntime" and row["p50_ms"] > 0


def test_declared_once_on_the_function(user_module, tmp_path):
    """``build.multiple`` on the function replaces --multiple; both, disagreeing, is an error."""
    import importlib

    from deepfusionnet.errors import DFNError
    from deepfusionnet.export.onnx import load_source

    module = importlib.import_module(user_module)
    module.build.multiple = 8
    weights = tmp_path / "my.safetensors"
    plain_weights(user_module, weights)
    net, name, artifact = load_source(f"{user_module}:build", weights)
    assert (name, artifact.scale, artifact.multiple) == (f"{user_module}:build", 1, 8)
    with pytest.raises(DFNError, match="declares multiple 8, but --multiple 16"):
        load_source(f"{user_module}:build", weights, multiple=16)


def test_wrong_declarations_are_one_line_errors(user_module, tmp_path, capsys):
    entry = f"{user_module}:build"
    weights = tmp_path / "my.safetensors"
    plain_weights(user_module, weights)
    out = tmp_path / "x.onnx"
    cases = {
        ("--multiple", "1"): "declare --multiple N",  # three stride-2 convs need multiples of 8
        ("--multiple", "8", "--scale", "2"): "declare --scale",
    }
    for extra, expected in cases.items():
        assert main(["export", entry, "--weights", str(weights), *extra, "-o", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not out.exists()
    assert main(["export", entry, "-o", str(out)]) == 1
    assert "--weights" in capsys.readouterr().err
    assert main(["export", "no_such_pkg_xyz:build", "--weights", str(weights), "-o", str(out)]) == 1
    assert "cannot import no_such_pkg_xyz" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(other))
    assert main(["export", entry, "--weights", str(other), "--multiple", "8", "-o", str(out)]) == 1
    assert "weights do not fit model" in capsys.readouterr().err


def test_a_weights_file_cannot_make_deepfusionnet_import_code(tmp_path, monkeypatch):
    """The model name inside a weights file is data: an entry point it names is not imported (it could
    be any module on the path), and loading is a one-line error that says how to register it."""
    from safetensors.torch import save_file

    from deepfusionnet.errors import DFNError
    from deepfusionnet.train.weights import load_model

    marker = tmp_path / "imported"
    name = f"dfn_evil_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "evil.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"model": f"{name}:build"})
    with pytest.raises(DFNError, match="not registered in this process"):
        load_model(path)
    assert not marker.exists()


def test_a_package_registers_its_model_through_the_entry_point_group(user_module, tmp_path, monkeypatch):
    """A ``deepfusionnet.models`` entry point naming a ModelSpec makes the model a registered name."""
    import importlib
    import importlib.metadata as md

    from deepfusionnet.export.onnx import load_source
    from deepfusionnet.train.models import ModelSpec, get_spec, registry

    module = importlib.import_module(user_module)
    module.SPEC = ModelSpec(name="my-enhancer-test", build=module.build, scale=1, multiple=8)
    ep = md.EntryPoint(name="my-enhancer-test", value=f"{user_module}:SPEC", group=registry.ENTRY_POINT_GROUP)
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == registry.ENTRY_POINT_GROUP else real(**kw))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    spec = get_spec("my-enhancer-test")
    assert (spec.scale, spec.multiple) == (1, 8)
    weights = tmp_path / "my.safetensors"
    plain_weights(user_module, weights)
    net, name, artifact = load_source("my-enhancer-test", weights)
    assert name == "my-enhancer-test" and artifact.multiple == 8
