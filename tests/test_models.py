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
