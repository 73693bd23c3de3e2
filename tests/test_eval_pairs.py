"""The torch-free pair finder understands the common paired-data layouts."""

from __future__ import annotations

import pytest

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.measure.pairs import find_pairs


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_low_high(tmp_path):
    for n in ("b.png", "a.png", "c.jpg"):
        _touch(tmp_path / "low" / n)
    for n in ("a.png", "b.png"):
        _touch(tmp_path / "high" / n)
    _touch(tmp_path / "low" / ".hidden.png")
    pairs = find_pairs(tmp_path)
    assert [(lo.name, hi.name) for lo, hi in pairs] == [("a.png", "a.png"), ("b.png", "b.png")]


def test_lol_v2_layout_matches_prefixed_names(tmp_path):
    for i in (1, 2):
        _touch(tmp_path / "Test" / "Low" / f"low{i:05d}.png")
        _touch(tmp_path / "Test" / "Normal" / f"normal{i:05d}.png")
    pairs = find_pairs(tmp_path)
    assert [(lo.name, hi.name) for lo, hi in pairs] == [("low00001.png", "normal00001.png"),
                                                        ("low00002.png", "normal00002.png")]


def test_lol_v1_root_and_real_eval15(lol_eval15):
    pairs = find_pairs(lol_eval15)
    assert len(pairs) == 15 and all(lo.name == hi.name for lo, hi in pairs)
    assert find_pairs(lol_eval15.parent) == pairs or len(find_pairs(lol_eval15.parent)) > 0


def test_errors(tmp_path):
    with pytest.raises(DFNError, match="not a folder"):
        find_pairs(tmp_path / "nope")
    with pytest.raises(DFNError, match="expected low/ and high/"):
        find_pairs(tmp_path)
    _touch(tmp_path / "low" / "a.png")
    _touch(tmp_path / "high" / "b.png")
    with pytest.raises(DFNError, match="share no file names"):
        find_pairs(tmp_path)


def test_train_reexports_the_runtime_finder():
    pytest.importorskip("torch")
    from deepfusionnet.train import data

    assert data.find_pairs is find_pairs
