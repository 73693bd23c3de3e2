"""``dfn export`` as one function: weights -> ONNX of one precision + metadata + sidecar + parity check."""

from __future__ import annotations

import dataclasses

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from deepfusionnet.errors import DFNError

PRECISIONS = ("fp32", "fp16", "int8")
# The INT8 search scores its trial graphs on check frames area-downscaled to at most this many pixels:
# one trial per stage dominates the export's time, and a quarter of the pixels keeps it within a few
# times an FP16 export (the parity check afterwards still runs full frames).
SEARCH_PIXELS = 320 * 240


@dataclass
class ExportOptions:
    precision: str = "fp32"
    size: tuple[int, int] | None = None  # (W, H) fixed; None = dynamic H/W (the default)
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
    fallback_frames: int = 8
    # parity against PyTorch after export
    check: bool = True
    check_data: Path | None = None
    check_images: int = 4
    threads: int | None = None
    # TensorRT conformance gate (export/conformance.py) on the written graph: targets, and Polygraphy's lint
    targets: tuple[str, ...] = ("trt10", "trt11")
    lint: bool = True
    # the model's weights when the source is a registered name or a package.module:function entry point
    # (export/onnx.py load_source); scale and multiple declare an entry point's output scale and input
    # multiple
    weights: Path | None = None
    scale: int | None = None
    multiple: int | None = None

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
    """The shipped sample night frames (package data): a check that runs from any install."""
    from deepfusionnet.runtime.samples import sample_dir

    return sample_dir()


def input_dirs(opts: ExportOptions, scale: int, qat: bool = False) -> tuple[Path | None, Path | None]:
    """``(calibration folder, check folder)`` for ``opts``, checked before anything is written.

    INT8 calibrates on frames like the ones the model will see, which only the user has: without
    ``--calib`` it is a one-line error, never a silent calibration on four sample pictures. FP16 measures
    activation peaks on two frames: ``--calib`` when given, else the shipped samples. Quantization-aware
    weights (``qat``) carry their ranges and need no calibration.
    """
    calib = Path(opts.calib_dir) if opts.calib_dir and not qat else None
    if opts.precision == "int8" and calib is None and not qat:
        kind = (
            "normal-light frames (e.g. LOL-v1 train/high)"
            if scale > 1
            else "night frames (e.g. LOL-v1 train/low)"
        )
        raise DFNError(
            f"INT8 export needs --calib DIR: a folder of at least {opts.calib_count} {kind} like the ones "
            "the model will run on"
        )
    if opts.precision == "fp16" and calib is None:
        calib = default_check_dir()
    check = (Path(opts.check_data) if opts.check_data else default_check_dir()) if opts.check else None
    if calib is not None and not calib.is_dir():
        raise DFNError(f"{calib}: calibration folder not found")
    if check is not None and not check.exists():
        raise DFNError(f"{check}: check images not found")
    return calib, check


@dataclass
class ExportJob:
    """One export's inputs, resolved and checked before anything is written: what every step reads."""

    source: str | Path
    out: Path
    opts: ExportOptions
    net: Any  # the torch module, in eval mode
    name: str  # the model's registered name
    spec: Any  # its train.models.registry.ModelSpec: scale, multiple, task
    source_artifact: Any  # runtime.artifacts.Artifact of the weights (exposure, source_file)
    calib_dir: Path | None
    check_dir: Path | None
    progress: Callable[[str], None]
    qat: bool = False  # quantization-aware weights (dfn train --qat): INT8 from their own ranges


# A step returns a graph and what the sidecar records of it. Steps compose as Polygraphy's loaders do:
# each precision wraps the step before it, ``to_int8(onnx_from_torch(job), job)()`` runs both.
Step = Callable[[], tuple[Any, dict]]


def export_model(
    source: str | Path,
    out: str | Path,
    opts: ExportOptions | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> ExportResult:
    """Export ``source`` (shipped model name or weights file) to ``out`` in ``opts.precision``.

    Writes ``out`` and ``out.json`` (the sidecar) after the graph passed the TensorRT conformance gate
    (:mod:`.conformance`); when ``opts.check`` runs parity against the PyTorch model and records it in
    the sidecar. The caller decides what a failed parity check means (``dfn export`` exits 1 and keeps
    the file for inspection); any other failure, or an interrupt, leaves neither file behind.
    """
    import time

    t0 = time.perf_counter()
    job = prepare(source, out, opts or ExportOptions(), progress)
    step = PRECISION_STEPS[job.opts.precision](onnx_from_torch(job), job)  # e.g. to_int8(onnx_from_torch)
    graph, info = with_metadata(fixed_size(step, job), job)()
    gate = conformance_gate(graph, job.opts.targets, job.out)
    try:
        return write_export(job, graph, {**info, **tile_companions(job, graph)}, gate, t0)
    except BaseException:
        from deepfusionnet.export.tile_graphs import remove_companions

        remove_companions(job.out)  # no companions without their graph
        raise


def tile_companions(job: ExportJob, graph) -> dict:
    """Write the ``.context``/``.tile`` companions beside ``job.out`` (:mod:`.tile_graphs`) -> the sidecar's
    ``{"tiles": ...}``, or ``{}`` for a network or precision without them (stale ones are removed)."""
    from deepfusionnet.export import precision as prec
    from deepfusionnet.export import tile_graphs as tg

    tg.remove_companions(job.out)
    graphs = tg.companion_graphs(job, prec.activation_peaks)
    if graphs is None:
        return {}
    job.progress("exporting the .context and .tile companions (tiles that share the frame's attention)")
    return {"tiles": tg.write_companions(job, graph, graphs, tg.check_frames(job), conformance_gate)}


def prepare(source: str | Path, out: str | Path, opts: ExportOptions,
            progress: Callable[[str], None]) -> ExportJob:
    """Check the options and the output path, load the source model and find the input folders."""
    from deepfusionnet.export import onnx as onx
    from deepfusionnet.train.models.registry import get_spec

    opts.validate()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise DFNError(f"{out}: the output must end in .onnx")
    if out.is_dir():
        raise DFNError(f"{out}: is a folder; name the .onnx file to write")
    net, name, source_artifact = onx.load_source(source, opts.weights, opts.scale, opts.multiple)
    spec = get_spec(name)
    _check_size(opts.size, spec.multiple, name)
    qat = _check_qat(net, opts, source)
    calib_dir, check_dir = input_dirs(opts, spec.scale, qat)
    return ExportJob(source, out, opts, net, name, spec, source_artifact, calib_dir, check_dir, progress, qat)


def _check_qat(net, opts: ExportOptions, source) -> bool:
    """True for quantization-aware weights, which export as INT8 only (their ranges are part of them)."""
    from deepfusionnet.train.qat import is_quantized

    if not is_quantized(net):
        return False
    if opts.precision != "int8":
        raise DFNError(f"{source}: quantization-aware weights (dfn train --qat); export them with "
                       "--precision int8 (their INT8 ranges are trained in; the float network is the --init "
                       "weights)")
    if opts.keep_float or opts.quantize:
        raise DFNError("--keep-float and --quantize choose INT8 nodes after calibration; quantization-aware "
                       "weights run every convolution INT8")
    return True


def _check_size(size: tuple[int, int] | None, multiple: int, name: str) -> None:
    if size is not None:
        w, h = size
        if w % multiple or h % multiple or w <= 0 or h <= 0:
            raise DFNError(
                f"--size {w}x{h}: width and height must be positive multiples of {multiple} "
                f"for {name} (the runtime pads frames up to it)"
            )


def onnx_from_torch(job: ExportJob) -> Step:
    """The FP32 graph of the job's network (dynamic H/W), simplified when the options say so, checked."""

    def run():
        from deepfusionnet.export import onnx as onx

        opts = job.opts
        job.progress(f"exporting {job.name} ({job.source_artifact.path.name}) to ONNX, opset {opts.opset}, "
                     f"{opts.exporter} exporter")
        base = onx.onnx_from_torch(job.net, opts.opset, opts.exporter)
        if opts.simplify:
            base = onx.simplify(base)
        onx.check(base, str(job.out))
        return base, {}

    return run


def as_fp32(base: Step, job: ExportJob) -> Step:
    """FP32: the graph as exported."""
    return base


def to_fp16(base: Step, job: ExportJob) -> Step:
    """FP32 graph -> FP16 graph with the fragile nodes kept FP32; records them under ``"fp16"``."""

    def run():
        from deepfusionnet.export import onnx as onx
        from deepfusionnet.export import precision as prec

        graph, info = base()
        cw, ch = job.opts.calib_size
        frames = prec.calibration_images(job.calib_dir, 2)
        feeds = [{onx.INPUT: prec.calibration_frame(p, cw, ch, job.spec.multiple)} for p in frames]
        peaks = prec.activation_peaks(graph, feeds)
        half, kept = prec.fp16_from_onnx(graph, peaks=peaks)
        record = {
            "kept_fp32": kept,
            "peak_activation": max(peaks.values(), default=0.0),
            "peaks_measured_on": [p.name for p in frames],
        }
        job.progress(f"FP16: {len(kept)} nodes kept in FP32; largest FP32 activation "
                     f"{record['peak_activation']:.1f}")
        return half, {**info, "fp16": record}

    return run


def to_int8(base: Step, job: ExportJob) -> Step:
    """FP32 graph -> INT8 Q/DQ graph (calibrated, stages kept float by the accuracy search,
    :mod:`.int8_fallback`); records the calibration under ``"calibration"``. Quantization-aware weights
    take :func:`int8_from_qat` instead."""
    if job.qat:
        return int8_from_qat(base, job)

    def run():
        from deepfusionnet.export import precision as prec

        graph, info = base()
        opts = job.opts
        cw, ch = opts.calib_size
        exclude = prec.int8_exclusions(graph.graph, opts.keep_float, opts.quantize)
        frames = prec.calibration_images(job.calib_dir, opts.calib_count)
        job.progress(
            f"INT8: {len(exclude)} nodes kept float; calibrating ({opts.calib_method}) on "
            f"{len(frames)} frames from {job.calib_dir} at {cw}x{ch}"
        )
        checks = _fallback_frames(job, frames)
        found = _int8_search(graph, job, frames, checks, exclude)
        if found.method != opts.calib_method:
            job.progress(f"INT8: calibrated with {found.method}")
        record = _int8_record(graph, found, job, frames, checks)
        job.progress(f"INT8: {record['convs_int8']} of {record['convs_total']} convolutions run INT8")
        return found.proto, {**info, "calibration": record}

    return run


def int8_from_qat(base: Step, job: ExportJob) -> Step:
    """The graph of quantization-aware weights (input Q/DQ already in it) with every Conv's weight an INT8
    initializer (:func:`.qat.quantize_conv_weights`); records it under ``"calibration"``."""

    def run():
        from deepfusionnet.export import onnx as onx
        from deepfusionnet.export.qat import qdq_summary, quantize_conv_weights

        graph, info = base()
        graph = onx.reinfer_shapes(quantize_conv_weights(graph))
        counts = qdq_summary(graph)
        job.progress(f"INT8 (quantization-aware weights): {counts['convs_int8']} of {counts['convs_total']} "
                     "convolutions run INT8")
        record = {"method": "qat", "symmetric": True, "per_channel": True, "bias": "float",
                  "op_types": ["Conv"], **counts, "excluded_nodes": []}
        return graph, {**info, "calibration": record}

    return run


def _fallback_frames(job: ExportJob, frames: list[Path]) -> list[Path]:
    """The frames the INT8 fallback search checks on: from the calibration folder, past ``frames``."""
    from deepfusionnet.export import precision as prec

    opts = job.opts
    if not (opts.fallback_db > 0 and opts.fallback_frames > 0):
        return []
    checks = prec.calibration_images(job.calib_dir, opts.fallback_frames, skip=frames)
    if not checks:
        job.progress(
            f"INT8 fallback: skipped, {job.calib_dir} has no frames beyond the {len(frames)} calibration ones"
        )
    return checks


def _int8_search(graph, job: ExportJob, frames: list[Path], checks: list[Path], exclude: list[str]):
    """Calibrate on ``frames`` (``exclude`` kept float) and run the fallback search on ``checks`` -> its
    ``FallbackResult``."""
    import sys

    from tqdm import tqdm

    from deepfusionnet.export import onnx as onx
    from deepfusionnet.export import precision as prec
    from deepfusionnet.export.int8_fallback import int8_with_fallback

    opts, spec = job.opts, job.spec
    cw, ch = opts.calib_size
    feeds = [{onx.INPUT: prec.check_frame(p, spec.multiple, SEARCH_PIXELS)} for p in checks]
    with tqdm(
        total=len(frames), desc="INT8: calibrating", unit="frame", file=sys.stderr, disable=None, leave=False
    ) as bar:
        reader = prec.calibration_reader(frames, onx.INPUT, cw, ch, spec.multiple, bar=bar)
        return int8_with_fallback(
            graph,
            reader,
            feeds,
            opts.calib_method,
            exclude=exclude,
            protect=prec.matching_convs(graph.graph, opts.quantize),
            target_db=opts.fallback_db,
            threads=opts.threads,
            progress=job.progress,
        )


def _int8_record(graph, found, job: ExportJob, frames: list[Path], checks: list[Path]) -> dict:
    """What the sidecar records of an INT8 calibration and its fallback search."""
    from deepfusionnet.export import precision as prec

    convs = prec.conv_names(graph.graph)
    quantized = [c for c in convs if c not in set(found.excluded)]
    return {
        "method": found.method,
        "dir": job.calib_dir.name,
        "count": len(frames),
        "size": list(job.opts.calib_size),
        "symmetric": True,
        "per_channel": True,
        "bias": "float",
        "op_types": ["Conv"],
        "convs_int8": len(quantized),
        "convs_total": len(convs),
        "excluded_nodes": found.excluded,
        "fallback": {
            "target_db": job.opts.fallback_db,
            "frames": [p.name for p in checks],
            "max_pixels": SEARCH_PIXELS,
            "steps": found.steps,
            "trials": found.trials,
            "stages_kept_float": found.stages_kept_float,
        },
    }


PRECISION_STEPS: dict[str, Callable[[Step, ExportJob], Step]] = {
    "fp32": as_fp32,
    "fp16": to_fp16,
    "int8": to_int8,
}


def fixed_size(step: Step, job: ExportJob) -> Step:
    """The graph fixed at ``--size`` when one was given (every precision starts from dynamic H/W)."""
    if job.opts.size is None:
        return step

    def run():
        from deepfusionnet.export import onnx as onx

        graph, info = step()
        return onx.fix_input_size(graph, *job.opts.size), info

    return run


def with_metadata(step: Step, job: ExportJob) -> Step:
    """The graph with the ``dfn.*`` metadata the runtime reads when there is no sidecar, checked."""

    def run():
        from deepfusionnet.export import onnx as onx
        from deepfusionnet.export.sidecar import set_metadata

        graph, info = step()
        exposure = job.source_artifact.exposure  # travels with the graph (metadata and sidecar)
        set_metadata(
            graph,
            job.name,
            job.spec.scale,
            job.spec.multiple,
            job.opts.precision,
            exposure.to_json() if exposure is not None else None,
            job.spec.task,
        )
        onx.check(graph, str(job.out))
        return graph, info

    return run


def write_export(job: ExportJob, graph, info: dict, gate: dict, t0: float) -> ExportResult:
    """Write the graph, lint it, check its parity and write its sidecar (once, last); on any failure or
    interrupt neither file stays behind."""
    import time

    from deepfusionnet.export import onnx as onx
    from deepfusionnet.export.sidecar import write_sidecar
    from deepfusionnet.runtime.sidecar import sidecar_path

    out, opts = job.out, job.opts
    sidecar_path(out).unlink(missing_ok=True)  # a stale sidecar would describe another graph
    try:
        data = onx.save(graph, out)
        sidecar = export_info(job, graph, data, info)
        sidecar.conformance = dict(gate)
        if opts.lint:
            sidecar.conformance["polygraphy_lint"] = lint_gate(out, graph)
        job.progress(
            f"wrote {out} ({len(data) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s; passes "
            f"{', '.join(opts.targets)} conformance"
        )
        result = ExportResult(out, sidecar_path(out))
        if job.check_dir is not None:
            result.parity = parity_step(job)
            # the sidecar travels with the graph: it names it by file name, not where it was written
            named = result.parity.candidate.replace(str(out), out.name)
            report = dataclasses.replace(result.parity, candidate=named)
            sidecar.parity = {"onnxruntime": report.to_json()}
        sidecar.extra["export_options"] = {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in asdict(opts).items()}
        sidecar.extra["export_seconds"] = round(time.perf_counter() - t0, 1)
        write_sidecar(out, sidecar)
        result.info = sidecar.to_dict()
        return result
    except BaseException:
        out.unlink(missing_ok=True)  # half an export is worse than none
        sidecar_path(out).unlink(missing_ok=True)
        raise


def conformance_gate(graph, targets: tuple[str, ...], out: Path) -> dict:
    """:func:`~.conformance.check_graph` for every target; any error stops the export before it writes."""
    from deepfusionnet.export.conformance import check_graph, errors

    report = {}
    for target in targets:
        bad = errors(check_graph(graph, target))
        if bad:
            lines = "; ".join(v.line() for v in bad[:5]) + (
                f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
            )
            raise DFNError(f"{out}: the exported graph fails {target} conformance ({lines})")
        report[target] = "pass"
    return report


def lint_gate(out: Path, graph) -> str:
    """Polygraphy's ``check lint`` on the written graph: "pass", or "not installed"; errors raise."""
    from deepfusionnet.export.conformance import errors, polygraphy_lint

    found = polygraphy_lint(out, graph)
    if found is None:
        return "not installed"
    bad = errors(found)
    if bad:
        raise DFNError(
            f"{out}: Polygraphy's lint fails the exported graph ({'; '.join(v.line() for v in bad[:3])})"
        )
    return "pass"


def export_info(job: ExportJob, graph, data: bytes, steps: dict):
    """The sidecar of a written graph: model, IO, hashes, tools, then what the precision steps recorded."""
    from deepfusionnet.export import onnx as onx
    from deepfusionnet.export.sidecar import sha256_bytes, tool_versions
    from deepfusionnet.runtime.sidecar import Sidecar, sidecar_path
    from deepfusionnet.train.weights import file_sha256

    opts, spec, artifact = job.opts, job.spec, job.source_artifact
    exposure = artifact.exposure
    # the user's file, also when load_source tagged a copy of it for the parity reference
    weights = artifact.sidecar.extra.get("source_file", artifact.path)
    doc = {
        "model": job.name,
        "scale": spec.scale,
        "multiple": spec.multiple,
        "task": spec.task,
        "precision": opts.precision,
        **({"exposure": asdict(exposure)} if exposure is not None else {}),
        "format": "onnx",
        "opset": opts.opset,
        "exporter": opts.exporter,
        "simplified": opts.simplify,
        "dynamic": opts.size is None,
        "size": list(opts.size) if opts.size else None,
        **onx.io_info(graph),
        "onnx_sha256": sha256_bytes(data),
        "onnx_bytes": len(data),
        "source_weights": Path(weights).name,
        "source_weights_sha256": file_sha256(weights),
        "tools": tool_versions(),
        **steps,
    }
    return Sidecar.from_dict(doc, sidecar_path(job.out))


def parity_step(job: ExportJob):
    """Parity of the written graph (read back through the runtime, from its ``dfn.*`` metadata) against
    the PyTorch model on the job's check frames -> a ``ParityReport``."""
    from deepfusionnet.export.parity import parity_report
    from deepfusionnet.runtime.artifacts import SHIPPED

    opts = job.opts
    job.progress(f"parity vs PyTorch on {opts.check_images or 'all'} image(s) from {job.check_dir}")
    # A shipped name stands for its own weights only when no --weights file replaced them.
    shipped = str(job.source) in SHIPPED and opts.weights is None
    ref = str(job.source) if shipped else str(job.source_artifact.path)
    return parity_report(
        ref,
        str(job.out),
        job.check_dir,
        opts.precision,
        limit=opts.check_images,
        backend_ref="torch",
        backend="onnxruntime",
        threads=opts.threads,
    )


def export_shipped(
    models: tuple[str, ...] = ("deepfusionnet", "deepfusionnet-sr"),
    precisions: tuple[str, ...] = ("fp32",),
    check: bool = True,
    progress: Callable[[str], None] = lambda s: None,
) -> list[ExportResult]:
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
            res = export_model(
                model,
                WEIGHTS_DIR / name,
                ExportOptions(precision=precision, size=None, check=check),
                progress,
            )
            if not res.passed:
                raise DFNError(f"{res.path}: parity check failed ({'; '.join(res.parity.failures())})")
            results.append(res)
    return results
