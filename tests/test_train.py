"""`dfn train` end to end on six real LOL pairs shrunk to 64x48: outputs, exact resume, kill -9,
option changes, unsafe or foreign weights, and a two-process torchrun (gloo) run.

Runs use ``--threads 1`` (bitwise-reproducible CPU kernels) and the default ``--bf16 off``: resumed
and straight runs are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from deepfusionnet.cli import main  # noqa: E402
from deepfusionnet.errors import DFNError  # noqa: E402
from deepfusionnet.runtime.images import read_image  # noqa: E402
from deepfusionnet.train.models import create_model  # noqa: E402
from deepfusionnet.train.trainer import epoch_order  # noqa: E402
from deepfusionnet.train.weights import load_model, load_state, save_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from conftest import TINY_NAMES as NAMES  # noqa: E402  (the pairs of the tiny fixture)
# 6 pairs, 2 held out -> 4 training pairs; batch 2 -> 2 steps per epoch; crop 32 fits 64x48. 101-104 are
# one re-shot view, which --val-group scene would hold out whole (4 of 6), so these runs group by image.
SMALL = ["--batch-size", "2", "--crop", "32", "--val-count", "2", "--val-group", "image", "--threads", "1"]




@pytest.fixture(autouse=True)
def _keep_torch_threads(keep_torch_threads):
    """Training sets torch's thread count; the next test gets back what it had (conftest)."""


def dfn(capsys, *args: str) -> tuple[int, str]:
    """Run ``dfn`` in this process; returns (exit code, stderr)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def dfn_proc(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepfusionnet.cli", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def train_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--data", data, "--out", out, "--epochs", str(epochs), *SMALL, *extra]


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix in (".part", ".tmp")]


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory) -> Path:
    """A 4-epoch (8-step) run, uninterrupted: the reference for every resume test."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([str(a) for a in train_args(tiny, out, 4)]) == 0
    return out


def test_run_writes_config_metrics_curves_and_weights(straight):
    cfg = json.loads((straight / "config.json").read_text())
    assert cfg["epochs"] == 4 and cfg["crop"] == 32 and cfg["model"] == "deepfusionnet" and cfg["bf16"] == "off"
    rows = (straight / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[:4] == ["epoch", "step", "lr", "loss"] and "val_psnr" in rows[0]
    assert len(rows) == 5
    hist = json.loads((straight / "metrics.json").read_text())
    assert [r["step"] for r in hist] == [2, 4, 6, 8]
    assert all(np.isfinite(r["loss"]) and 5 < r["val_psnr"] < 50 for r in hist)
    assert read_image(straight / "curves.png").shape[2] == 3
    for name in ("best", "last"):
        model, arch = load_model(straight / f"{name}.safetensors")
        assert arch == "deepfusionnet"
    assert not no_temporaries(straight)


def test_resume_mid_epoch_is_exact(tiny, straight, tmp_path, capsys):
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(tiny, out, 4, "--max-steps", "3"))[0] == 0  # stops inside epoch 2
    assert json.loads((out / "metrics.json").read_text())[-1]["epoch"] == 1
    assert (out / "last.safetensors").is_file()
    assert dfn(capsys, *train_args(tiny, out, 4, "--resume"))[0] == 0
    assert same_weights(out / "last.safetensors", straight / "last.safetensors")
    assert same_weights(out / "best.safetensors", straight / "best.safetensors")
    assert (out / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()


def test_ema_weights_are_the_average_and_resume_exactly(tiny, straight, tmp_path, capsys):
    from safetensors.torch import load_file

    ema = tmp_path / "ema"
    assert dfn(capsys, *train_args(tiny, ema, 4, "--ema", "0.5"))[0] == 0
    assert json.loads((ema / "config.json").read_text())["ema_decay"] == 0.5
    raw = torch.load(ema / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    plain = torch.load(straight / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    # The average only watches: the optimised weights are those of the same run without --ema ...
    assert raw.keys() == plain.keys() and all(torch.equal(raw[k], plain[k]) for k in raw)
    # ... while the weights it saves are the average, which differs from the last step's.
    saved = load_file(str(ema / "last.safetensors"))
    assert any(saved[k].is_floating_point() and not torch.equal(saved[k], raw[k]) for k in saved)
    # Interrupted inside epoch 2, then resumed: identical to the uninterrupted EMA run.
    out = tmp_path / "resumed"
    assert dfn(capsys, *train_args(tiny, out, 4, "--ema", "0.5", "--max-steps", "3"))[0] == 0
    assert dfn(capsys, *train_args(tiny, out, 4, "--ema", "0.5", "--resume"))[0] == 0
    assert same_weights(out / "last.safetensors", ema / "last.safetensors")
    assert (out / "metrics.csv").read_text() == (ema / "metrics.csv").read_text()


@pytest.fixture
def autocast_calls(monkeypatch) -> list[bool]:
    """The ``enabled`` flag of every ``torch.autocast`` the trainer enters, in order."""
    seen = []
    real = torch.autocast

    def spy(device_type, *a, enabled=True, **kw):
        seen.append(enabled)
        return real(device_type, *a, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    return seen


@pytest.mark.parametrize("flags,setting,native,autocast", [
    ([], "off", {"avx2", "avx512_bf16"}, False),  # FP32 by default (docs/training.md)
    (["--bf16", "auto"], "auto", {"avx2", "avx512_bf16"}, True),
    (["--bf16", "auto"], "auto", {"avx2", "fma"}, False),  # AVX2-only CPU: bf16 autocast measured 80x slower
    (["--bf16", "on"], "on", {"avx2"}, True),
    (["--no-bf16"], "off", {"avx512_bf16"}, False),
])
def test_bf16_autocast_only_when_asked_and_where_the_cpu_has_it(tiny, tmp_path, capsys, monkeypatch,
                                                                autocast_calls, flags, setting, native, autocast):
    from deepfusionnet.runtime.measure import machine

    monkeypatch.setattr(machine, "isa_features", lambda: sorted(native))
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, "--max-steps", "1", *flags))
    assert code == 0
    assert autocast_calls == [autocast]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bf16"] == setting
    assert f"training with {'bf16 autocast' if autocast else 'fp32'}" in err


def test_resume_may_change_the_precision_and_says_so(tiny, tmp_path, capsys, autocast_calls):
    # A run moved to a machine with(out) bf16 hardware: like --threads, --bf16 may change on --resume,
    # and the checkpoint records which arithmetic the run trained with so far.
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(tiny, out, 2, "--bf16", "off", "--max-steps", "1"))[0] == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["autocast"] is False
    autocast_calls.clear()  # the fp32 start above
    code, err = dfn(capsys, *train_args(tiny, out, 2, "--bf16", "on", "--max-steps", "2", "--resume"))
    assert code == 0 and autocast_calls == [True]
    assert "note: the run trained with fp32 until now and goes on with bf16 autocast" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["autocast"] is True
    code, err = dfn(capsys, *train_args(tiny, out, 2, "--bf16", "on", "--resume"))
    assert code == 0 and autocast_calls == [True, True, True] and "note:" not in err


def test_freeze_bn_keeps_init_statistics_and_trains_the_rest(tiny, straight, tmp_path, capsys):
    from safetensors.torch import load_file

    init = straight / "last.safetensors"
    out = tmp_path / "frozen"
    assert dfn(capsys, *train_args(tiny, out, 2, "--init", init, "--freeze-bn", "--lr", "1e-3"))[0] == 0
    before, after = load_file(str(init)), load_file(str(out / "last.safetensors"))
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith(".weight"))
    # The same fine-tune with BatchNorm training updates the statistics: the test above can fail.
    moving = tmp_path / "moving"
    assert dfn(capsys, *train_args(tiny, moving, 2, "--init", init, "--lr", "1e-3", "--max-steps", "3"))[0] == 0
    assert any(not torch.equal(before[k], load_file(str(moving / "last.safetensors"))[k]) for k in stats)
    # A run started before --freeze-bn existed resumes: the missing option reads as its default (off).
    cfg = json.loads((moving / "config.json").read_text())
    del cfg["freeze_bn"]
    (moving / "config.json").write_text(json.dumps(cfg))
    assert dfn(capsys, *train_args(tiny, moving, 2, "--init", init, "--lr", "1e-3", "--resume"))[0] == 0
    assert json.loads((moving / "metrics.json").read_text())[-1]["step"] == 4


def test_batchnorm_refresh_uses_the_centre_of_big_frames(tiny, monkeypatch):
    """Frames larger than one runtime tile contribute their centre only, so a folder of 12 MP photos
    cannot exhaust memory in the refresh; smaller frames are used whole."""
    from torch.optim.swa_utils import update_bn

    from deepfusionnet.train import data as D
    from deepfusionnet.train import trainer

    pairs = D.load_pairs(tiny)  # 64x48 frames
    cfg = trainer.TrainConfig(data=str(tiny))
    torch.manual_seed(0)
    model = create_model("deepfusionnet")

    def stats(frames):
        m = create_model("deepfusionnet")
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            update_bn([torch.from_numpy(f.transpose(2, 0, 1)[None].astype(np.float32) / 255.0) for f in frames], m)
        return next(b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)).running_var

    monkeypatch.setattr(trainer, "BN_REFRESH_MAX_SIDE", 32)
    trainer.refresh_batchnorm(model, pairs, cfg, task="enhance", multiple=8)
    got = next(b for b in model.modules() if isinstance(b, torch.nn.BatchNorm2d)).running_var.clone()
    torch.testing.assert_close(got, stats([f[8:40, 16:48] for f in pairs.low]))
    assert not torch.allclose(got, stats(pairs.low), rtol=1e-3)  # whole frames would differ


def test_init_takes_the_shipped_model_name(tiny, tmp_path, capsys):
    """``--init deepfusionnet`` starts from the shipped weights, as every other command resolves the name."""
    from safetensors.torch import load_file

    from deepfusionnet.runtime.artifacts import shipped_path

    out = tmp_path / "from-shipped"
    assert dfn(capsys, *train_args(tiny, out, 1, "--init", "deepfusionnet", "--freeze-bn", "--lr", "1e-12",
                                   "--max-steps", "1"))[0] == 0
    shipped, got = load_file(str(shipped_path("deepfusionnet", "weights"))), load_file(str(out / "last.safetensors"))
    # One step at lr 1e-12 barely moves the weights; frozen statistics are the shipped ones exactly.
    assert all(torch.allclose(shipped[k].float(), got[k].float(), atol=1e-6) for k in shipped)
    assert torch.equal(shipped["bottleneck.bn.running_var"], got["bottleneck.bn.running_var"])


def test_freeze_bn_without_init_is_one_line(tiny, tmp_path, capsys):
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, "--freeze-bn"))
    assert code == 1 and "--init" in err and len(err.strip().splitlines()) == 1, err


def test_ema_out_of_range_is_one_line(tiny, tmp_path, capsys):
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, "--ema", "1.5"))
    assert code == 1 and "--ema" in err and len(err.strip().splitlines()) == 1, err


def _wait_for_new_checkpoint(proc: subprocess.Popen, ckpt: Path, after: float, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not (ckpt.is_file() and ckpt.stat().st_mtime > after):
        if proc.poll() is not None:
            pytest.fail(f"training ended before a checkpoint was written: {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.05)


@pytest.mark.slow
def test_kill9_at_any_moment_then_resume_matches_straight_run(tiny, straight, tmp_path):
    out = tmp_path / "run"
    ckpt = out / "checkpoint.pt"
    # A checkpoint after nearly every step; killed twice, each time right after a checkpoint
    # appeared, i.e. most likely while the next one is being written.
    args = train_args(tiny, out, 4, "--checkpoint-minutes", "0.0005")
    after = 0.0
    for attempt in range(2):
        proc = dfn_proc(*args, *(["--resume"] if attempt else []))
        _wait_for_new_checkpoint(proc, ckpt, after)
        time.sleep(0.2 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = ckpt.stat().st_mtime
        torch.load(ckpt, weights_only=True)  # never half-written
    proc = dfn_proc(*args, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert same_weights(out / "last.safetensors", straight / "last.safetensors")
    assert json.loads((out / "metrics.json").read_text())[-1]["step"] == 8
    assert not no_temporaries(out), no_temporaries(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_a_checkpoint_and_resume_matches_straight_run(tiny, straight, tmp_path, sig):
    out = tmp_path / "run"
    args = train_args(tiny, out, 4, "--checkpoint-minutes", "60")  # only Ctrl-C and epoch ends write one
    proc = dfn_proc(*args)
    _wait_for_new_checkpoint(proc, out / "checkpoint.pt", 0.0)  # epoch 1 done: now inside epoch 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved at epoch" in err and "--resume" in err, err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) >= (1, 0)
    proc = dfn_proc(*args, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert same_weights(out / "last.safetensors", straight / "last.safetensors")
    assert not no_temporaries(out), no_temporaries(out)


def test_val_every_validates_less_often_without_changing_the_training(tiny, straight, tmp_path, capsys):
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(tiny, out, 4, "--val-every", "2", "--max-steps", "3"))[0] == 0
    # Resumed with another --val-every: a run-control option, like --threads.
    assert dfn(capsys, *train_args(tiny, out, 4, "--val-every", "3", "--resume"))[0] == 0
    hist = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert [r["epoch"] for r in hist if "val_psnr" in r] == [3, 4]  # every 3rd and the last
    ref = json.loads((straight / "metrics.json").read_text())
    assert [r["loss"] for r in hist] == [r["loss"] for r in ref]
    assert [r["val_psnr"] for r in hist if "val_psnr" in r] == [r["val_psnr"] for r in ref[2:]]
    assert same_weights(out / "last.safetensors", straight / "last.safetensors")
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "bad", 1, "--val-every", "0"))
    assert code == 1 and "--val-every" in err and len(err.strip().splitlines()) == 1


def test_resume_with_changed_options_is_a_clear_error(tiny, straight, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    code, err = dfn(capsys, *train_args(tiny, out, 4, "--resume", "--lr", "0.001"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "lr: 0.0001 -> 0.001" in err
    # Run-control options may change.
    code, err = dfn(capsys, *train_args(tiny, out, 4, "--resume", "--checkpoint-minutes", "9"))
    assert code == 0, err


def test_resume_guards(tiny, straight, tmp_path, capsys):
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "none", 2, "--resume"))
    assert code == 1 and "nothing to resume" in err
    code, err = dfn(capsys, *train_args(tiny, straight, 2))
    assert code == 1 and "already holds a run" in err
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "checkpoint.pt").write_bytes(b"\0" * 100)
    code, err = dfn(capsys, *train_args(tiny, out, 4, "--resume"))
    assert code == 1 and "unreadable checkpoint" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["--crop", "30"], "multiple of 8"),
    (["--crop", "128"], "larger than an image of 64x48"),
    (["--model", "unet"], "unknown model"),
    (["--epochs", "0"], "positive"),
])
def test_bad_options_are_one_line(tiny, tmp_path, capsys, args, needle):
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, *args))
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, err


def test_bad_data_folder(tmp_path, capsys):
    code, err = dfn(capsys, "train", "--data", tmp_path / "missing", "--out", tmp_path / "run")
    assert code == 1 and "missing" in err
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "low" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "high" / "1.png").write_bytes(b"")
    code, err = dfn(capsys, "train", "--data", tmp_path, "--out", tmp_path / "run")
    assert code == 1 and "1.png" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- weights: foreign, corrupt, unsafe


def test_init_with_another_models_weights(tiny, tmp_path, capsys):
    save_weights(create_model("deepfusionnet-sr"), "deepfusionnet-sr", tmp_path / "sr.safetensors")
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, "--init", tmp_path / "sr.safetensors"))
    assert code == 1 and "holds 'deepfusionnet-sr' weights, not 'deepfusionnet'" in err
    # Same model name claimed, other tensors inside (a renamed or foreign file).
    from safetensors.torch import save_file

    sd = create_model("deepfusionnet-sr").state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "foreign.safetensors"))
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run2", 1, "--init", tmp_path / "foreign.safetensors"))
    assert code == 1 and "do not fit model 'deepfusionnet'" in err and "missing" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"\xff" * 8 + b"{}", "truncated"])
def test_corrupt_safetensors(tiny, tmp_path, capsys, content):
    path = tmp_path / "w.safetensors"
    if content == "truncated":
        save_weights(create_model("deepfusionnet"), "deepfusionnet", path)
        path.write_bytes(path.read_bytes()[:100_000])
    else:
        path.write_bytes(content)
    with pytest.raises(DFNError):
        load_model(path)
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, "--init", path))
    assert code == 1 and str(path) in err and len(err.strip().splitlines()) == 1, err


def test_legacy_pt_loads_with_weights_only(tiny, tmp_path, capsys):
    model = create_model("deepfusionnet")
    sd = model.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "nested.pth")
    for name in ("plain.pt", "nested.pth"):
        loaded, arch = load_model(tmp_path / name, default="deepfusionnet")
        assert arch == "deepfusionnet"
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    # No name in a legacy file: the model whose names and shapes fit is found.
    torch.save(create_model("deepfusionnet-sr").state_dict(), tmp_path / "sr.pt")
    assert load_model(tmp_path / "sr.pt")[1] == "deepfusionnet-sr"
    assert load_model(tmp_path / "plain.pt")[1] == "deepfusionnet"
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(DFNError, match="fit none of the known models"):
        load_model(tmp_path / "other.pt")
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, "--max-steps", "1", "--init", tmp_path / "plain.pt"))
    assert code == 0, err


class _Payload:
    """Unpickling this runs code: exactly what a weights file must never be allowed to do."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_with_arbitrary_objects_is_refused(tmp_path, zip_format, capsys, tiny):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pt"
    obj = {"state_dict": create_model("deepfusionnet").state_dict(), "hook": _Payload()}
    if zip_format:
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DFNError) as exc:
        load_state(path)
    if zip_format:  # torch's format: the offending object is named
        assert "refused" in str(exc.value) and "system" in str(exc.value)
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, "--init", path))
    assert code == 1 and str(path) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_onnx_or_junk_given_as_weights(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(DFNError, match="ONNX"):
        load_state(tmp_path / "m.onnx")
    (tmp_path / "j.pt").write_bytes(os.urandom(500))
    with pytest.raises(DFNError, match="not a readable weights file"):
        load_state(tmp_path / "j.pt")


# ---------------------------------------------------------------- distributed


def test_epoch_order_shards_are_disjoint_and_complete():
    for world in (1, 2, 3):
        shards = [epoch_order(10, seed=0, epoch=4, rank=r, world=world) for r in range(world)]
        joined = np.concatenate(shards)
        assert sorted(joined.tolist()) == list(range(10))
    assert not np.array_equal(epoch_order(10, 0, 0), epoch_order(10, 0, 1))


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tiny, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this python")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "-m",
           "deepfusionnet.cli", *map(str, train_args(tiny, out, 2))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    hist = json.loads((out / "metrics.json").read_text())
    # 4 training pairs, a global batch of 2 split over 2 ranks -> 2 steps per epoch: the ranks shared
    # the data.
    assert [r["step"] for r in hist] == [2, 4]
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "checkpoint.pt", "config.json", "curves.png",
                                                      "last.safetensors", "metrics.csv", "metrics.json"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["world"] == 2


def test_ema_batchnorm_statistics_are_those_of_the_averaged_weights(tiny, tmp_path, capsys):
    """An average of moving weights gets BatchNorm statistics measured on its own activations over whole
    training frames (as inference sees them), not an average of the raw model's statistics (which, from
    scratch, left the enhancer at 13 dB on validation) nor a draw of random crops (0.5 dB of noise)."""
    from deepfusionnet.train import data as D

    out = tmp_path / "ema"
    assert dfn(capsys, *train_args(tiny, out, 3, "--ema", "0.9", "--lr", "3e-3"))[0] == 0
    model, _ = load_model(str(out / "last.safetensors"), name="deepfusionnet")
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    saved_mean, saved_var = bn.running_mean.clone(), bn.running_var.clone()  # train-mode passes update them
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    bn.register_forward_hook(lambda mod, inp, _out: seen.append(
        (inp[0].mean(dim=(0, 2, 3)), inp[0].transpose(0, 1).flatten(1).var(dim=1))))
    pairs = D.load_pairs(tiny)
    trainset = pairs.subset(D.split_validation(pairs, 2, 0, "image")[0])
    model.train()
    with torch.no_grad():
        for lo in trainset.low:  # every training frame, whole (fewer than the 64 the trainer takes at most)
            model(torch.from_numpy(lo.transpose(2, 0, 1)[None].astype(np.float32) / 255.0))
    mean = torch.stack([m for m, _ in seen]).mean(0)
    var = torch.stack([v for _, v in seen]).mean(0)
    torch.testing.assert_close(saved_mean, mean, rtol=1e-3, atol=1e-4 * float(mean.abs().max()))
    torch.testing.assert_close(saved_var, var, rtol=1e-3, atol=1e-4 * float(var.max()))


def test_val_seed_fixes_the_held_out_pairs_across_seeds(lol_train):
    """--seed changes data order and crops; --val-seed alone decides which pairs are held out."""
    from deepfusionnet.train import data as D
    from deepfusionnet.train.trainer import TrainConfig, validation_split

    pairs = D.load_pairs(lol_train)

    def held(**kw) -> list[int]:
        return sorted(validation_split(pairs, TrainConfig(data=str(lol_train), val_count=12, **kw))[1])

    assert held(seed=0) != held(seed=1)  # else the test below could not fail
    assert held(seed=1, val_seed=0) == held(seed=0)
    assert len(held(seed=1, val_seed=0)) >= 12


def test_targets_equal_to_the_ground_truth_change_nothing(tiny, straight, tmp_path, capsys):
    """``--targets`` only swaps the training targets: with the ground truth itself as the "teacher" the run
    is bit for bit the straight one (same samples, same validation)."""
    shutil.copytree(tiny / "high", tmp_path / "teacher")
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(tiny, out, 4, "--targets", tmp_path / "teacher"))[0] == 0
    assert same_weights(out / "last.safetensors", straight / "last.safetensors")
    assert json.loads((out / "config.json").read_text())["targets"] == str(tmp_path / "teacher")


def test_targets_train_toward_the_teacher_and_validate_on_the_ground_truth(tiny, straight, tmp_path, capsys):
    from deepfusionnet.train import data as D
    from deepfusionnet.train.trainer import TrainConfig, evaluate_model, validation_split

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for n in NAMES:  # a flat grey teacher, far from every ground truth
        cv2.imwrite(str(teacher / n), np.full((48, 64, 3), 200, np.uint8))
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(tiny, out, 4, "--targets", teacher, "--targets-mix", "0.5", "--lr", "1e-3"))[0] == 0
    model, _ = load_model(out / "last.safetensors")
    pairs = D.load_pairs(tiny)
    train_idx, val_idx = validation_split(pairs, TrainConfig(data=str(tiny), val_count=2, val_group="image"))
    # Validation in metrics.json is the ground truth's, not the teacher's.
    logged = json.loads((out / "metrics.json").read_text())[-1]["val_psnr"]
    assert logged == pytest.approx(evaluate_model(model, pairs.subset(val_idx), 16)["psnr"], abs=1e-6)
    # Trained halfway toward grey: the outputs on training frames move toward 200 (the straight run's do not).
    ref, _ = load_model(straight / "last.safetensors")
    x = torch.from_numpy(np.stack([D._chw(pairs.low[i]) for i in train_idx]))
    with torch.no_grad():
        moved, kept = model.eval()(x), ref.eval()(x)
    grey, truth = 200 / 255, np.mean([pairs.high[i].mean() / 255 for i in train_idx])
    assert abs(moved.mean().item() - (grey + truth) / 2) < abs(kept.mean().item() - (grey + truth) / 2)


def test_teacher_trains_toward_its_outputs_on_the_same_input(tiny, tmp_path, capsys):
    """``--teacher`` distils on the fly: trained toward an untrained network's colour-cast outputs (far from
    every ground truth), the student's outputs take on its cast; the same run on the ground truth's do not."""
    from deepfusionnet.train import data as D

    torch.manual_seed(1)
    teacher = create_model("deepfusionnet")
    with torch.no_grad():
        teacher.tail.bias.copy_(torch.tensor([2.0, -2.0, 0.0]))  # a magenta cast no ground truth has
    teacher_path = tmp_path / "teacher.safetensors"
    save_weights(teacher, "deepfusionnet", teacher_path)
    out, plain = tmp_path / "run", tmp_path / "plain"
    assert dfn(capsys, *train_args(tiny, out, 4, "--teacher", teacher_path, "--lr", "1e-2"))[0] == 0
    assert dfn(capsys, *train_args(tiny, plain, 4, "--lr", "1e-2"))[0] == 0
    assert json.loads((out / "config.json").read_text())["teacher"] == str(teacher_path)
    pairs = D.load_pairs(tiny)
    x = torch.from_numpy(np.stack([D._chw(lo) for lo in pairs.low]))
    with torch.no_grad():
        target = load_model(teacher_path)[0].eval()(x)
        moved = load_model(out / "last.safetensors")[0].eval()(x)
        kept = load_model(plain / "last.safetensors")[0].eval()(x)
    def cast(y):  # red over green: the teacher's cast
        return float((y[:, 0] - y[:, 1]).mean())

    assert cast(target) > 0.5 and cast(moved) > cast(kept) + 0.03, (cast(target), cast(moved), cast(kept))


def test_with_targets_blends_and_names_what_is_missing(tiny, tmp_path):
    from deepfusionnet.train import data as D

    pairs = D.load_pairs(tiny)
    teacher = tmp_path / "t"
    teacher.mkdir()
    for n in NAMES:
        cv2.imwrite(str(teacher / n.replace(".png", ".jpg")), np.zeros((48, 64, 3), np.uint8))  # any suffix
    blended = D.with_targets(pairs, teacher, 0.25)
    assert np.array_equal(blended.low[0], pairs.low[0])
    assert np.abs(blended.high[0].astype(float) - 0.75 * pairs.high[0]).max() <= 1  # JPEG of zeros is zeros
    (teacher / "103.jpg").unlink()
    with pytest.raises(DFNError, match="no target for training frame 103.png"):
        D.with_targets(pairs, teacher)
    cv2.imwrite(str(teacher / "103.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DFNError, match=r"103.png: size 10x10 differs"):
        D.with_targets(pairs, teacher)


@pytest.mark.parametrize("args,needle", [
    (["--targets-mix", "0"], "--targets-mix"),
    (["--targets", "nowhere"], "nowhere"),
    (["--model", "deepfusionnet-sr", "--targets", "."], "enhancer"),
    (["--targets", ".", "--teacher", "deepfusionnet"], "--teacher"),
    (["--teacher", "deepfusionnet-sr"], "does not do deepfusionnet's job"),
    (["--teacher", "nowhere.safetensors"], "nowhere"),
])
def test_targets_errors_are_one_line(tiny, tmp_path, capsys, args, needle):
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "run", 1, *args))
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, err


def test_whole_frame_samples_keep_the_frame(tiny):
    from deepfusionnet.train import data as D

    pairs = D.load_pairs(tiny)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(16):
        lo, hi = D.enhancement_sample(pairs, 0, rng, 0)
        assert lo.shape == hi.shape == (3, 48, 64)  # 64x48 is already a multiple of 16: never rotated by 90
        seen.add(lo.tobytes())
        # The target is the same flip / half-turn of the ground truth as the input is of the low frame.
        assert any(np.array_equal(hi, D._chw(np.ascontiguousarray(t))) for t in
                   (pairs.high[0], pairs.high[0][:, ::-1], pairs.high[0][::-1, ::-1], pairs.high[0][::-1]))
    assert len(seen) == 4  # identity, mirror, half-turn, half-turn mirrored
    odd = D.PairSet([pairs.low[0][:45, :61]], [pairs.high[0][:45, :61]], ["odd.png"])
    assert D.enhancement_sample(odd, 0, rng, 0)[0].shape == (3, 32, 48)  # cut to a multiple of 16


def test_whole_frame_training_runs_and_refuses_mixed_sizes(tiny, tmp_path, capsys):
    out = tmp_path / "whole"
    assert dfn(capsys, *train_args(tiny, out, 1, "--crop", "0"))[0] == 0
    assert json.loads((out / "config.json").read_text())["crop"] == 0
    assert np.isfinite(json.loads((out / "metrics.json").read_text())[-1]["loss"])
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny, mixed)
    for sub in ("low", "high"):  # one pair at another size
        img = cv2.imread(str(mixed / sub / "100.png"))
        cv2.imwrite(str(mixed / sub / "100.png"), cv2.resize(img, (80, 64)))
    code, err = dfn(capsys, *train_args(mixed, tmp_path / "m", 1, "--crop", "0"))
    assert code == 1 and "--batch-size 1" in err and len(err.strip().splitlines()) == 1, err
    assert dfn(capsys, *train_args(mixed, tmp_path / "m1", 1, "--crop", "0", "--batch-size", "1"))[0] == 0
    code, err = dfn(capsys, *train_args(tiny, tmp_path / "sr", 1, "--crop", "0", "--model", "deepfusionnet-sr"))
    assert code == 1 and "enhancer" in err


def _look_alikes(images: list[np.ndarray], held: list[int], kept: list[int]) -> np.ndarray:
    """For each held-out image, its highest correlation with a kept one (48x32 grey thumbnails): an oracle
    independent of the trainer's own grouping."""
    t = np.stack([cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), (48, 32), interpolation=cv2.INTER_AREA)
                  .astype(np.float64).ravel() for im in images])
    t -= t.mean(axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return (t[held] @ t[kept].T).max(axis=1)


def test_scene_grouping_keeps_reshot_views_out_of_training(lol_train):
    """LOL re-shoots a view at other exposures (or with an object moved), each shot with its own normal-light
    image: held out by image, many validation frames have a look-alike in training; held out by scene, none."""
    from deepfusionnet.train import data as D

    pairs = D.load_pairs(lol_train)
    train_idx, val_idx = D.split_validation(pairs, 40, 0, "image")
    assert (_look_alikes(pairs.high, val_idx, train_idx) > 0.95).sum() >= 10  # the leak
    train_idx, val_idx = D.split_validation(pairs, 40, 0, "scene")
    assert len(val_idx) >= 40 and len(train_idx) + len(val_idx) == len(pairs)
    assert _look_alikes(pairs.high, val_idx, train_idx).max() < 0.9


def test_the_two_validation_splits_are_crossed(lol_train):
    """Each 40-pair split is almost all training frames of the other split's runs, which is why
    benchmarks/cross_split.py compares lineages on the mean over both rather than on either one."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import cross_split

    held, overlap = cross_split.crossed_splits(lol_train)
    assert len(held["image40"]) == 40 and len(held["scene40"]) >= 40
    assert len(set(held["image40"]) & set(held["scene40"])) <= 2
    assert overlap["scene40"]["trained_by_image40_runs"] >= 35
    assert overlap["image40"]["trained_by_scene40_runs"] >= 35


def test_scene_grouping_of_one_fixed_view_is_a_clear_error(tmp_path, capsys):
    """Pairs from one fixed camera are one scene: holding out "a few" of them by scene would take them all."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    view = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1).astype(np.float64)
    for sub in ("low", "high"):
        (tmp_path / "cam" / sub).mkdir(parents=True)
    for i in range(8):  # one view, other exposures and noise per shot
        hi = np.clip(view * rng.uniform(0.8, 1.2) + rng.normal(0, 4, view.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "cam" / "high" / f"{i}.png"), hi)
        cv2.imwrite(str(tmp_path / "cam" / "low" / f"{i}.png"), (hi // 10).astype(np.uint8))
    args = ["train", "--data", tmp_path / "cam", "--out", tmp_path / "run", "--epochs", "1",
            "--batch-size", "2", "--crop", "32", "--val-count", "2", "--threads", "1"]
    code, err = dfn(capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(tmp_path / "cam") in err and "--val-group image" in err
    assert dfn(capsys, *args, "--val-group", "image", "--max-steps", "1")[0] == 0


def test_a_run_from_before_val_group_resumes_with_its_image_split(tiny, straight, tmp_path, capsys):
    """config.json without "val_group" was split by image; resuming it with the new default (scene) would
    change its validation pairs, so that is refused by name."""
    out = tmp_path / "old"
    shutil.copytree(straight, out)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["val_group"]
    (out / "config.json").write_text(json.dumps(cfg))
    args = ["train", "--data", tiny, "--out", out, "--epochs", "4", "--batch-size", "2", "--crop", "32",
            "--val-count", "2", "--threads", "1", "--resume"]
    code, err = dfn(capsys, *args)
    assert code == 1 and "val_group: 'image' -> 'scene'" in err and len(err.strip().splitlines()) == 1
    assert dfn(capsys, *args, "--val-group", "image")[0] == 0


def test_charbonnier_pulls_on_a_badly_exposed_frame_no_harder_than_on_a_good_one():
    """The robust pixel term: under MSE a frame 10x further off gets 10x the gradient, under Charbonnier
    about the same; the SSIM term and the reported MSE are the same for both."""
    from deepfusionnet.train.losses import hybrid_loss

    target = torch.full((2, 3, 32, 32), 0.5)
    offset = torch.tensor([0.02, 0.2]).view(2, 1, 1, 1)
    share = {}
    for pixel in ("mse", "charbonnier"):
        pred = (target + offset).requires_grad_(True)
        loss, parts = hybrid_loss(pred, target, ssim_weight=0.0, pixel=pixel)
        loss.backward()
        g = pred.grad.abs().flatten(1).sum(1)
        share[pixel] = float(g[1] / g[0])
        assert abs(parts["mse"] - float(((pred.detach() - target) ** 2).mean())) < 1e-6
    assert abs(share["mse"] - 10) < 0.01 and abs(share["charbonnier"] - 1) < 0.02
    with pytest.raises(ValueError, match="unknown pixel loss"):
        hybrid_loss(target, target, pixel="l3")


def test_pixel_loss_option_is_recorded_and_changes_the_training(tiny, straight, tmp_path, capsys):
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(tiny, out, 4, "--pixel-loss", "charbonnier"))[0] == 0
    assert json.loads((out / "config.json").read_text())["pixel_loss"] == "charbonnier"
    assert json.loads((straight / "config.json").read_text())["pixel_loss"] == "mse"
    assert not same_weights(out / "last.safetensors", straight / "last.safetensors")
    assert all(np.isfinite(r["loss"]) for r in json.loads((out / "metrics.json").read_text()))
    code, err = dfn(capsys, *train_args(tiny, out, 4, "--resume"))  # resuming needs the same loss
    assert code == 1 and "pixel" in err and len(err.strip().splitlines()) == 1, err
