"""dfn bench, the benchmark harness, the machine report and the cached ``auto`` decision.

Most tests use tiny ONNX graphs written here (a conv + sigmoid "enhancer", a resize + conv "SR"), so
they exercise the real backends in milliseconds; the OpenVINO parity test uses the real network.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from deepfusionnet.cli import main
from deepfusionnet.runtime.measure import auto, bench, frames, plan, plot, report, runner, scoring
from deepfusionnet.runtime.measure.machine import machine_info
from helpers import tiny_onnx

onnx = pytest.importorskip("onnx")
HAS_OV = importlib.util.find_spec("openvino") is not None
ROW_KEYS = {"model", "backend", "precision", "size", "status", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "fps",
            "infer_p50_ms", "decode_ms", "pre_ms", "post_ms", "load_s", "first_run_ms", "mem_mb", "peak_rss_mb",
            "speedup_vs_torch", "psnr_eval15", "psnr_delta_db", "picked", "runs"}


@pytest.fixture()
def tiny_dir(tmp_path) -> Path:
    d = tmp_path / "artifacts"
    d.mkdir()
    tiny_onnx(d / "deepfusionnet.onnx")
    tiny_onnx(d / "deepfusionnet-sr.onnx", scale=2, model="deepfusionnet-sr", seed=1)
    return d


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DFN_CACHE", str(tmp_path / "cache"))


def run_json(argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_json_schema(tiny_dir, capsys):
    backends = "onnxruntime,openvino" if HAS_OV else "onnxruntime"
    out = run_json(["bench", str(tiny_dir / "deepfusionnet.onnx"), "--backend", backends, "--precision", "fp32,bf16",
                    "--size", "64x64,48x40", "--runs", "2", "--json"], capsys)
    assert set(out) >= {"rows", "machine", "settings"}
    assert out["machine"]["cores"] >= 1 and out["machine"]["cpu"]
    assert "onnxruntime" in out["machine"]["libraries"]
    rows = out["rows"]
    assert len(rows) == len(backends.split(",")) * 2 * 2
    for r in rows:
        assert ROW_KEYS <= set(r)
        if r["status"] == "ok":
            assert r["runs"] == 2 and r["p50_ms"] > 0 and r["p50_ms"] <= r["p99_ms"]
            assert r["infer_p50_ms"] <= r["p50_ms"] and r["fps"] > 0
            assert r["mem_mb"] is not None and r["peak_rss_mb"] > 0
        else:
            assert r["p50_ms"] is None  # a row that did not run carries no numbers, only its reason
    ort_bf16 = [r for r in rows if r["backend"] == "onnxruntime" and r["precision"] == "bf16"]
    assert all(r["status"].startswith("skipped") for r in ort_bf16)
    assert {r["size"] for r in rows} == {"64x64", "48x40"}


def test_bench_torch_and_speedup(capsys):
    pytest.importorskip("torch")
    out = run_json(["bench", "deepfusionnet", "--backend", "torch", "--size", "32x32", "--runs", "2", "--threads", "1",
                    "--json"], capsys)
    (row,) = out["rows"]
    assert row["status"] == "ok" and row["backend"] == "torch"
    assert row["speedup_vs_torch"] == pytest.approx(1.0)


def test_bench_auto_reports_pick(tiny_dir, capsys):
    out = run_json(["bench", str(tiny_dir / "deepfusionnet.onnx"), "--backend", "auto", "--size", "64x64",
                    "--runs", "2", "--json"], capsys)
    (row,) = out["rows"]
    assert row["status"] == "ok" and row["backend"] == "auto"
    assert row["picked"].split()[0] in ("onnxruntime", "openvino")
    assert row["detail"]["stages"][0]["cached"] is False


def test_pipelines_scale(tiny_dir):
    """Chain doubles the size; half:+SR returns the input size; unsupported rows keep a reason."""
    frame = frames.synthetic_frame((64, 48))
    for spec, expect in (("deepfusionnet+deepfusionnet-sr", (96, 128, 3)), ("half:deepfusionnet+deepfusionnet-sr", (48, 64, 3)),
                         ("deepfusionnet-sr", (96, 128, 3))):
        row, _ = runner.open_runner(plan.parse_model_spec(spec), "onnxruntime", "fp32", (64, 48), tiny_dir)
        times: dict = {}
        assert row.run(frame, times).shape == expect
        assert set(times) >= {"pre", "infer", "post"}
        row.close()
    with pytest.raises(plan.Unsupported, match="dfn export"):
        plan.plan_stage("deepfusionnet", "onnxruntime", "int8", tiny_dir)


def test_quality_and_plot(tiny_dir, lol_eval15, tmp_path):
    from deepfusionnet.runtime.measure.pairs import find_pairs

    pairs = find_pairs(lol_eval15)[:1]
    res = bench.bench(["deepfusionnet"], ["onnxruntime"], ["fp32"], [(64, 64)], runs=1, artifacts=tiny_dir,
                      quality_pairs=pairs)
    (row,) = res["rows"]
    assert 3 < row["psnr_eval15"] < 60 and row["psnr_delta_db"] == 0.0 and row["quality_images"] == 1
    png = plot.plot_frontier(res, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| deepfusionnet | 64x64 | onnxruntime | fp32 |" in report.markdown_table(res)


def test_sr_quality_scores_the_inputs_dfn_eval_scores(lol_eval15, tmp_path, capsys):
    """The SR model is scored on degraded ground truth; the matrix and dfn eval must degrade alike."""
    from deepfusionnet.runtime.measure.pairs import find_pairs

    pairs = find_pairs(lol_eval15)[:2]
    for sub, i in (("low", 0), ("high", 1)):
        (tmp_path / sub).mkdir()
        for p in pairs:
            (tmp_path / sub / p[i].name).write_bytes(p[i].read_bytes())
    row, _ = runner.open_runner(plan.parse_model_spec("deepfusionnet-sr"), "onnxruntime", "fp32", None)
    try:
        q = scoring.quality(row, pairs)
    finally:
        row.close()
    assert main(["eval", "deepfusionnet-sr", "--data", str(tmp_path), "--backend", "onnxruntime", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert q["images"] == ev["images"] == 2
    assert abs(q["psnr"] - ev["psnr"]) < 1e-3, (q, ev["psnr"])


def test_bad_arguments_are_user_errors(tiny_dir, capsys):
    assert main(["bench", str(tiny_dir / "deepfusionnet.onnx"), "--size", "64by64"]) == 1
    assert main(["bench", str(tiny_dir / "deepfusionnet.onnx"), "--backend", "cuda9"]) == 1
    assert "unknown backend" in capsys.readouterr().err


# -- auto -------------------------------------------------------------------------------------------

def test_auto_decision_is_cached(tiny_dir, monkeypatch):
    calls = []
    real = auto.measure
    monkeypatch.setattr(auto, "measure", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    model = str(tiny_dir / "deepfusionnet.onnx")
    first = auto.choose_with_options(model, (64, 64))
    assert not first.cached and len(calls) == 1
    second = auto.choose_with_options(model, (64, 64))
    assert second.cached and len(calls) == 1  # reused, not re-measured
    assert (second.backend, second.path, second.options) == (first.backend, first.path, first.options)
    assert auto.choose(model, (64, 64)) == (first.backend, first.path) and len(calls) == 1
    auto.choose_with_options(model, (48, 48))  # another size is another decision
    assert len(calls) == 2
    data = json.loads(auto.cache_path().read_text())
    assert len(data) == 2 and all(rec["candidates"] for rec in data.values())
    auto.cache_path().write_text("{not json")  # a corrupt cache costs one measurement, not a crash
    assert not auto.choose_with_options(model, (64, 64)).cached and len(calls) == 3
    be = auto.open_choice(first)
    assert be.infer({"input": np.zeros((1, 3, 64, 64), np.float32)})["output"].shape == (1, 3, 64, 64)


def test_auto_variants_need_passed_parity(tiny_dir):
    base = tiny_dir / "deepfusionnet.onnx"
    variant = tiny_dir / "deepfusionnet.int8.onnx"
    tiny_onnx(variant, seed=5)  # different weights: a "variant" far from FP32
    sidecar = Path(str(variant) + ".json")
    labels = lambda: {c.label for c in auto.candidates(base)}  # noqa: E731
    assert "onnxruntime int8" not in labels()  # no sidecar: unverified
    for bad in ("[1, 2", json.dumps({"parity": "yes"}), json.dumps({"parity": {"passed": None}})):
        sidecar.write_text(bad)
        assert not auto.parity_passed(variant)
    sidecar.write_text(json.dumps({"parity": {"passed": True, "psnr_db": 41.0}}))
    assert "onnxruntime int8" in labels()
    # It passed its export gate on paper, but on this backend it is far from FP32: the sanity gate drops it.
    choice = auto.choose_with_options(str(base), (64, 64))
    c = next(c for c in choice.candidates if c["label"] == "onnxruntime int8")
    assert c["passed"] is False and c["psnr_vs_fp32"] < auto.VARIANT_SANITY_DB
    assert choice.precision != "int8"


def test_machine_info():
    m = machine_info()
    assert m["cores"] >= 1 and isinstance(m["isa"], list) and "numpy" in m["libraries"]


def _bf16_ab():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bf16_training

    return bf16_training


def test_bf16_training_ab_tables_the_two_runs_epoch_by_epoch(tmp_path):
    ab = _bf16_ab()
    arms = {}
    for name, vals in {"fp32": [(2, 19.0, 0.79), (4, 19.6, 0.80)], "bf16": [(2, 18.5, 0.78), (4, 18.4, 0.79)]}.items():
        out = tmp_path / name
        out.mkdir()
        rows = [{"epoch": 1, "step": 61, "lr": 5e-4, "loss": 0.3}]  # not validated: no row of its own
        rows += [{"epoch": e, "step": 61 * e, "lr": 5e-4, "loss": 0.2, "val_psnr": p, "val_ssim": s}
                 for e, p, s in vals]
        (out / "metrics.json").write_text(json.dumps(rows))
        val = ab.validated(out)
        arms[name] = {"val": val, "best": max(r["psnr"] for r in val), "wall_s": 10.0, "resumed": name == "bf16"}
    md = ab.markdown({"epochs": 4, "seed": 0, "machine": {"cpu": "test", "isa": ["avx512_bf16"]}, "arms": arms})
    assert "| 2 | 19.00 / 0.790 | 18.50 / 0.780 | -0.50 |" in md
    assert "| 4 | 19.60 / 0.800 | 18.40 / 0.790 | -1.20 |" in md and "| 1 |" not in md
    assert "- bf16: best 18.50 dB; this invocation 10 s (resumed)" in md
    cmd = ab.train_command(tmp_path, tmp_path / "fp32", 4, 0, 2, "off")
    assert cmd[cmd.index("--bf16") + 1] == "off" and "--resume" not in cmd
    (tmp_path / "fp32" / "checkpoint.pt").touch()  # an interrupted comparison resumes
    assert "--resume" in ab.train_command(tmp_path, tmp_path / "fp32", 4, 0, 2, "off")


def test_bf16_training_ab_refuses_where_bf16_is_emulated(monkeypatch, capsys, tmp_path):
    from deepfusionnet.runtime.measure import machine

    ab = _bf16_ab()
    monkeypatch.setattr(machine, "has_native_bf16", lambda: False)
    monkeypatch.setattr("sys.argv", ["bf16_training.py", "--runs", str(tmp_path / "runs")])
    assert ab.main() == 1
    assert "no bf16 hardware" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_rows_report_energy_per_frame_on_a_jetson_and_say_not_a_jetson_elsewhere(tiny_dir, tmp_path, monkeypatch):
    from helpers import ORIN_NANO

    res = bench.bench(["deepfusionnet"], ["onnxruntime"], ["fp32"], [(64, 64)], runs=2, artifacts=tiny_dir)
    (row,) = res["rows"]
    assert row["detail"]["energy_mj_per_frame"] == "not a Jetson"
    assert res["machine"]["jetson_facts"]["power_mode"] == "not a Jetson"
    # A stand-in tegrastats on PATH (the line an Orin Nano prints): the row gains power and mJ per frame.
    fake = tmp_path / "bin" / "tegrastats"
    fake.parent.mkdir()
    fake.write_text("#!%s\nimport time\nwhile True:\n    print(%r, flush=True)\n    time.sleep(0.05)\n"
                    % (__import__("sys").executable, ORIN_NANO))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    res = bench.bench(["deepfusionnet"], ["onnxruntime"], ["fp32"], [(64, 64)], runs=2, artifacts=tiny_dir)
    (row,) = res["rows"]
    d = row["detail"]
    assert d["power_rail"] == "VDD_IN" and d["power_mw"] == pytest.approx(7432.0)
    assert d["energy_mj_per_frame"] > 0


def test_a_member_with_its_own_artifacts_is_timed_in_the_same_rounds(tiny_dir, tmp_path):
    # Two graphs of one model at one precision (say post-training and QAT INT8): one group, one row each,
    # each loading its own folder's graph and scored apart.
    other = tmp_path / "other"
    other.mkdir()
    tiny_onnx(other / "deepfusionnet.onnx", seed=3)
    cfg = bench.Settings(runs=2, artifacts=tiny_dir, quality_pairs=None)
    members = [("onnxruntime", "fp32"), ("onnxruntime", "fp32", other)]
    rows = bench.bench_group("deepfusionnet", (64, 64), members, cfg, {})
    assert [r.status for r in rows] == ["ok", "ok"] and all(r.runs == 2 for r in rows)
    assert "artifacts" not in rows[0].detail and rows[1].detail["artifacts"] == str(other)
    assert Path(rows[0].detail["stages"][0]["path"]).parent == tiny_dir
    assert Path(rows[1].detail["stages"][0]["path"]).parent == other
