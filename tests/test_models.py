import pytest

torch = pytest.importorskip("torch")

from deepfusionnet.train import create_model, model_names  # noqa: E402


@pytest.mark.parametrize("name,target", [("deepfusionnet", 2_597_942), ("deepfusionnet-sr", 109_546)])
def test_parameter_count_matches_paper(name, target):
    n = sum(p.numel() for p in create_model(name).parameters())
    assert abs(n - target) / target <= 0.005, n


@pytest.mark.parametrize("name,scale", [("deepfusionnet", 1), ("deepfusionnet-sr", 2)])
def test_output_shape_400x600(name, scale):
    model = create_model(name).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 400, 600))
    assert y.shape == (1, 3, 400 * scale, 600 * scale)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_registry_names_and_unknown():
    from deepfusionnet.errors import DFNError

    assert {"deepfusionnet", "deepfusionnet-sr"} <= set(model_names())
    with pytest.raises(DFNError, match="unknown model"):
        create_model("nope")


def test_sr_model_adds_detail_to_a_bilinear_upsample():
    """``deepfusionnet-sr`` starts as exactly the bilinear x2 upsample of its input (the last conv is
    zero) and stays in [0, 1] whatever the conv adds; the paper's block does neither."""
    x = torch.rand(1, 3, 24, 32)
    up = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    model = create_model("deepfusionnet-sr").eval()
    with torch.no_grad():
        assert torch.equal(model(x), up)
        model.tail[-1].bias.fill_(0.7)  # pushes most pixels past 1
        y = model(x)
    assert torch.equal(y, torch.clamp(up + 0.7, 0, 1))
    with torch.no_grad():
        assert not torch.allclose(create_model("deepfusionnet-sr-paper").eval()(x), up, atol=0.05)


def test_sr_weights_from_before_the_skip_load_as_the_paper_block(tmp_path):
    """Both SR variants have the same parameters; a file without the variant's marker (every SR file
    written before it) is the paper's block, named deepfusionnet-sr in its metadata or not."""
    from safetensors.torch import save_file

    from deepfusionnet.train.weights import load_model, save_weights

    paper = create_model("deepfusionnet-sr-paper").eval()
    x = torch.rand(1, 3, 16, 16)
    old = tmp_path / "old.safetensors"
    save_file(paper.state_dict(), str(old), metadata={"model": "deepfusionnet-sr"})
    loaded, name = load_model(old)
    assert name == "deepfusionnet-sr-paper"
    with torch.no_grad():
        assert torch.equal(loaded(x), paper(x))
    assert load_model(old, name="deepfusionnet-sr")[1] == "deepfusionnet-sr-paper"
    new = tmp_path / "new.safetensors"
    save_weights(create_model("deepfusionnet-sr"), "deepfusionnet-sr", new)
    assert load_model(new)[1] == "deepfusionnet-sr"
    nameless = tmp_path / "nameless.safetensors"
    save_file(paper.state_dict(), str(nameless))
    assert load_model(nameless)[1] == "deepfusionnet-sr-paper"


def test_training_on_from_paper_sr_weights_names_the_model(tmp_path, lol_train, capsys):
    from safetensors.torch import save_file

    from deepfusionnet.cli import main

    old = tmp_path / "old.safetensors"
    save_file(create_model("deepfusionnet-sr-paper").state_dict(), str(old), metadata={"model": "deepfusionnet-sr"})
    args = ["train", "--data", str(lol_train), "--model", "deepfusionnet-sr", "--init", str(old),
            "--out", str(tmp_path / "run"), "--epochs", "1", "--max-steps", "1", "--val-count", "0", "--threads", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--model deepfusionnet-sr-paper" in err and str(old) in err and "Traceback" not in err
