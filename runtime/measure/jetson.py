"""What makes a Jetson benchmark comparable: board, L4T, power mode, clocks, and energy per frame.

Parsers are plain functions over the text the tools print, so they are tested on recorded output:
- ``tegrastats`` lines (one per interval): RAM, per-core CPU load, GPU load (GR3D_FREQ), temperatures and
  power rails, ``NAME cur/avg`` with or without an ``mW`` unit (JetPack 4 prints ``VDD_IN 3140/3208``;
  JetPack 5/6 ``VDD_IN 4998mW/4998mW``). The board's input power is the ``VDD_IN`` rail where the
  board reports one (Nano, TX2, Xavier NX, Orin NX/Nano); otherwise the sum of every rail it reports,
  labelled as such (AGX Orin reports VDD_GPU_SOC, VDD_CPU_CV and VIN_SYS_5V0, and no single input rail).
- ``nvpmodel -q``: the power mode's name and number.
- ``jetson_clocks --show``: whether the clocks are pinned (every CPU's MinFreq equals its MaxFreq).
- ``/etc/nv_tegra_release``: the L4T release (``R36.3.0``; JetPack 6.0 ships L4T 36.3).
On any other machine :func:`jetson_facts` says "not a Jetson" for all of them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

NOT_A_JETSON = "not a Jetson"
_RAIL = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GPU = re.compile(r"\bGR3D_FREQ (\d+)%")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "lfb", "cached"}


@dataclass
class TegraSample:
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    cpu_load: list[int | None] = field(default_factory=list)  # percent per core; None when off
    gpu_load: int | None = None
    temps_c: dict[str, float] = field(default_factory=dict)
    rails_mw: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (current, average)

    def input_power(self) -> tuple[float | None, str]:
        """(milliwatts, how it was read): VDD_IN where the board has it, else the sum of every rail."""
        if "VDD_IN" in self.rails_mw:
            return float(self.rails_mw["VDD_IN"][0]), "VDD_IN"
        if self.rails_mw:
            return float(sum(cur for cur, _ in self.rails_mw.values())), "sum of " + "+".join(self.rails_mw)
        return None, "no power rails reported"


def parse_tegrastats(line: str) -> TegraSample:
    """One line of ``tegrastats`` output (a leading timestamp is allowed)."""
    s = TegraSample()
    if m := _RAM.search(line):
        s.ram_used_mb, s.ram_total_mb = int(m.group(1)), int(m.group(2))
    if m := _CPU.search(line):
        for core in m.group(1).split(","):
            load = re.match(r"\s*(\d+)%", core)
            s.cpu_load.append(int(load.group(1)) if load else None)  # "off"
    if m := _GPU.search(line):
        s.gpu_load = int(m.group(1))
    s.temps_c = {k: float(v) for k, v in _TEMP.findall(line) if float(v) > -200}  # -256C: no sensor
    cut = line.find(" CPU [")  # rails come after the memory fields, which look alike ("RAM 220/3895MB")
    for name, cur, avg in _RAIL.findall(line[cut if cut >= 0 else 0:]):
        if name not in _NOT_RAILS and not name.endswith("_FREQ"):
            s.rails_mw[name] = (int(cur), int(avg))
    return s


def parse_nvpmodel(text: str) -> dict:
    """``nvpmodel -q``: ``NV Power Mode: MAXN`` then the mode number."""
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    number = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    return {"mode": name.group(1) if name else None, "id": int(number.group(1)) if number else None}


def parse_jetson_clocks(text: str) -> bool | None:
    """``jetson_clocks --show``: True when every CPU's MinFreq equals its MaxFreq (clocks pinned)."""
    cpus = re.findall(r"^cpu\d+:.*?MinFreq=(\d+) MaxFreq=(\d+)", text, re.MULTILINE)
    if not cpus:
        return None
    return all(lo == hi for lo, hi in cpus)


def parse_l4t_release(text: str) -> str | None:
    """``/etc/nv_tegra_release``: ``# R36 (release), REVISION: 3.0, ...`` -> ``R36.3.0``."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None


def jetson_facts() -> dict:
    """Board, L4T, TensorRT, power mode and clocks on a Jetson; every field "not a Jetson" elsewhere."""
    model = _read("/proc/device-tree/model") or ""
    release = _read("/etc/nv_tegra_release")
    if "jetson" not in model.lower() and release is None:
        return {k: NOT_A_JETSON for k in ("board", "l4t", "tensorrt", "power_mode", "jetson_clocks")}
    try:
        import tensorrt

        trt = tensorrt.__version__
    except ImportError:
        trt = "not installed"
    mode = parse_nvpmodel(_run(["nvpmodel", "-q"]) or "")
    clocks = parse_jetson_clocks(_run(["jetson_clocks", "--show"]) or "")
    return {"board": model or "unknown Jetson", "l4t": parse_l4t_release(release or "") or "unknown",
            "tensorrt": trt, "power_mode": mode["mode"] or "unknown (nvpmodel -q failed)",
            "jetson_clocks": {True: "on", False: "off", None: "unknown (jetson_clocks --show needs root)"}[clocks]}


def clock_warning(facts: dict) -> str | None:
    """The line a Jetson benchmark prints when its clocks may scale during the timed runs."""
    clocks = str(facts.get("jetson_clocks", ""))
    if clocks == "off" or clocks.startswith("unknown"):
        return ("warning: jetson_clocks is not on; clocks scale with load, so latencies vary run to run "
                "(sudo jetson_clocks pins them)")
    return None


class PowerSampler:
    """``tegrastats --interval MS`` in the background while a block runs: ``with PowerSampler() as p: ...``
    then ``p.mean_power()``. ``command`` is replaceable (tests use a script printing recorded lines)."""

    def __init__(self, interval_ms: int = 100, command: list[str] | None = None) -> None:
        self.command = command or ["tegrastats", "--interval", str(interval_ms)]
        self.samples: list[TegraSample] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available(command: list[str] | None = None) -> bool:
        return shutil.which((command or ["tegrastats"])[0]) is not None

    def __enter__(self) -> "PowerSampler":
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples.append(parse_tegrastats(line))

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def mean_power(self) -> tuple[float | None, str]:
        """Mean input power over the samples (mW) and how it was read."""
        readings = [s.input_power() for s in self.samples]
        values = [mw for mw, _ in readings if mw is not None]
        if not values:
            return None, "no power samples"
        return sum(values) / len(values), readings[-1][1]


def energy_per_frame(run_frame, frames: int, sampler: PowerSampler) -> dict:
    """Run ``run_frame()`` ``frames`` times inside ``sampler``: mean input power and mJ per frame."""
    with sampler:
        time.sleep(0.2)  # a first sample before the work starts
        t0 = time.perf_counter()
        for _ in range(frames):
            run_frame()
        seconds = time.perf_counter() - t0
    mw, how = sampler.mean_power()
    if mw is None:
        return {"energy_mj_per_frame": None, "power_mw": None, "power_rail": how}
    return {"energy_mj_per_frame": mw * seconds / frames, "power_mw": mw, "power_rail": how,
            "power_samples": len(sampler.samples)}
