"""Training the seed methods: the L1 loss and StepLR schedule of the seed U-Nets, NEID's enhance-and-upscale
pairing (the same in training and in ``dfn eval``), and unpaired CycleGAN training with exact resume."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402

from deepfusionnet.cli import main  # noqa: E402
from deepfusionnet.runtime.measure.evaluate import halve_low, prepare_pair  # noqa: E402
from deepfusionnet.runtime.images import read_image  # noqa: E402
from deepfusionnet.train import data as D  # noqa: E402
from deepfusionnet.train.losses import hybrid_loss  # noqa: E402
from deepfusionnet.train.models import ModelSpec, register  # noqa: E402
from deepfusionnet.train.trainer import TrainConfig, learning_rate  # noqa: E402
from deepfusionnet.train.unpaired import ImagePool, lr_factor  # noqa: E402
from deepfusionnet.train.weights import load_state, read_metadata  # noqa: E402

from conftest import TINY_NAMES as NAMES  # noqa: E402  (the pairs of the tiny fixture)
SMALL = ["--batch-size", "2", "--val-count", "2", "--val-group", "image", "--threads", "1"]




@pytest.fixture(autouse=True)
def _keep_torch_threads(keep_torch_threads):
    """Training sets torch's thread count; the next test gets back what it had (conftest)."""


def dfn(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_l1_pixel_loss_is_the_mean_absolute_error():
    pred, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    loss, _ = hybrid_loss(pred, target, ssim_weight=0.0, pixel="l1")
    assert float(loss) == pytest.approx(float((pred - target).abs().mean()), rel=1e-6)


def test_step_schedule_multiplies_by_gamma_every_n_epochs():
    cfg = TrainConfig(data="x", lr=1e-4, lr_schedule="step", lr_step_epochs=10, lr_gamma=0.8)
    per_epoch = 34
    at = [learning_rate(cfg, epoch * per_epoch, per_epoch, 200 * per_epoch) for epoch in (0, 9, 10, 19, 20, 25)]
    assert at == pytest.approx([1e-4, 1e-4, 0.8e-4, 0.8e-4, 0.64e-4, 0.64e-4])


def test_enhance_sr_pairs_are_the_low_frame_halved_in_training_and_in_eval(lol_train):
    low, high = read_image(lol_train / "low" / "100.png"), read_image(lol_train / "high" / "100.png")
    x, target = prepare_pair(low, high, "100.png", 2, "lol", task="enhance-sr")
    assert x.shape == (200, 300, 3) and target.shape == (400, 600, 3)
    assert np.array_equal(x, cv2.resize(low, (300, 200), interpolation=cv2.INTER_CUBIC))
    # A training sample is the same operation on a window: input = that window of the low frame halved.
    pairs = D.PairSet([low], [high], ["100.png"])
    inp, tgt = D.enhance_sr_sample(pairs, 0, np.random.default_rng(7), 32)
    assert inp.shape == (3, 32, 32) and tgt.shape == (3, 64, 64)
    rng = np.random.default_rng(7)
    lo_win, hi_win = D.random_crop(rng, 64, low, high)
    lo_win, hi_win = D.augment(rng, lo_win, hi_win)
    assert np.allclose(inp, halve_low(lo_win).transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert np.allclose(tgt, hi_win.transpose(2, 0, 1) / 255.0, atol=1e-6)
    # An SR model (task sr) still gets its degraded target, not the low frame.
    x_sr, _ = prepare_pair(low, high, "100.png", 2, "lol", task="sr")
    assert not np.array_equal(x_sr, x)


def test_neid_trains_on_its_own_task_and_dfn_eval_pairs_it_the_same_way(tiny, tmp_path, capsys):
    out = tmp_path / "neid"
    code, _, err = dfn(capsys, "train", "--model", "neid", "--data", tiny, "--out", out, "--epochs", "1",
                       "--crop", "16", "--max-steps", "1", *SMALL)
    assert code == 0, err
    meta = read_metadata(out / "last.safetensors")
    assert meta["task"] == "enhance-sr" and meta["scale"] == "2"
    code, stdout, err = dfn(capsys, "eval", out / "last.safetensors", "--data", tiny, "--backend", "torch",
                            "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["task"] == "enhance-sr-x2" and doc["images"] == len(NAMES)


# A toy generator/discriminator pair: unpaired training of the real CycleGAN is the same loop, 10^4 x slower.
class ToyGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x) + 2.0 * x - 1.0)


def toy_discriminator() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, padding=1))


register(ModelSpec(name="toy-cyclegan-test", build=ToyGenerator, scale=1, multiple=4,
                   discriminator=toy_discriminator))


def _unpaired(capsys, tiny, out, *extra) -> tuple[int, str]:
    code, _, err = dfn(capsys, "train", "--model", "toy-cyclegan-test", "--unpaired", "--data", tiny,
                       "--out", out, "--epochs", "3", "--crop", "16", "--log-every", "0", *SMALL, *extra)
    return code, err


def test_unpaired_training_resumes_exactly(tiny, tmp_path, capsys):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert _unpaired(capsys, tiny, straight, "--max-steps", "5")[0] == 0
    assert _unpaired(capsys, tiny, parts, "--max-steps", "3")[0] == 0
    code, err = _unpaired(capsys, tiny, parts, "--max-steps", "5", "--resume")
    assert code == 0, err
    a, b = load_state(straight / "last.safetensors"), load_state(parts / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((straight / "metrics.json").read_text())
    rows = history if isinstance(history, list) else history.get("history", history)
    assert rows and "val_psnr" in rows[0]  # paired validation after each unpaired epoch (2 steps)
    assert read_metadata(straight / "best.safetensors")["model"] == "toy-cyclegan-test"


def test_unpaired_refuses_a_model_without_discriminator_and_a_bad_extra_photo(tiny, tmp_path, capsys):
    code, _, err = dfn(capsys, "train", "--model", "unet-sid", "--unpaired", "--data", tiny, "--out",
                       tmp_path / "x", "--crop", "16")
    assert code == 1 and "no discriminator" in err and "cyclegan-ema-aspp" in err and len(err.strip().splitlines()) == 1
    extra = tmp_path / "night"
    extra.mkdir()
    cv2.imwrite(str(extra / "good.jpg"), np.full((40, 40, 3), 30, np.uint8))
    (extra / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code, err = _unpaired(capsys, tiny, tmp_path / "y", "--unpaired-extra", extra, "--max-steps", "1")
    assert code == 1 and "bad.jpg" in err and len(err.strip().splitlines()) == 1


def test_image_pool_fills_then_swaps_half_the_time():
    pool = ImagePool(size=2)
    rng = np.random.default_rng(0)
    first = torch.zeros(2, 3, 4, 4)
    assert torch.equal(pool.query(first, rng), first) and len(pool.images) == 2
    new = torch.ones(64, 3, 4, 4)
    got = pool.query(new, rng)
    old = int((got.sum(dim=(1, 2, 3)) == 0).sum())
    assert 0 < old <= 2 and len(pool.images) == 2  # only what the pool held can come back


def test_lr_constant_for_half_the_epochs_then_linear_to_zero():
    assert [lr_factor(e, 200) for e in (0, 50, 100)] == [1.0, 1.0, 1.0]
    assert lr_factor(150, 200) == pytest.approx(1 - 50 / 101)
    assert lr_factor(199, 200) == pytest.approx(1 - 99 / 101)
