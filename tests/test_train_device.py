"""Training on a device and on several processes (#33): --device resolution and its errors, the
arithmetic chosen per device, the sample stream and its sampler, progress lines, device-independent
checkpoints, a 2-process gloo run against a 1-process run, and resume across world sizes and devices.

The CUDA branches run here through capabilities passed in (train/device.py is plain functions of them);
the tests marked ``gpu(stack="torch")`` at the end run the same paths on a real GPU and skip without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from deepfusionnet.cli import main  # noqa: E402
from deepfusionnet.errors import DFNError  # noqa: E402
from deepfusionnet.train import data as D  # noqa: E402
from deepfusionnet.train import device as dev  # noqa: E402
from deepfusionnet.train.device import Capabilities  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
CPU = torch.device("cpu")
GPU0, GPU1 = torch.device("cuda", 0), torch.device("cuda", 1)
NO_GPU = Capabilities(cuda_devices=0, torch_cuda=None)
TWO_GPUS = Capabilities(cuda_devices=2, cuda_bf16=True, torch_cuda="12.8", gpu_name="NVIDIA H100")
OLD_GPU = Capabilities(cuda_devices=1, cuda_bf16=False, torch_cuda="12.8", gpu_name="Tesla T4")

# 10 pairs, 2 held out -> 8 training pairs; global batch 4 -> 2 steps per epoch, 2 per process under a
# 2-process torchrun. Crop 32 of 64x48 frames and one thread per process: a run takes seconds on 2 cores.
SMALL = ["--batch-size", "4", "--crop", "32", "--val-count", "2", "--val-group", "image", "--threads", "1",
         "--epochs", "2", "--val-every", "2"]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    """Ten 64x48 pairs cut from the shipped sample frames: brightened as the target, darkened by the
    synthetic dark ISP as the input (no data set needed)."""
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.train.synthetic import darken

    root = tmp_path_factory.mktemp("pairs")
    (root / "low").mkdir()
    (root / "high").mkdir()
    rng = np.random.default_rng(0)
    frames = [read_image(p) for p in sorted((REPO / "samples" / "night").iterdir())]
    for i in range(10):
        img = frames[i % len(frames)]
        h, w = img.shape[:2]
        y, x = (i * 37) % (h - 192), (i * 53) % (w - 256)
        crop = cv2.resize(img[y:y + 192, x:x + 256], (64, 48), interpolation=cv2.INTER_AREA)
        high = np.clip(255.0 * (crop / 255.0) ** (1 / 2.2), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "high" / f"{i}.png"), high[..., ::-1])
        cv2.imwrite(str(root / "low" / f"{i}.png"), darken(high, rng)[..., ::-1])
    return root


@pytest.fixture(autouse=True)
def _keep_torch_threads(keep_torch_threads):
    """Training sets torch's thread count; the next test gets back what it had (conftest)."""


def dfn(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def train_args(data: Path, out: Path, *extra) -> list:
    return ["train", "--data", data, "--out", out, *SMALL, *extra]


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    if not TORCHRUN.exists():
        pytest.skip("torchrun not installed beside this python")
    port = 29500 + (os.getpid() * 7 + len(str(args))) % 2000
    cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_port", str(port), "-m",
           "deepfusionnet.cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def initial_weights() -> dict:
    from deepfusionnet.train.models import create_model

    torch.manual_seed(0)  # as the trainer seeds before building the model (--seed 0)
    return create_model("deepfusionnet").state_dict()


def assert_same_training(a: Path, b: Path) -> None:
    """Runs ``a`` and ``b`` trained the same model up to float rounding. Adam's first steps move every weight
    by about the learning rate whatever the gradient's size, so rounding noise in a tiny gradient moves a
    weight as far as a real one: the weights compare by distance relative to how far training moved them.
    Measured: a 2-process run without synchronised BatchNorm is 1.2 of the movement away and its epoch
    losses differ by 3e-3 to 8e-3; with it, 0.06 and below 3e-5 (the same as 1 vs 2 threads)."""
    la = [r["loss"] for r in json.loads((a / "metrics.json").read_text())]
    lb = [r["loss"] for r in json.loads((b / "metrics.json").read_text())]
    np.testing.assert_allclose(lb, la, rtol=5e-4)
    wa, wb, w0 = weights(a / "last.safetensors"), weights(b / "last.safetensors"), initial_weights()
    learned = [k for k in w0 if w0[k].is_floating_point() and "running" not in k]
    gap = torch.cat([(wa[k] - wb[k]).flatten() for k in learned]).norm()
    moved = torch.cat([(wa[k] - w0[k]).flatten() for k in learned]).norm()
    assert float(moved) > 0.1 and float(gap / moved) < 0.2, (float(gap), float(moved))
    for k in (k for k in w0 if "running" in k):  # BatchNorm statistics of the global batch
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------------
# --device


@pytest.mark.parametrize("spec,caps,rank,world,expected", [
    ("auto", NO_GPU, 0, 1, CPU),
    ("auto", TWO_GPUS, 0, 1, GPU0),
    ("auto", TWO_GPUS, 1, 2, GPU1),  # under torchrun each process takes the GPU of its LOCAL_RANK
    ("cpu", TWO_GPUS, 0, 1, CPU),
    ("cuda", TWO_GPUS, 1, 2, GPU1),
    ("cuda:1", TWO_GPUS, 0, 1, GPU1),
    ("CUDA:0", TWO_GPUS, 0, 1, GPU0),
    ("cpu", NO_GPU, 1, 2, CPU),  # gloo between CPU processes
])
def test_resolve_device(spec, caps, rank, world, expected):
    assert dev.resolve_device(spec, caps, rank, world) == expected


@pytest.mark.parametrize("spec,caps,rank,world,needle", [
    ("cuda", NO_GPU, 0, 1, "no CUDA GPU is visible (this torch"),
    ("cuda:0", NO_GPU, 0, 1, "CPU-only build); use --device cpu or auto"),
    ("cuda", Capabilities(0, torch_cuda="12.8"), 0, 1, "torch sees no GPU (CUDA 12.8 build"),
    ("cuda:2", TWO_GPUS, 0, 1, "only 2 CUDA GPU(s) visible (cuda:0 to cuda:1)"),
    ("cuda:0", TWO_GPUS, 0, 2, "puts all 2 processes of this node on one GPU"),
    ("cuda", TWO_GPUS, 3, 4, "4 processes on this node but 2 CUDA GPU(s) visible; start torchrun with "
                             "--nproc_per_node 2"),
    ("auto", OLD_GPU, 1, 2, "--nproc_per_node 1"),
    ("gpu", TWO_GPUS, 0, 1, "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("cpu:0", TWO_GPUS, 0, 1, "--device must be"),
    ("cuda:x", TWO_GPUS, 0, 1, "--device must be"),
])
def test_device_errors_are_one_line(spec, caps, rank, world, needle):
    with pytest.raises(DFNError) as err:
        dev.resolve_device(spec, caps, rank, world)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_no_cuda_reason_names_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DFNError, match="CUDA_VISIBLE_DEVICES=''"):
        dev.resolve_device("cuda", Capabilities(0, torch_cuda="12.8"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_device_cuda_without_one_is_one_line_before_any_work(pairs_dir, tmp_path, capsys, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("the data was loaded before the device was checked")

    monkeypatch.setattr(D, "load_pairs", no_loading)
    code, err = dfn(capsys, *train_args(pairs_dir, tmp_path / "run", "--device", "cuda"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("dfn train: error: --device cuda: no CUDA GPU is visible")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# Arithmetic per device


@pytest.mark.parametrize("device,bf16,amp,caps,expected", [
    (CPU, "off", "auto", TWO_GPUS, dev.FP32),  # --amp is CUDA's; the CPU keeps FP32 by default
    (CPU, "on", "off", NO_GPU, dev.BF16),
    (CPU, "auto", "auto", Capabilities(cpu_bf16=True), dev.BF16),
    (CPU, "auto", "fp16", Capabilities(cpu_bf16=False), dev.FP32),  # AVX2-only: bf16 measured 80x slower
    (GPU0, "off", "auto", TWO_GPUS, dev.BF16),  # --bf16 is the CPU's
    (GPU0, "on", "off", TWO_GPUS, dev.FP32),
    (GPU0, "off", "fp16", TWO_GPUS, dev.FP16),
    (GPU0, "off", "auto", OLD_GPU, dev.FP16),  # no bf16 before compute capability 8.0: fp16 + scaler
    (GPU0, "off", "bf16", TWO_GPUS, dev.BF16),
])
def test_arithmetic_per_device(device, bf16, amp, caps, expected):
    assert dev.choose_arithmetic(device, bf16, amp, caps) == expected


def test_arithmetic_errors_and_scaler_only_for_fp16():
    with pytest.raises(DFNError, match="--amp bf16: Tesla T4 has no bf16 arithmetic"):
        dev.choose_arithmetic(GPU0, "off", "bf16", OLD_GPU)
    with pytest.raises(DFNError, match="--amp must be one of"):
        dev.choose_arithmetic(GPU0, "off", "fp8", TWO_GPUS)
    assert dev.FP16.scaler and not dev.BF16.scaler and not dev.FP32.scaler
    assert isinstance(dev.make_scaler(CPU, dev.FP16), torch.amp.GradScaler)
    assert dev.make_scaler(CPU, dev.BF16) is None and dev.make_scaler(CPU, dev.FP32) is None
    with dev.autocast(CPU, dev.FP32):
        assert not torch.is_autocast_enabled("cpu")
    with dev.autocast(CPU, dev.BF16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_per_device_settings():
    assert dev.distributed_backend(GPU0) == "nccl" and dev.distributed_backend(CPU) == "gloo"
    assert dev.channels_last(GPU0) and not dev.channels_last(CPU)
    assert dev.default_workers(CPU, 16) == 0
    assert dev.default_workers(GPU0, 16) == 4
    assert dev.default_workers(GPU0, 16, local_world=8) == 1  # the node's cores shared by its processes
    assert dev.default_workers(GPU0, None) == 0


# ---------------------------------------------------------------------------------------------------
# The sample stream and its sampler


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_global_batch_is_the_same_samples_on_any_number_of_processes(world):
    steps, batch = 3, 8
    shards = []
    for rank in range(world):
        s = D.ShardSampler(steps, batch, rank, world)
        s.set_epoch(5, start_step=1)
        keys = list(s)
        assert len(keys) == len(s) == (steps - 1) * batch // world
        shards.append([keys[i:i + batch // world] for i in range(0, len(keys), batch // world)])
    for step in range(steps - 1):
        together = sorted(k for shard in shards for k in shard[step])
        assert together == [(5, (step + 1) * batch + k) for k in range(batch)]  # disjoint and complete


def test_a_global_batch_must_split_evenly():
    with pytest.raises(DFNError, match="--batch-size 6 .* does not split evenly over 4 processes"):
        D.ShardSampler(2, 6, 0, 4)


def test_samples_depend_on_their_key_alone(pairs_dir):
    """Any process or worker, in any order, cuts the same sample for a key; the stream is the one the
    trainer drew in the loop before workers (its single-process runs resume exactly across the change)."""
    pairs = D.load_pairs(pairs_dir)
    stream = D.SampleStream(pairs, seed=3, global_batch=4, crop=32)
    keys = [(1, 5), (0, 2), (1, 5), (2, 9)]
    first = [stream[k] for k in keys]
    again = D.SampleStream(pairs, seed=3, global_batch=4, crop=32)
    for k, (x, y) in zip(reversed(keys), reversed(first)):
        x2, y2 = again[k]
        assert np.array_equal(x, x2) and np.array_equal(y, y2)
    # Position 5 of epoch 1 is step 1, slot 1: pair permutation[5], RNG (seed, epoch, step, slot, 0).
    i = int(np.random.default_rng([3, 1]).permutation(len(pairs))[5])
    x, y = D.enhancement_sample(pairs, i, np.random.default_rng([3, 1, 1, 1, 0]), 32)
    assert np.array_equal(first[0][0], x) and np.array_equal(first[0][1], y)


def test_workers_cut_the_same_batches_as_the_loop(pairs_dir):
    pairs = D.load_pairs(pairs_dir)
    batches = []
    for workers in (0, 2):
        sampler = D.ShardSampler(2, 4, rank=1, world=2)
        sampler.set_epoch(1)
        loader = D.make_loader(D.SampleStream(pairs, 0, 4, 32), sampler, workers)
        batches.append([(x.clone(), y.clone()) for x, y in loader])
    assert len(batches[0]) == 2 and batches[0][0][0].shape == (2, 3, 32, 32)
    for (x0, y0), (x1, y1) in zip(*batches):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


# ---------------------------------------------------------------------------------------------------
# Progress, curves, finished runs, checkpoints


def test_progress_lines_when_stderr_is_not_a_terminal(pairs_dir, tmp_path, capsys):
    code, err = dfn(capsys, *train_args(pairs_dir, tmp_path / "run", "--log-every", "1"))
    assert code == 0
    lines = [ln for ln in err.splitlines() if "samples/s" in ln]
    assert [ln.split(":")[0] for ln in lines] == [f"epoch {e}/2 step {s}/2" for e in (1, 2) for s in (1, 2)]
    for ln in lines:
        loss, rate, eta = ln.split(": ", 1)[1].split(", ")
        assert 0 < float(loss.split()[1]) < 10 and float(rate.split()[0]) > 0
        assert eta.startswith("ETA 0:00:")
    code, err = dfn(capsys, *train_args(pairs_dir, tmp_path / "quiet", "--log-every", "0"))
    assert code == 0 and "samples/s" not in err


def test_progress_line_figures():
    from deepfusionnet.train.trainer import ProgressLog

    now = [100.0]
    p = ProgressLog(every=5, global_batch=8, start_step=10, end_step=30, clock=lambda: now[0])
    assert not p.due(12) and p.due(15) and not ProgressLog(0, 8, 0, 10).due(5)
    now[0] = 110.0  # 5 steps of 8 samples in 10 s; 15 steps left at 2 s a step
    expected = "epoch 1/3 step 5/10: loss 0.2500, 4.0 samples/s, ETA 0:00:30"
    assert p.line(15, "epoch 1/3 step 5/10", 0.25) == expected
    p.restart_interval(15)  # a validation: not training speed
    now[0] = 150.0
    assert p.line(20, "e", 0.5) == "e: loss 0.5000, 1.0 samples/s, ETA 0:00:50"  # 10 steps left at 5 s a step


def test_curves_show_the_loss_of_a_one_epoch_run(tmp_path):
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.train.trainer import _plot_curves

    _plot_curves(tmp_path, [{"epoch": 1, "step": 2, "lr": 1e-4, "loss": 0.5, "val_psnr": 15.0}])
    img = read_image(tmp_path / "curves.png").astype(int)
    line_colour = np.array([0x1F, 0x77, 0xB4])  # matplotlib's first colour
    near = np.abs(img - line_colour).sum(axis=2) < 60
    half = img.shape[1] // 2
    assert near[:, :half].sum() > 5 and near[:, half:].sum() > 5  # the loss point and the PSNR point


def test_resume_of_a_finished_run_says_so_at_once(pairs_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(pairs_dir, out))[0] == 0
    before = (out / "checkpoint.pt").read_bytes()

    def no_loading(*a, **k):
        raise AssertionError("a finished run loaded its data")

    monkeypatch.setattr(D, "load_pairs", no_loading)
    code = main([str(a) for a in train_args(pairs_dir, out, "--resume", "--json")])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["finished"] is True
    best = json.loads((out / "metrics.json").read_text())[-1]["val_psnr"]
    assert captured.err.strip().splitlines() == [
        f"{out}: the run already finished its 2 epochs (best validation PSNR {best:.2f} dB); nothing to "
        f"resume. To train on, start a new run from its weights with --init {out / 'last.safetensors'}"]
    assert (out / "checkpoint.pt").read_bytes() == before


def test_checkpoint_tensors_are_contiguous_cpu_copies():
    from deepfusionnet.train.trainer import on_cpu

    t = torch.rand(2, 3, 4, 5).to(memory_format=torch.channels_last)
    optimizer = {"state": {0: {"exp_avg": t, "step": torch.tensor(3.0)}},
                 "param_groups": [{"lr": 0.1, "params": [0]}]}
    state = on_cpu({"model": {"w": t}, "optimizer": optimizer, "epoch": 2})
    w = state["model"]["w"]
    assert w.device.type == "cpu" and w.is_contiguous() and torch.equal(w, t)
    assert state["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}] and state["epoch"] == 2


def test_a_gpu_run_resumes_on_the_cpu_and_says_so(pairs_dir, tmp_path, capsys):
    """A checkpoint written on a GPU differs from a CPU one only in what it records (its tensors are CPU
    tensors, test_checkpoint_tensors_are_contiguous_cpu_copies): a bf16 CUDA run resumed on the CPU."""
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(pairs_dir, out, "--max-steps", "1"))[0] == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["device"], state["world"], state["arithmetic"]) == ("cpu", 1, "fp32")
    assert state["global_batch"] == 4
    state.update(device="cuda", world=2, arithmetic="bf16", autocast=True)
    torch.save(state, out / "checkpoint.pt")
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--resume"))
    assert code == 0
    assert ("note: the run trained on CUDA (2 processes) until now and continues on the CPU (1 process); "
            "the global batch stays 4, so the samples stay the same") in err
    assert ("note: the run trained with bf16 autocast until now and goes on with fp32; "
            "--bf16 on would keep it") in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["device"], state["world"], state["arithmetic"]) == ("cpu", 1, "fp32")


@pytest.mark.slow  # fp16 autocast on a CPU: slow kernels
def test_fp16_gradient_scaler_is_used_checkpointed_and_resumed(pairs_dir, tmp_path, capsys, monkeypatch):
    """The fp16 path (CUDA GPUs without bf16) on the CPU: the arithmetic is forced, so autocast, the
    GradScaler and its state in the checkpoint run as they would on such a GPU."""
    from deepfusionnet.train import trainer

    monkeypatch.setattr(trainer.dev, "choose_arithmetic", lambda *a: dev.FP16)
    steps = []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, opt, *a, **k: steps.append(1) or
                        real_step(self, opt, *a, **k))
    out = tmp_path / "run"
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--max-steps", "1"))
    assert code == 0 and "training with fp16 autocast with loss scaling" in err and steps == [1]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["arithmetic"] == "fp16" and state["scaler"]["_growth_tracker"] == 1
    assert dfn(capsys, *train_args(pairs_dir, out, "--max-steps", "2", "--resume"))[0] == 0
    # The scaler went on counting clean steps from its saved state, rather than starting again at 0.
    assert torch.load(out / "checkpoint.pt", weights_only=True)["scaler"]["_growth_tracker"] == 2


def test_compile_wraps_the_training_model(pairs_dir, tmp_path, capsys, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or module)
    assert dfn(capsys, *train_args(pairs_dir, tmp_path / "run", "--max-steps", "1", "--compile"))[0] == 0
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile"] is True


# ---------------------------------------------------------------------------------------------------
# The torch backend's device


def test_torch_backend_device_and_its_errors(pairs_dir, tmp_path, capsys):
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.backends.base import load_backend

    be = load_backend("torch", resolve("deepfusionnet-sr", "weights").path, device="cpu")
    y = be.infer({"input": np.zeros((1, 3, 16, 16), np.float32)})["output"]
    assert be.device == CPU and y.shape == (1, 3, 32, 32) and y.dtype == np.float32
    code, err = dfn(capsys, "eval", "baseline:gamma", "--data", pairs_dir, "--device", "cpu")
    assert code == 1 and "a classical baseline runs in numpy on the CPU" in err
    code, err = dfn(capsys, "enhance", REPO / "samples" / "night", "-o", tmp_path / "out", "--backend",
                    "onnxruntime", "--device", "cuda")
    assert code == 1 and err.strip().endswith("add --backend torch (other backends choose their own device)")
    if not torch.cuda.is_available():
        with pytest.raises(DFNError, match="no CUDA GPU is visible"):
            load_backend("torch", resolve("deepfusionnet-sr", "weights").path, device="cuda")


# ---------------------------------------------------------------------------------------------------
# Several processes (gloo on the CPU)


@pytest.fixture(scope="module")
def single(pairs_dir, tmp_path_factory) -> Path:
    """One process, global batch 4: the reference of the multi-process runs."""
    out = tmp_path_factory.mktemp("single") / "run"
    # In a fresh process, as the torchrun runs it is compared with are: late in the full suite, after
    # ONNX Runtime, OpenVINO and the seed models' exports have run in this process, training here
    # crashed the interpreter (SIGSEGV, 2026-12-04), where the same test alone passes.
    cmd = [sys.executable, "-m", "deepfusionnet.cli", *map(str, train_args(pairs_dir, out))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_gloo_processes_train_what_one_process_trains(pairs_dir, single, tmp_path):
    out = tmp_path / "ddp"
    proc = torchrun(*train_args(pairs_dir, out, "--log-every", "1"))
    assert_same_training(single, out)
    # Rank 0 alone logs and writes: one first line, one progress line per step, one row per epoch.
    err = proc.stderr.splitlines()
    first_lines = [ln for ln in err if ln.startswith("training with")]
    assert first_lines == ["training with fp32 on the CPU, 2 processes (--bf16 off)"]
    assert len([ln for ln in err if "samples/s" in ln]) == 4
    assert len([ln for ln in err if ln.startswith('{"epoch"')]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "checkpoint.pt", "config.json",
                                                     "curves.png", "last.safetensors", "metrics.csv",
                                                     "metrics.json"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (state["world"], state["global_batch"]) == (2, 4)


@pytest.mark.slow
def test_resume_across_world_sizes(pairs_dir, single, tmp_path, capsys):
    """1 process for a step (mid-epoch), 2 processes to step 3 (across an epoch end), 1 process to the end:
    the run a single process trains straight."""
    out = tmp_path / "run"
    assert dfn(capsys, *train_args(pairs_dir, out, "--max-steps", "1"))[0] == 0
    proc = torchrun(*train_args(pairs_dir, out, "--max-steps", "3", "--resume"))
    assert "note: the run trained on the CPU (1 process) until now and continues on the CPU (2 processes)" \
        in proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["world"] == 2
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--resume"))
    assert code == 0
    assert "trained on the CPU (2 processes) until now and continues on the CPU (1 process)" in err
    assert_same_training(single, out)


def test_global_batch_not_divisible_by_the_processes_is_one_line(pairs_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before joining the process group: nothing to wait for
    code, err = dfn(capsys, *train_args(pairs_dir, tmp_path / "run", "--batch-size", "3"))
    assert code == 1 and err.strip() == ("dfn train: error: --batch-size 3 is the global batch; it does not "
                                         "split evenly over 2 processes (use a multiple of 2)")


@pytest.mark.slow
def test_gpu_training_benchmark_says_not_measured_without_a_gpu(tmp_path):
    """benchmarks/gpu_training.py on a machine without CUDA: the CPU figures it measured, and for every
    GPU figure "not measured" with the reason, never a number."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the benchmark measures it (test_cuda_* and the script itself)")
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_training.py"), "--out", str(out),
                           "--pairs", "10", "--size", "96x64", "--steps", "4", "--cpu-steps", "6",
                           "--batch-size", "2", "--crop", "32"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for figure in (result["gpu"], result["training"]["cuda"], result["training"]["cuda_over_cpu"],
                   result["cpu_vs_cuda_outputs"]):
        assert isinstance(figure, str) and figure.startswith("not measured: ")
    cpu = result["training"]["cpu"]
    assert cpu["status"] == "ok" and cpu["finite_loss"]
    assert cpu["arithmetic"] == "fp32 on the CPU (--bf16 off)"
    assert isinstance(cpu["samples_per_s"], float) and cpu["samples_per_s"] > 0
    assert result["data"].startswith("synthetic: 10 pairs of 96x64")


# ---------------------------------------------------------------------------------------------------
# On a CUDA GPU (skipped without one; benchmarks/gpu_training.py measures speed)

needs_cuda = pytest.mark.gpu(stack="torch")


@needs_cuda
def test_cuda_training_checkpoints_on_cpu_and_resumes_across_devices(pairs_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--device", "cuda", "--max-steps", "1"))
    expected = "bf16 autocast" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16 autocast"
    assert code == 0 and f"training with {expected} on cuda:0 (--amp auto)" in err
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["device"] == "cuda" and all(t.device.type == "cpu" for t in saved["model"].values())
    assert all(t.device.type == "cpu" for s in saved["optimizer"]["state"].values() for t in s.values())
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--device", "cpu", "--max-steps", "2", "--resume"))
    assert code == 0 and "trained on CUDA (1 process) until now and continues on the CPU (1 process)" in err
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--device", "cuda", "--resume"))
    assert code == 0 and "trained on the CPU (1 process) until now and continues on CUDA (1 process)" in err
    model_w = weights(out / "last.safetensors")
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in model_w.values())


@needs_cuda
def test_cuda_fp32_training_matches_the_cpu(pairs_dir, tmp_path, capsys):
    """--amp off on CUDA trains the CPU's model up to float rounding (TF32 and cuDNN's kernel choice)."""
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert dfn(capsys, *train_args(pairs_dir, cpu, "--device", "cpu"))[0] == 0
    assert dfn(capsys, *train_args(pairs_dir, gpu, "--device", "cuda", "--amp", "off"))[0] == 0
    assert_same_training(cpu, gpu)


@needs_cuda
def test_cuda_fp16_scaler_and_workers(pairs_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--device", "cuda", "--amp", "fp16", "--workers", "2",
                                        "--max-steps", "2"))
    assert code == 0 and "training with fp16 autocast with loss scaling on cuda:0" in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["arithmetic"] == "fp16" and "scaler" in state
    assert all(np.isfinite(r["loss"]) for r in json.loads((out / "metrics.json").read_text()))


@needs_cuda
@pytest.mark.slow
def test_cuda_compiled_training(pairs_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = dfn(capsys, *train_args(pairs_dir, out, "--device", "cuda", "--compile", "--max-steps", "2"))
    assert code == 0 and all(np.isfinite(r["loss"]) for r in json.loads((out / "metrics.json").read_text()))


@needs_cuda
def test_torch_backend_on_cuda_matches_the_cpu():
    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.backends.base import load_backend
    from deepfusionnet.runtime.images import read_image
    from deepfusionnet.runtime.processing import pad_to_multiple, to_tensor

    path = resolve("deepfusionnet", "weights").path
    x, _ = pad_to_multiple(to_tensor(read_image(REPO / "samples" / "night" / "lol-22.png")), 8)
    out = {d: load_backend("torch", path, device=d).infer({"input": x})["output"] for d in ("cpu", "cuda")}
    assert np.abs(out["cpu"] - out["cuda"]).max() < 1e-4  # FP32 reference: TF32 is off in the torch backend


@needs_cuda
@pytest.mark.slow
def test_two_gpus_under_nccl_train_what_one_gpu_trains(pairs_dir, tmp_path, capsys):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    one, two = tmp_path / "one", tmp_path / "two"
    assert dfn(capsys, *train_args(pairs_dir, one, "--device", "cuda", "--amp", "off"))[0] == 0
    proc = torchrun(*train_args(pairs_dir, two, "--device", "cuda", "--amp", "off"))
    assert "training with fp32 on cuda:0, 2 processes (--amp off)" in proc.stderr
    assert_same_training(one, two)
