"""Helpers several test modules share: small real night images, videos, a tiny ONNX graph, a PNG bomb.

Shared fixtures live in conftest.py; plain functions live here (``from helpers import ...``, as
``from fakes.cuda import ...``), so no test module imports another one.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def small_night(path: Path, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A real night image shrunk to ``size`` (W, H), as uint8 RGB."""
    from deepfusionnet.runtime.images import read_image

    return cv2.resize(read_image(path), size, interpolation=cv2.INTER_AREA)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "mp4v") -> Path:
    """Frames are RGB; written as BGR like every camera file."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """Every frame of a video file (BGR, as OpenCV reads them) and its frame rate."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def colour_frames(n: int, size=(48, 64)) -> list[np.ndarray]:
    frames = []
    for i in range(n):
        f = np.zeros((*size, 3), np.uint8)
        f[..., 0] = 200  # red in RGB: a BGR/RGB mix-up shows as blue
        f[..., 1] = 10 * i
        frames.append(f)
    return frames


def tiny_onnx(path: Path, scale: int = 1, model: str = "deepfusionnet", seed: int = 0) -> Path:
    """A dynamic-H/W graph: [Resize x2 ->] Conv3x3(3->3) -> Sigmoid, with dfn.* metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((3, 3, 3, 3)) * 0.2).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    nodes, inits, src = [], [w, b], "input"
    if scale == 2:
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        nodes.append(helper.make_node("Resize", ["input", "", "scales"], ["up"], mode="linear",
                                      coordinate_transformation_mode="half_pixel"))
        src = "up"
    nodes += [helper.make_node("Conv", [src, "w", "b"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["c"], ["output"])]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                             [1, 3, "oh", "ow"])],
                              inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    meta = {"dfn.model": model, "dfn.scale": str(scale), "dfn.multiple": "8", "dfn.precision": "fp32"}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, path)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny, valid-looking PNG whose IHDR claims w x h RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


# tegrastats lines (test_jetson, test_bench).
# TX2 and AGX_ORIN: lines as boards printed them, quoted in public issue trackers. ORIN_NANO: written in
# the same JetPack 5/6 format with the rails an Orin Nano reports (VDD_IN, VDD_CPU_GPU_CV, VDD_SOC).
TX2 = ("RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] EMC_FREQ 0% "
       "GR3D_FREQ 0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C thermal@41.9C Tdiode@41.25C "
       "VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 VDD_SYS_CPU 536/590 "
       "VDD_SYS_DDR 557/601")
AGX_ORIN = ("04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) CPU [0%@729,0%@729,"
            "0%@729,0%@729,off,off,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 7%@[0,0] "
            "VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C Tboard@32C SOC2@40.093C Tdiode@33C SOC0@41.093C CV1@-256C "
            "GPU@-256C tj@44.343C SOC1@41.25C CV2@-256C VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW "
            "VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
ORIN_NANO = ("RAM 2193/7620MB (lfb 4x4MB) SWAP 0/3810MB (cached 0MB) CPU [12%@1510,8%@1510,off,off,5%@1510,3%@1510] "
             "EMC_FREQ 3%@2133 GR3D_FREQ 99%@[624] VIC_FREQ 115 APE 200 cpu@52.5C soc2@50.1C soc0@51C gpu@54.2C "
             "tj@54.2C soc1@50.7C VDD_IN 7432mW/6950mW VDD_CPU_GPU_CV 2712mW/2460mW VDD_SOC 1903mW/1850mW")
