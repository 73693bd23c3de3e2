"""``dfn export`` as one function: weights -> ONNX of one precision + metadata + sidecar + parity check."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from deepfusionnet.errors import DFNError

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_SIZE = (640, 480)  # (W, H): a typical camera mode


@dataclass
class ExportOptions:
    precision: str = "fp32"
    size: tuple[int, int] | None = DEFAULT_SIZE  # (W, H); None = dynamic H/W
    opset: int = 17
    exporter: str = "legacy"  # or "dynamo"
    simplify: bool = True
    # INT8 calibration (FP16 also uses two of these frames to measure activation peaks)
    calib_dir: Path | None = None
    calib_method: str = "percentile"
    calib_count: int = 32
    calib_size: tuple[int, int] = (320, 240)
    # INT8 node selection on top of the defaults: node-name substrings, e.g. "/dec2/"
    keep_float: tuple[str, ...] = ()
    quantize: tuple[str, ...] = ()
    # accuracy-driven fallback (export/int8_fallback.py): keep stages float until the worst of
    # fallback_frames other frames from calib_dir reaches fallback_db PSNR against FP32; 0 = off
    fallback_db: float = 35.0
    fallback_frames: int = 16
    # parity against PyTorch after export
    check: bool = True
    check_data: Path | None = None
    check_images: int = 4
    threads: int | None = None

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise DFNError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.opset < 17:
            raise DFNError(f"opset {self.opset} is too old; use 17 or newer")
        if (self.keep_float or self.quantize) and self.precision != "int8":
            raise DFNError("--keep-float and --quantize choose INT8 nodes; use them with --precision int8")
        if self.fallback_db < 0 or self.fallback_frames < 0:
            raise DFNError("--fallback-db and --fallback-frames must be 0 (off) or positive")


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    info: dict = field(default_factory=dict)
    parity: object | None = None  # ParityReport

    @property
    def passed(self) -> bool:
        return self.parity is None or self.parity.passed


def default_check_dir() -> Path:
    """LOL-v1 eval15 beside the repository (or the working folder) when present, else samples/night."""
    repo = Path(__file__).resolve().parents[1]
    for base in (Path.cwd(), repo):
        cand = base.parent / "shared" / "data" / "lol-v1" / "eval15"
        if (cand / "low").is_dir():
            return cand
    return repo / "samples" / "night"


def export_model(source: str | Path, out: str | Path, opts: ExportOptions | None = None,
                 progress: Callable[[str], None] = lambda s: None) -> ExportResult:
    """Export ``source`` (shipped model name or weights file) to ``out`` in ``opts.precision``.

    Writes ``out`` and ``out.json`` (the sidecar); when ``opts.check`` runs parity against the PyTorch
    model and records it in the sidecar. The caller decides what a failed check means
    (``dfn export`` exits 1).
    """
    import time

    from deepfusionnet.export import onnx as onx
    from deepfusionnet.export import precision as prec
    from deepfusionnet.export.int8_fallback import int8_with_fallback
    from deepfusionnet.export.sidecar import set_metadata, sha256_bytes, tool_versions, write_sidecar
    from deepfusionnet.runtime.artifacts import sidecar_path
    from deepfusionnet.train.models.registry import get_spec
    from deepfusionnet.train.weights import file_sha256

    opts = opts or ExportOptions()
    opts.validate()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise DFNError(f"{out}: the output must end in .onnx")
    if out.is_dir():
        raise DFNError(f"{out}: is a folder; name the .onnx file to write")
    t0 = time.perf_counter()
    net, name, source_artifact = onx.load_source(source)
    weights = source_artifact.path
    exposure = source_artifact.exposure  # travels with the graph (metadata and sidecar)
    spec = get_spec(name)
    if opts.size is not None:
        w, h = opts.size
        if w % spec.multiple or h % spec.multiple or w <= 0 or h <= 0:
            raise DFNError(f"--size {w}x{h}: width and height must be positive multiples of {spec.multiple} "
                           f"for {name} (the runtime pads frames up to it)")
    progress(f"exporting {name} ({weights.name}) to ONNX, opset {opts.opset}, {opts.exporter} exporter")
    base = onx.onnx_from_torch(net, opts.opset, opts.exporter)
    if opts.simplify:
        base = onx.simplify(base)
    onx.check(base, str(out))

    info: dict = {}
    calib_dir = Path(opts.calib_dir) if opts.calib_dir else prec.default_calibration_dir(spec.scale)
    cw, ch = opts.calib_size
    if opts.precision == "fp32":
        graph = base
    elif opts.precision == "fp16":
        frames = prec.calibration_images(calib_dir, 2)
        feeds = [{onx.INPUT: prec.calibration_frame(p, cw, ch, spec.multiple)} for p in frames]
        peaks = prec.activation_peaks(base, feeds)
        graph, kept = prec.fp16_from_onnx(base, peaks=peaks)
        info["fp16"] = {"kept_fp32": kept, "peak_activation": max(peaks.values(), default=0.0),
                        "peaks_measured_on": [str(p) for p in frames]}
        progress(f"FP16: {len(kept)} nodes kept in FP32; largest FP32 activation {info['fp16']['peak_activation']:.1f}")
    else:
        exclude = prec.int8_exclusions(base.graph, opts.keep_float, opts.quantize)
        frames = prec.calibration_images(calib_dir, opts.calib_count)
        progress(f"INT8: {len(exclude)} nodes kept float; calibrating ({opts.calib_method}) on "
                 f"{len(frames)} frames from {calib_dir} at {cw}x{ch}")
        reader = prec.calibration_reader(frames, onx.INPUT, cw, ch, spec.multiple)
        search = opts.fallback_db > 0 and opts.fallback_frames > 0
        checks = prec.calibration_images(calib_dir, opts.fallback_frames, skip=frames) if search else []
        if search and not checks:
            progress(f"INT8 fallback: skipped, {calib_dir} has no frames beyond the {len(frames)} calibration ones")
        feeds = [{onx.INPUT: prec.check_frame(p, spec.multiple)} for p in checks]
        protect = prec.matching_convs(base.graph, opts.quantize)
        found = int8_with_fallback(base, reader, feeds, opts.calib_method, exclude=exclude, protect=protect,
                                   target_db=opts.fallback_db, threads=opts.threads, progress=progress)
        graph, excluded, used = found.proto, found.excluded, found.method
        if used != opts.calib_method:
            progress(f"INT8: calibrated with {used}")
        info["calibration"] = {"method": used, "dir": str(calib_dir), "count": len(frames),
                               "size": [cw, ch], "symmetric": True, "per_channel": True,
                               "op_types": ["Conv"], "excluded_nodes": excluded,
                               "fallback": {"target_db": opts.fallback_db, "frames": [str(p) for p in checks],
                                            "steps": found.steps, "stages_kept_float": found.stages_kept_float}}
    if opts.size is not None:
        graph = onx.fix_input_size(graph, *opts.size)
    set_metadata(graph, name, spec.scale, spec.multiple, opts.precision,
                 exposure.to_json() if exposure is not None else None)
    onx.check(graph, str(out))
    sidecar_path(out).unlink(missing_ok=True)  # a stale sidecar would describe another graph
    data = onx.save(graph, out)
    info = {
        "model": name, "scale": spec.scale, "multiple": spec.multiple, "precision": opts.precision,
        **({"exposure": asdict(exposure)} if exposure is not None else {}),
        "format": "onnx", "opset": opts.opset, "exporter": opts.exporter, "simplified": opts.simplify,
        "dynamic": opts.size is None, "size": list(opts.size) if opts.size else None,
        **onx.io_info(graph),
        "onnx_sha256": sha256_bytes(data), "onnx_bytes": len(data),
        "source_weights": weights.name, "source_weights_sha256": file_sha256(weights),
        "tools": tool_versions(), **info,
    }
    progress(f"wrote {out} ({len(data) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    result = ExportResult(out, write_sidecar(out, info), info)
    if opts.check:
        from deepfusionnet.export.parity import parity_report

        data_dir = Path(opts.check_data) if opts.check_data else default_check_dir()
        progress(f"parity vs PyTorch on {opts.check_images or 'all'} image(s) from {data_dir}")
        from deepfusionnet.runtime.artifacts import SHIPPED

        ref = str(source) if str(source) in SHIPPED else str(weights)
        report = parity_report(ref, str(out), data_dir, opts.precision, limit=opts.check_images,
                               backend_ref="torch", backend="onnxruntime", threads=opts.threads)
        info["parity"] = {"onnxruntime": report.to_json()}
        write_sidecar(out, info)
        result.parity = report
    info["export_options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    write_sidecar(out, info)
    return result


def export_shipped(models: tuple[str, ...] = ("deepfusionnet", "deepfusionnet-sr"),
                   precisions: tuple[str, ...] = ("fp32",), check: bool = True,
                   progress: Callable[[str], None] = lambda s: None) -> list[ExportResult]:
    """(Re)build the runtime's shipped graphs from the shipped weights, dynamic H/W, with sidecars.

    FP32 goes to ``runtime/weights/<model>.onnx`` (what ``resolve(<model>)`` returns); other precisions
    to ``runtime/weights/<model>.<precision>.onnx``. Same as
    ``dfn export <model> -o runtime/weights/<model>.onnx --dynamic --precision fp32``. Raises
    :class:`DFNError` when a graph misses its tolerance (the file is kept for inspection).
    """
    from deepfusionnet.runtime.artifacts import WEIGHTS_DIR

    results = []
    for model in models:
        for precision in precisions:
            name = f"{model}.onnx" if precision == "fp32" else f"{model}.{precision}.onnx"
            res = export_model(model, WEIGHTS_DIR / name, ExportOptions(precision=precision, size=None, check=check),
                               progress)
            if not res.passed:
                raise DFNError(f"{res.path}: parity check failed ({'; '.join(res.parity.failures())})")
            results.append(res)
    return results
