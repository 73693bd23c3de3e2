"""Jetson benchmark facts from recorded tool output (public examples of tegrastats on JetPack 4, 5/6
and AGX Xavier/Orin), and energy per frame through a stand-in tegrastats."""

from __future__ import annotations

import sys
import time

import pytest

from deepfusionnet.runtime.measure import jetson as J

from helpers import AGX_ORIN, ORIN_NANO, TX2  # noqa: E402


def test_tegrastats_lines_of_three_generations():
    tx2 = J.parse_tegrastats(TX2)
    assert (tx2.ram_used_mb, tx2.ram_total_mb) == (2020, 7852) and tx2.cpu_load == [9, 21, 25, 3, 1, 1]
    assert tx2.input_power() == (3140.0, "VDD_IN") and tx2.temps_c["Tboard"] == 40.0
    nano = J.parse_tegrastats(ORIN_NANO)
    assert nano.input_power() == (7432.0, "VDD_IN") and nano.gpu_load == 99
    assert nano.cpu_load == [12, 8, None, None, 5, 3]
    assert nano.rails_mw["VDD_SOC"] == (1903, 1850) and "RAM" not in nano.rails_mw and "SWAP" not in nano.rails_mw
    orin = J.parse_tegrastats(AGX_ORIN)
    mw, how = orin.input_power()  # no VDD_IN on AGX Orin: the sum of what it reports, said so
    assert mw == 2340 + 390 + 4025 + 301 and how.startswith("sum of VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0")
    assert "CV0" not in orin.temps_c and orin.temps_c["tj"] == pytest.approx(44.343)


def test_power_mode_clocks_and_release():
    assert J.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"mode": "MAXN", "id": 0}
    assert J.parse_nvpmodel("NVPM WARN: ...\nNV Power Mode: 15W\n2\n") == {"mode": "15W", "id": 2}
    pinned = ("SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit\n"
              "cpu0: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0\n"
              "cpu1: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0\n")
    assert J.parse_jetson_clocks(pinned) is True
    assert J.parse_jetson_clocks(pinned.replace("MinFreq=1510400", "MinFreq=115200", 1)) is False
    assert J.parse_jetson_clocks("") is None
    assert J.parse_l4t_release("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64") \
        == "R36.3.0"
    assert J.clock_warning({"jetson_clocks": "off"}) and J.clock_warning({"jetson_clocks": "on"}) is None


def test_other_machines_say_not_a_jetson(monkeypatch):
    monkeypatch.setattr(J, "_read", lambda path: None)
    assert set(J.jetson_facts().values()) == {J.NOT_A_JETSON}


def test_energy_per_frame_from_a_stand_in_tegrastats(tmp_path):
    script = tmp_path / "fake_tegrastats.py"
    script.write_text("import sys, time\nwhile True:\n    print(%r, flush=True)\n    time.sleep(0.05)\n" % ORIN_NANO)
    sampler = J.PowerSampler(command=[sys.executable, str(script)])
    out = J.energy_per_frame(lambda: time.sleep(0.05), 6, sampler)
    assert out["power_rail"] == "VDD_IN" and out["power_mw"] == pytest.approx(7432.0)
    # 6 frames of ~50 ms at 7.432 W: about 370 mJ each
    assert 300 < out["energy_mj_per_frame"] < 600 and out["power_samples"] >= 2
