"""Build TensorRT engines from the export stage's ONNX graphs (``engine_from_onnx``); needs only TensorRT.

The primary path is a strongly typed network: precision lives in the ONNX graph (FP16 from AutoCast /
float16 conversion, INT8 as explicit Q/DQ), which works on TensorRT 10.x (JetPack 6) and 11.x (where
the builder precision flags are gone). On TensorRT 10 only, ``fp16_flag=True`` builds an FP32 graph
weakly typed with ``BuilderFlag.FP16`` instead.

Calls used, checked against the TensorRT 10.x / 11.x Python API reference, the 10.x->11.x migration
guide, NVIDIA/TensorRT ``samples/python/simple_progress_monitor`` and ``strongly_type_autocast``, and
Polygraphy ``backend/trt/loader.py`` / ``config.py``: ``trt.Builder(logger)``,
``builder.create_network(1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED))``,
``trt.OnnxParser(network, logger).parse_from_file`` / ``num_errors`` / ``get_error``,
``builder.create_builder_config()``, ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)``,
``builder.create_optimization_profile()`` + ``profile.set_shape(name, min, opt, max)`` +
``config.add_optimization_profile``, ``config.create_timing_cache(bytes)`` /
``set_timing_cache(cache, ignore_mismatch)`` / ``get_timing_cache().serialize()``,
``config.progress_monitor = IProgressMonitor subclass``, ``builder.num_DLA_cores``,
``config.default_device_type = DeviceType.DLA``, ``config.DLA_core``, ``BuilderFlag.GPU_FALLBACK``,
``builder.build_serialized_network(network, config)`` (``None`` on failure). DLA builds take fixed shapes
only: "DLA does not support dynamic dimensions, so the profile's min, max, and opt values must be equal"
(TensorRT 10.x developer guide, DLA Supported Layers and Restrictions), so a range is refused before building.

The engine stays a pure TensorRT plan that trtexec/Polygraphy can load; everything else goes into the
JSON sidecar ``X.engine.json``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.artifacts import resolve
from deepfusionnet.runtime.backends.tensorrt import get_logger, import_tensorrt, trt_major
from deepfusionnet.runtime.images import atomic_write_bytes
from deepfusionnet.runtime.artifacts import file_sha256 as sha256_file
from deepfusionnet.runtime.sidecar import Sidecar, sidecar_path

# Used for H/W when the graph is dynamic and the user gave no shape: VGA as the camera size, and the
# enhancer's default tile (1024) as the maximum so any frame runs (tiled beyond it).
DEFAULT_MIN = (64, 64)
DEFAULT_OPT = (480, 640)
DEFAULT_MAX = (1024, 1024)

SIDECAR_FORMAT = "deepfusionnet-engine/1"

Progress = Callable[[str, int, int, int], None]  # (phase, step, steps, depth)


@dataclass(frozen=True)
class BuildOptions:
    """What ``dfn build`` exposes. Shapes are (H, W) here and WxH on the command line; N and C come from
    the graph."""

    shape: tuple[int, int] | None = None  # fixed shape: min = opt = max
    min_shape: tuple[int, int] | None = None
    opt_shape: tuple[int, int] | None = None  # set it to the camera size
    max_shape: tuple[int, int] | None = None
    workspace_mb: int | None = None
    timing_cache: str | None = None
    fp16_flag: bool = False  # TensorRT 10 only: weakly typed FP32 graph + BuilderFlag.FP16
    dla_core: int | None = None
    gpu_fallback: bool = True

    def cli_args(self) -> list[str]:
        """The ``dfn build`` arguments that reproduce these options (for the rebuild hint)."""
        hw = lambda s: f"{s[1]}x{s[0]}"  # noqa: E731 - (H, W) -> "WxH" as on the command line
        args: list[str] = []
        if self.shape:
            args += ["--shape", hw(self.shape)]
        for flag, value in (("--min", self.min_shape), ("--opt", self.opt_shape), ("--max", self.max_shape)):
            if value:
                args += [flag, hw(value)]
        if self.workspace_mb:
            args += ["--workspace", str(self.workspace_mb)]
        if self.timing_cache:
            args += ["--timing-cache", str(self.timing_cache)]
        if self.fp16_flag:
            args += ["--fp16-flag"]
        if self.dla_core is not None:
            args += ["--dla-core", str(self.dla_core)]
            if not self.gpu_fallback:
                args += ["--no-gpu-fallback"]
        return args


def hw_from_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (width x height, as ``dfn export --size``) -> ``(480, 640)`` (H, W)."""
    from deepfusionnet.runtime.sizes import parse_size

    w, h = parse_size(text)
    return h, w


def _wh(hw) -> str:
    return f"{hw[1]}x{hw[0]}"


def resolve_profile(name: str, graph_shape: tuple[int, ...], options: BuildOptions, multiple: int = 1
                    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(min, opt, max) full shapes for one NCHW input, or ``None`` when the graph shape is static.

    Dynamic N/C dims become 1 and 3; H/W come from the options (or the defaults above).
    """
    if all(d >= 0 for d in graph_shape):
        if len(graph_shape) != 4:  # a static non-image input (a tile graph's context vector) takes no profile
            return None
        if options.shape and tuple(graph_shape[-2:]) != tuple(options.shape):
            raise DFNError(f"input {name!r} is fixed at {'x'.join(map(str, graph_shape))} in the ONNX graph; "
                           f"--shape {_wh(options.shape)} cannot change it (export with --dynamic, or at "
                           "that --size)")
        if options.min_shape or options.opt_shape or options.max_shape:
            raise DFNError(f"input {name!r} is fixed at {'x'.join(map(str, graph_shape))} in the ONNX graph; "
                           "--min/--opt/--max need a graph exported with --dynamic")
        return None
    if len(graph_shape) != 4:
        raise DFNError(f"input {name!r} has shape {graph_shape}; only NCHW image inputs are supported")
    if options.shape and (options.min_shape or options.opt_shape or options.max_shape):
        raise DFNError("give either --shape (fixed) or --min/--opt/--max (a range), not both")
    if options.shape:
        lo = opt = hi = options.shape
    else:
        lo, opt, hi = options.min_shape, options.opt_shape, options.max_shape
        if opt is None:  # the default camera size, kept inside whatever bounds were given
            opt = tuple(min(max(d, lo[k] if lo else 0), hi[k] if hi else d)
                        for k, d in enumerate(DEFAULT_OPT))
        lo = lo or (min(DEFAULT_MIN[0], opt[0]), min(DEFAULT_MIN[1], opt[1]))
        hi = hi or (max(DEFAULT_MAX[0], opt[0]), max(DEFAULT_MAX[1], opt[1]))
    if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]):
        raise DFNError("shape profile must satisfy min <= opt <= max in width and height; got "
                       f"min {_wh(lo)}, opt {_wh(opt)}, max {_wh(hi)}")
    for label, (h, w) in (("min", lo), ("opt", opt), ("max", hi)):
        if multiple > 1 and (h % multiple or w % multiple):
            raise DFNError(f"{label} size {w}x{h} is not a multiple of {multiple} (the model pads frames to "
                           f"multiples of {multiple}); use e.g. {w + (-w) % multiple}x{h + (-h) % multiple}")
    n = graph_shape[0] if graph_shape[0] > 0 else 1
    c = graph_shape[1] if graph_shape[1] > 0 else 3
    full = lambda hw: (n, c, hw[0] if graph_shape[2] < 0 else graph_shape[2],  # noqa: E731
                       hw[1] if graph_shape[3] < 0 else graph_shape[3])
    return full(lo), full(opt), full(hi)


def check_dla_profile(name: str, profile: tuple[tuple[int, ...], ...] | None, options: BuildOptions) -> None:
    """Refuse a DLA build over a shape range: DLA runs fixed shapes only (min = opt = max)."""
    if options.dla_core is None or profile is None or profile[0] == profile[1] == profile[2]:
        return
    lo, opt, hi = (_wh(s[-2:]) for s in profile)
    raise DFNError(f"--dla-core needs a fixed input size (DLA has no dynamic shapes) but input {name!r} "
                   f"would get min {lo}, opt {opt}, max {hi}; build with --shape WxH, e.g. --shape {opt}")


def _check_dla_cores(builder: Any, options: BuildOptions) -> None:
    if options.dla_core is None:
        return
    cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
    if cores == 0:
        raise DFNError("--dla-core: this device has no DLA (only Jetson AGX/NX Orin and Xavier have one)")
    if options.dla_core >= cores:
        raise DFNError(f"--dla-core {options.dla_core}: this device has {cores} DLA core(s) (0..{cores - 1})")


def make_progress_monitor(trt: Any, report: Progress) -> Any:
    """A ``trt.IProgressMonitor`` forwarding to ``report``; Ctrl-C inside a callback cancels the build.

    Defined inside a function so importing this module never needs TensorRT (as Polygraphy does for
    its calibrator). Checked against NVIDIA/TensorRT samples/python/simple_progress_monitor (TRT 10.x).
    """

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.steps: dict[str, int] = {}
            self.cancelled = False

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            try:
                self.depth[phase_name] = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
                self.steps[phase_name] = int(num_steps)
                report(phase_name, 0, int(num_steps), self.depth[phase_name])
            except KeyboardInterrupt:
                self.cancelled = True  # phase_start cannot cancel; step_complete will

        def step_complete(self, phase_name, step) -> bool:
            try:
                report(phase_name, int(step) + 1, self.steps.get(phase_name, 0),
                       self.depth.get(phase_name, 0))
            except KeyboardInterrupt:
                self.cancelled = True
            return not self.cancelled

        def phase_finish(self, phase_name) -> None:
            self.depth.pop(phase_name, None)
            self.steps.pop(phase_name, None)

    return ProgressMonitor()


def _dtype_name(trt: Any, dtype: Any) -> str:
    try:
        import numpy as np

        return np.dtype(trt.nptype(dtype)).name
    except TypeError:
        return str(dtype)


def _device_info(cuda: Any) -> dict:
    """GPU name / compute capability for the sidecar; empty when no CUDA Python API is installed."""
    opened = None
    try:
        if cuda is None:
            from deepfusionnet.runtime.backends.cuda import open_cuda

            cuda = opened = open_cuda()
        return cuda.device_info()
    except DFNError:
        return {}
    finally:
        if opened is not None:
            opened.close()  # pycuda pushed a context; leaving it pushed aborts the interpreter at exit


def _load_timing_cache(trt: Any, config: Any, path: Path | None) -> tuple[Any, str]:
    """Attach a timing cache to ``config``: the file's when it exists and matches, else a fresh one."""
    status = "none"
    cache = None
    if path is not None and path.is_file():
        cache = config.create_timing_cache(path.read_bytes())
        status = "loaded"
        if cache is None or not config.set_timing_cache(cache, False):
            status = "ignored (from another TensorRT version or GPU)"
            cache = None
    if cache is None:
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        if status == "none" and path is not None:
            status = "created"
    return cache, status


def engine_from_onnx(onnx: str | Path, engine: str | Path | None = None, options: BuildOptions | None = None,
                     *, progress: Progress | None = None, trt: Any = None, cuda: Any = None) -> dict:
    """Build ``engine`` (default: ``onnx`` with suffix ``.engine``) from an exported ONNX graph.

    Writes the plan and its sidecar atomically and returns the sidecar dict (plus ``seconds``).
    ``trt`` / ``cuda`` may be module/interface objects (the CPU tests pass fakes).
    """
    trt = import_tensorrt(trt)
    options = options or BuildOptions()
    major = trt_major(trt)
    artifact = resolve(onnx)
    if artifact.kind != "onnx":
        raise DFNError(f"{artifact.path}: dfn build needs an ONNX graph (.onnx), not a {artifact.kind} file")
    onnx_path = artifact.path
    if engine:
        engine_path = Path(engine)
    else:  # a shipped model's engine goes to the working folder, not into the package
        engine_path = (Path.cwd() / f"{onnx_path.stem}.engine" if str(onnx) == artifact.model
                       else onnx_path.with_suffix(".engine"))
    _check_options(trt, major, options, onnx_path, artifact.precision)

    logger = get_logger(trt)
    logger.clear()
    builder = _create_builder(trt, logger)
    _check_dla_cores(builder, options)  # before the shape checks: "no DLA here" is the more basic answer
    strongly_typed = not options.fp16_flag
    network, parser = _parse_network(trt, builder, logger, onnx_path, strongly_typed)
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    inputs, profiles = _add_profile(trt, builder, network, config, options, artifact.multiple)
    outputs = _tensors(trt, network, network.num_outputs, network.get_output)
    _set_flags(trt, config, options)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    _, cache_status = _load_timing_cache(trt, config, cache_path)

    data, seconds = _build(trt, builder, network, config, logger, onnx_path, progress)
    del parser  # it owns the parsed weights: kept alive until the build is done
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(engine_path, data)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
        if cache_status == "none":
            cache_status = "created"

    sidecar = Sidecar.from_dict({
        "format": SIDECAR_FORMAT,
        "model": artifact.model,
        "scale": artifact.scale,
        "multiple": artifact.multiple,
        "task": artifact.task,
        **({"exposure": asdict(artifact.exposure)} if artifact.exposure is not None else {}),
        "precision": "fp16" if options.fp16_flag else artifact.precision,
        "tensorrt": str(trt.__version__),
        "gpu": _device_info(cuda),
        "strongly_typed": strongly_typed,
        "inputs": inputs,
        "outputs": outputs,
        "profile": profiles,
        "onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path), "precision": artifact.precision},
        "build": {**asdict(options), "cli_args": options.cli_args(), "timing_cache_status": cache_status},
        "engine_bytes": len(data),
        # lets dfn info/enhance spot a corrupt or swapped plan
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "build_seconds": round(seconds, 3),
    }, sidecar_path(engine_path))
    atomic_write_bytes(sidecar_path(engine_path), sidecar.to_json())
    return {**sidecar.to_dict(), "engine": str(engine_path), "sidecar": str(sidecar_path(engine_path))}


def companion_engines(onnx: str | Path, engine: str | Path, options: BuildOptions | None = None,
                      *, progress: Progress | None = None, trt: Any = None, cuda: Any = None
                      ) -> dict[str, str]:
    """Build the ``.context``/``.tile`` engines beside ``engine`` from the ONNX graph's companions
    (:mod:`deepfusionnet.runtime.tile_context`: tiles that share the frame's attention), with the same
    options -> ``{role: engine path}``. A graph without companions gets none, and stale ones are removed."""
    from deepfusionnet.runtime.tile_context import ROLES, companion_files, companion_path

    onnx_path, engine_path = resolve(onnx).path, Path(engine)
    found = companion_files(onnx_path)
    if found is None:
        for role in ROLES:
            companion_path(engine_path, role).unlink(missing_ok=True)
            sidecar_path(companion_path(engine_path, role)).unlink(missing_ok=True)
        return {}
    return {role: engine_from_onnx(src, companion_path(engine_path, role), options, progress=progress,
                                   trt=trt, cuda=cuda)["engine"] for role, src in zip(ROLES, found)}


def _check_options(trt: Any, major: int, options: BuildOptions, onnx_path: Path, precision: str) -> None:
    """Refuse options this TensorRT (major version ``major``) or this graph cannot take, before creating a
    builder."""
    if options.fp16_flag:
        if major >= 11:
            raise DFNError(f"--fp16-flag needs TensorRT 10: TensorRT {trt.__version__} removed "
                           "BuilderFlag.FP16; export an FP16 graph instead (dfn export --precision fp16) and "
                           "build that")
        if precision != "fp32":
            raise DFNError(f"{onnx_path}: --fp16-flag applies to FP32 graphs; this graph is already "
                           f"{precision}")
    if options.dla_core is not None and options.dla_core < 0:
        raise DFNError(f"--dla-core must be 0 or more, got {options.dla_core}")


def _create_builder(trt: Any, logger: Any) -> Any:
    """``trt.Builder(logger)``, or a one-line error when CUDA cannot initialise."""
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # pybind11 raises TypeError when CUDA cannot initialise
        builder = None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.errors.append(first)
    if builder is None:
        raise DFNError(f"TensorRT could not create a builder ({logger.last_error() or 'no usable GPU'}); "
                       "check the NVIDIA driver and that a GPU is visible")
    return builder


def _parse_network(trt: Any, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool
                   ) -> tuple[Any, Any]:
    """``(network, parser)`` of the ONNX file; the parser owns the weights, so keep it until the build."""
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        # Required on 10.x; accepted (always on) on 11.x.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file keeps the ONNX file's location, so external weights resolve.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip().splitlines()[0] for i in range(parser.num_errors)]
        why = errors[0] if errors else (logger.last_error() or "unknown parser error")
        raise DFNError(f"{onnx_path}: TensorRT {trt.__version__} could not parse the ONNX graph: {why[:300]}")
    return network, parser


def _tensors(trt: Any, network: Any, count: int, get: Callable[[int], Any]) -> list[dict]:
    """The sidecar's ``[{"name", "shape", "dtype"}]`` of ``count`` network inputs or outputs."""
    return [{"name": t.name, "shape": [int(d) for d in t.shape], "dtype": _dtype_name(trt, t.dtype)}
            for t in (get(i) for i in range(count))]


def _add_profile(trt: Any, builder: Any, network: Any, config: Any, options: BuildOptions, multiple: int
                 ) -> tuple[list[dict], dict]:
    """One optimization profile over the dynamic inputs -> (the inputs, each input's min/opt/max)."""
    inputs, profiles = [], {}
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        inputs.append({"name": tensor.name, "shape": list(shape), "dtype": _dtype_name(trt, tensor.dtype)})
        prof = resolve_profile(tensor.name, shape, options, multiple)
        check_dla_profile(tensor.name, prof, options)
        if prof is not None:
            if profile is None:
                profile = builder.create_optimization_profile()
            profile.set_shape(tensor.name, *prof)
            profiles[tensor.name] = {"min": list(prof[0]), "opt": list(prof[1]), "max": list(prof[2])}
        else:
            profiles[tensor.name] = {"min": list(shape), "opt": list(shape), "max": list(shape)}
    if profile is not None:
        config.add_optimization_profile(profile)
    return inputs, profiles


def _set_flags(trt: Any, config: Any, options: BuildOptions) -> None:
    """``BuilderFlag.FP16`` (TensorRT 10, weakly typed) and the DLA settings."""
    if options.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
        if options.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _build(trt: Any, builder: Any, network: Any, config: Any, logger: Any, onnx_path: Path,
           progress: Progress | None) -> tuple[bytes, float]:
    """``build_serialized_network`` with the progress monitor -> (the plan's bytes, seconds)."""
    monitor = None
    if progress is not None and hasattr(trt, "IProgressMonitor"):
        monitor = make_progress_monitor(trt, progress)
        config.progress_monitor = monitor

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if monitor is not None and monitor.cancelled:
        raise KeyboardInterrupt
    if plan is None:
        why = logger.last_error() or "see DFN_TRT_LOG=1"
        raise DFNError(f"{onnx_path}: TensorRT engine build failed ({why})")
    data = bytes(plan)
    if not data:
        raise DFNError(f"{onnx_path}: TensorRT returned an empty engine")
    return data, seconds
