"""Enhance night images, folders, videos and live cameras (torch not needed).

examples:
  dfn enhance night.jpg -o bright.jpg
  dfn enhance photos/ -o out/                      # recursive; keeps relative paths and names
  dfn enhance clip.mp4 -o out/clip.mp4 --upscale 2
  dfn enhance csi://0 -o display://0 --fast        # Jetson CSI camera to a window
  dfn enhance v4l2:///dev/video0 -o cam.mp4 --backend tensorrt --model dfn.engine
  dfn enhance "videotestsrc ! video/x-raw,width=640,height=480" -o test.mp4 --max-frames 100

inputs: images (PNG, JPEG, TIFF, BMP, WebP), folders, video files, file://PATH, v4l2:///dev/videoN,
csi://N, rtsp://..., or a GStreamer pipeline (anything containing "!").
-o: a folder (created if needed), or, for a single input, an image/video file, display://0 or a
GStreamer pipeline. exit codes: 0 ok, 1 user error, 2 some inputs failed (listed at the end),
130 interrupted (outputs written so far are complete and kept).
"""

from __future__ import annotations

import argparse

from deepfusionnet.commands.device_option import add_device_argument, torch_device_options


def backend_choices() -> tuple[str, ...]:
    """``--backend`` of enhance and eval: ``auto`` and every backend in the registry
    (:data:`deepfusionnet.runtime.backends.base.BACKENDS`)."""
    from deepfusionnet.runtime.backends.base import backend_names

    return ("auto", *backend_names(cli=True))


def add_tta_argument(p: argparse.ArgumentParser) -> None:
    """``--tta [N]``, shared by enhance and eval (the values of ``runtime.enhancer.TTA_CHOICES``)."""
    p.add_argument("--tta", type=int, nargs="?", const=8, default=1, choices=(1, 4, 8), metavar="N",
                   help="quality mode: average N passes over flipped (4) or flipped and transposed (8) copies "
                        "of each frame, at N x the time (--tta alone: 8; default 1, one pass)")


def add_gate_argument(p: argparse.ArgumentParser) -> None:
    """``--exposure-gate on|off``, shared by enhance and eval (``runtime.gate``)."""
    p.add_argument("--exposure-gate", choices=("on", "off"), default="on",
                   help="keep the input where it is already well exposed: well-lit frames pass through, "
                        "lamps and bright skies keep their colours (default on; off: the network's output "
                        "everywhere)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, videos or live source URIs")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder; or a file, display://0 or pipeline when there is a single input")
    p.add_argument("--model", default="deepfusionnet", metavar="NAME|PATH",
                   help="shipped model name or a .onnx/.xml/.engine/.safetensors file (default: %(default)s)")
    p.add_argument("--backend", default="auto", choices=backend_choices(),
                   help="inference engine (default: auto = the fastest one available for the model)")
    add_device_argument(p)
    p.add_argument("--upscale", type=int, default=1, choices=(1, 2),
                   help="2: run the 2x SR model after the enhancer (output twice as large)")
    p.add_argument("--sr-model", default="deepfusionnet-sr", metavar="NAME|PATH",
                   help="SR model for --upscale/--fast (default: %(default)s)")
    p.add_argument("--fast", action="store_true",
                   help="enhance at half resolution and let the SR model restore full size (~3.5x fewer MACs)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="process frames larger than N pixels on a side in overlapping N x N tiles "
                        "(default 2048; 0 = never tile)")
    p.add_argument("--context-side", type=int, default=None, metavar="N",
                   help="tiled frames: compute the frame's global attention context on the frame downscaled "
                        "to fit N pixels, or the tile if larger (default 2048: exact up to 2048 px; lower it "
                        "to bound the context pass's memory by one tile)")
    add_tta_argument(p)
    add_gate_argument(p)
    p.add_argument("--smooth", choices=("on", "off"), default="on",
                   help="videos and cameras: follow a moving average of the output's brightness, reset at "
                        "scene cuts, so noise cannot make it pump from frame to frame (default on; images "
                        "are never smoothed)")
    p.add_argument("--overlap", type=int, default=32, metavar="PX", help="tile overlap (default: %(default)s)")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output already exists")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop a video or camera after N frames")
    p.add_argument("--loop", action="store_true",
                   help="play video files as a live camera: loop, real-time pacing, drop stale frames "
                        "(demos and tests; stop with Ctrl-C or --max-frames)")
    p.add_argument("--reconnect", type=int, default=5, metavar="N",
                   help="reconnect attempts (doubling waits from 0.5 s) when a live source drops (default: 5)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images larger than N pixels before decoding (default 200 million)")
    p.add_argument("--remeasure", action="store_true",
                   help="--backend auto: measure the candidates again and replace the cached decision "
                        "(after a driver or library update, or on a busy machine's first run)")


# ---------------------------------------------------------------------------------------------------
# Planning: which input goes to which output (pure path logic, no model needed)


def _looks_like_input(path) -> bool:
    """Whether a file's name says it is meant as a picture or video (so skipping it fails the batch)."""
    from deepfusionnet.runtime.uris import is_media_path, unsupported_media

    return is_media_path(path) or bool(unsupported_media(path))


def _walk_folder(root, out_resolved):
    """Every entry below ``root`` that is not a folder, sorted, with why it cannot be read (None if it can):
    broken or looping symbolic links, FIFOs and devices (never opened: a FIFO would block), pictures in
    formats dfn does not read, and files that are neither images nor videos. Hidden entries and the output
    folder are left out."""
    import os
    from pathlib import Path

    from deepfusionnet.runtime.images import IMAGE_SUFFIXES, file_problem
    from deepfusionnet.runtime.uris import VIDEO_SUFFIXES, supported_formats, unsupported_media

    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        real = Path(os.path.realpath(path))  # Path.resolve raises on a link loop
        if out_resolved == real.parent or out_resolved in real.parents:
            continue
        problem = file_problem(path)
        if problem == "empty file (0 bytes)":
            problem = None  # read, and named as empty, with the other inputs
        fmt = unsupported_media(path)
        if not problem and fmt:
            problem = f"{fmt} files are not supported ({supported_formats()})"
        elif not problem and path.suffix.lower() not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            problem = "not an image or video"
        yield path, problem


def _plan_single(args, loc, sink):
    """One input to one file or stream output: -> (images, streams, the output's folder or None)."""
    from pathlib import Path

    from deepfusionnet.errors import DFNError

    if sink.kind == "image":
        if loc.kind != "image":
            raise DFNError(f"-o {args.output}: an image file, but {loc.text} is a {loc.kind}; "
                           "use a video file name or a folder")
        images, streams = [(loc.path, Path(sink.target))], []
    else:
        if loc.kind == "image":
            raise DFNError(f"-o {args.output}: a {sink.kind}, but {loc.text} is an image; "
                           "use an image file name or a folder")
        images, streams = [], [(loc, sink)]
    return images, streams, Path(sink.target).parent if sink.kind in ("image", "video") else None


def _plan_tree(loc, out_folder, prefix, out_resolved, plan) -> None:
    """A folder input, recursively (hidden files and the output folder itself left out), into ``plan``."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.images import IMAGE_SUFFIXES
    from deepfusionnet.runtime.sources import Failure
    from deepfusionnet.runtime.uris import VIDEO_SUFFIXES, Location

    root = loc.path
    if root.resolve() == out_resolved:
        raise DFNError(f"{loc.text}: refusing to overwrite the inputs with their outputs "
                       "(-o is the input folder; choose another)")
    for path, problem in _walk_folder(root, out_resolved):
        rel = path.relative_to(root)
        suffix = path.suffix.lower()
        if problem:  # a would-be input that cannot be read fails the batch; the rest is listed
            where = plan["failures"] if _looks_like_input(path) else plan["ignored"]
            where.append(Failure(str(path), problem))
        elif suffix in IMAGE_SUFFIXES:
            plan["images"].append((path, out_folder / prefix / rel))
        elif suffix in VIDEO_SUFFIXES:
            plan["streams"].append((Location("video", str(path), str(path)),
                                    Location("video", str(out_folder / prefix / rel), "")))


def _plan_folder(args, locs, sink) -> dict:
    """Every input into the output folder: -> {images, streams, failures, ignored}."""
    from pathlib import Path

    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.uris import Location

    out_folder = Path(sink.target)
    if out_folder.exists() and not out_folder.is_dir():
        raise DFNError(f"-o {args.output}: exists and is not a folder")
    out_resolved = out_folder.resolve()
    plan: dict = {"images": [], "streams": [], "failures": [], "ignored": []}
    for loc in locs:
        if loc.kind == "image":
            plan["images"].append((loc.path, out_folder / loc.path.name))
        elif loc.kind == "video":
            plan["streams"].append((loc, Location("video", str(out_folder / loc.path.name), "")))
        elif loc.live:
            plan["streams"].append((loc, Location("video", str(out_folder / f"{loc.stem()}.mp4"), "")))
        else:
            prefix = Path(loc.path.resolve().name) if len(locs) > 1 else Path()
            _plan_tree(loc, out_folder, prefix, out_resolved, plan)
    if not plan["images"] and not plan["streams"] and not plan["failures"]:
        raise DFNError(f"{', '.join(args.inputs)}: no images or videos found")
    return plan


def _safe_outputs(images, streams, out_folder, in_folder: bool, failures: list):
    """Never overwrite an input, never leave the output folder, never write one file twice:
    -> (images, streams) that pass; outputs outside the folder are added to ``failures``."""
    from pathlib import Path

    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.sources import Failure

    seen: dict[Path, str] = {}
    safe_images, safe_streams = [], []
    for kind, src, dst in [("image", s, d) for s, d in images] + [("stream", s, d) for s, d in streams]:
        src_name = str(src) if kind == "image" else src.text
        if kind == "stream" and dst.kind != "video":
            safe_streams.append((src, dst))
            continue
        dst_path = Path(dst) if kind == "image" else Path(dst.target)
        resolved = dst_path.resolve()
        src_path = Path(src) if kind == "image" else (src.path if src.kind == "video" else None)
        if src_path is not None and src_path.resolve() == resolved:
            raise DFNError(f"{src_name}: refusing to overwrite the input with its output (choose another -o)")
        if out_folder is not None and in_folder:
            base = out_folder.resolve()
            if resolved != base and base not in resolved.parents:
                failures.append(Failure(src_name, f"output path {dst_path} would leave the output folder"))
                continue
        if resolved in seen:
            raise DFNError(f"{src_name} and {seen[resolved]} would both be written to {dst_path}; "
                           "process them into different folders")
        seen[resolved] = src_name
        if kind == "image":
            safe_images.append((src, dst_path))
        else:
            safe_streams.append((src, dst))
    return safe_images, safe_streams


def _skip_existing(images, streams, log):
    """--skip-existing: -> (images, streams, skipped output names) without the inputs already done."""
    from pathlib import Path

    skipped = [str(dst) for _, dst in images if dst.exists()]
    images = [(src, dst) for src, dst in images if not dst.exists()]

    def done(src, dst) -> bool:  # a live recording is never "done"
        return dst.kind == "video" and not src.live and Path(dst.target).exists()

    skipped += [dst.target for src, dst in streams if done(src, dst)]
    streams = [(src, dst) for src, dst in streams if not done(src, dst)]
    if skipped:
        log(f"skipping {len(skipped)} input(s) whose output exists (--skip-existing)")
    return images, streams, skipped


def _plan(args, log):
    """-> (image tasks [(src, dst)], stream tasks [(source, sink Location)], failures, skipped, single,
    ignored: files in input folders that are not inputs, as Failure records)."""
    from pathlib import Path

    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.uris import parse_sink, parse_source

    locs = [parse_source(text) for text in args.inputs]
    sink = parse_sink(args.output)
    single = len(locs) == 1 and locs[0].kind != "folder"
    failures: list = []
    ignored: list = []
    if sink.kind != "folder":
        if not single:
            what = f"{locs[0].text} is a folder" if len(locs) == 1 else f"{len(locs)} inputs"
            raise DFNError(f"-o {args.output}: {what}; that needs an output folder, not a single {sink.kind}")
        images, streams, out_folder = _plan_single(args, locs[0], sink)
    else:
        plan = _plan_folder(args, locs, sink)
        images, streams, failures, ignored = plan["images"], plan["streams"], plan["failures"], plan["ignored"]
        out_folder = Path(sink.target)
    images, streams = _safe_outputs(images, streams, out_folder, sink.kind == "folder", failures)
    skipped: list[str] = []
    if args.skip_existing:
        images, streams, skipped = _skip_existing(images, streams, log)
    return images, streams, failures, skipped, single, ignored


# ---------------------------------------------------------------------------------------------------
# The model: enhancer, optionally followed by the SR model


def choose_backend(model: str, backend: str, size=None, remeasure: bool = False) -> tuple[str, str, dict]:
    """(backend name, model, backend options) for ``--backend``; ``size`` is the frame's (H, W) if known.

    ``auto`` asks :mod:`deepfusionnet.runtime.measure.auto` for ONNX models (``remeasure``: measure again
    rather than reuse its cached decision) and uses the registry's backend for any other artifact kind.
    """
    if backend != "auto":
        return backend, model, {}
    from pathlib import Path

    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.backends.base import unavailable
    from deepfusionnet.runtime.enhancer import backend_for
    from deepfusionnet.runtime.measure.auto import choose_with_options

    artifact = resolve(model)
    if artifact.kind != "onnx":
        name = backend_for(artifact, "default")
        if artifact.kind == "weights" and unavailable(name):  # e.g. a seed model shipped as weights alone
            from deepfusionnet.errors import DFNError

            raise DFNError(f"{model}: PyTorch weights need the torch backend ({unavailable(name)}): "
                           f"pip install 'deepfusionnet[train]', or export an ONNX graph once where torch is "
                           f"installed (dfn export {model} -o {Path(str(model)).stem}.onnx) and run that")
        return name, model, {}
    # runtime.measure.auto speaks (width, height).
    choice = choose_with_options(model, (size[1], size[0]) if size else None, refresh=remeasure)
    # Keep a shipped name when auto picked its own file: the name carries the model's scale.
    same = Path(choice.path).resolve() == artifact.path.resolve()
    return choice.backend, model if same else str(choice.path), dict(choice.options)


def check_tiling(args) -> int:
    """The tile size to use; --tile and --overlap checked together (each alone is checked when parsed)."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.enhancer import DEFAULT_TILE

    tile = DEFAULT_TILE if args.tile is None else (args.tile or 1 << 30)
    if tile <= args.overlap * 2:
        raise DFNError(f"--tile {args.tile}: must be more than twice --overlap ({args.overlap})")
    if getattr(args, "context_side", None) is not None and args.context_side < 8:
        raise DFNError(f"--context-side {args.context_side}: must be at least 8 pixels")
    return tile


def open_chain(args, size=None):
    """The processing chain for these arguments; ``size`` (H, W) of the frames when known (for auto)."""
    from deepfusionnet.runtime.enhancer import Chain, open_enhancer

    tile = check_tiling(args)
    if size is not None and args.fast:  # both models then run on the half-size frame
        size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    remeasure = getattr(args, "remeasure", False)
    backend, model, options = choose_backend(args.model, args.backend, size, remeasure)
    options = {**options, **torch_device_options(args.device, backend)}
    gate = getattr(args, "exposure_gate", "on") == "on"
    side = {} if getattr(args, "context_side", None) is None else {"context_side": args.context_side}
    enhancer = open_enhancer(model, backend, tile=tile, overlap=args.overlap, tta=args.tta, gate=gate, **side,
                             **options)
    sr = None
    if args.upscale == 2 or args.fast:

        def open_sr():
            sr_backend, sr_model, sr_options = choose_backend(args.sr_model, args.backend, size, remeasure)
            sr_options = {**sr_options, **torch_device_options(args.device, sr_backend)}
            return open_enhancer(sr_model, sr_backend, tile=tile, overlap=args.overlap, tta=args.tta, **side,
                                 **sr_options)

        sr = open_sr_stage(enhancer, args.sr_model, open_sr)
    return Chain(enhancer, sr, fast=args.fast)


def open_sr_stage(enhancer, sr_model: str, open_sr):
    """``open_sr()``, the upscaler that follows ``enhancer`` (closed, with the upscaler, when it fails or
    does not upscale)."""
    from deepfusionnet.errors import DFNError

    try:
        sr = open_sr()
    except BaseException:
        enhancer.close()
        raise
    if sr.scale < 2:
        enhancer.close()
        sr.close()
        raise DFNError(f"--sr-model {sr_model}: scale {sr.scale}, not an upscaling model "
                       "(set \"scale\": 2 in its .json sidecar if it is one)")
    return sr


# ---------------------------------------------------------------------------------------------------
# Running


class _Status:
    """Live fps on stderr: one rewritten line on a terminal, a line every few seconds otherwise."""

    def __init__(self, name: str) -> None:
        import sys
        import time

        from deepfusionnet.runtime.stream import FpsMeter

        self.name, self.meter, self.time = name, FpsMeter(), time
        self.tty = sys.stderr.isatty()
        self.every = 1.0 if self.tty else 5.0
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, stats) -> None:
        import sys

        self.meter.tick()
        now = self.time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        line = f"{self.name}: {self.meter.fps:5.1f} fps, {stats.processed} frames, {stats.dropped} dropped"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        self.shown = True

    def end(self) -> None:
        import sys

        if self.shown and self.tty:
            print(file=sys.stderr)


def _image_size(path) -> tuple[int, int] | None:
    """(H, W) from an image's header (for ``auto``), or None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except Exception:  # unreadable files are reported when they are processed
        return None


def _progress(total, unit: str, desc: str):
    import sys

    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI, --json pipelines).
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=None, dynamic_ncols=True, leave=False)


def _open_stream_sink(dst, fps: float):
    from deepfusionnet.runtime.sinks import DisplaySink, GStreamerSink, VideoFileSink

    if dst.kind == "display":
        return DisplaySink(f"dfn enhance (display {dst.target})")
    if dst.kind == "gstreamer":
        return GStreamerSink(dst.target, fps)
    return VideoFileSink(dst.target, fps)


def _enhance_stream(source, dst, process, stop, name: str):
    """One video or live source through ``process`` into ``dst``: -> (stats, sink)."""
    from deepfusionnet.runtime.stream import run_stream

    sink = _open_stream_sink(dst, source.fps)
    status = _Status(name) if source.live else None
    bar = None if source.live else _progress(source.length, "frame", name)
    try:
        stats = run_stream(source, process, sink, live=source.live, stop=stop,
                             on_write=(lambda f: bar.update()) if bar else None, on_frame=status)
    except KeyboardInterrupt:
        sink.close()  # a second Ctrl-C: still a playable file with what was written
        raise
    except BaseException:
        sink.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        if status is not None:
            status.end()
    sink.close()
    return stats, sink


def _strip_name(exc: Exception, name: str) -> str:
    text = str(exc)
    return text[len(name) + 2:] if text.startswith(name + ": ") else text


def _check_arguments(args) -> None:
    """The option combinations the parser cannot check, before any file is read or model loaded."""
    from deepfusionnet.errors import DFNError

    if args.fast and args.upscale == 2:
        raise DFNError("--fast and --upscale 2 together would need a 4x model; pick one")
    if args.max_frames is not None and args.max_frames < 1:
        raise DFNError(f"--max-frames {args.max_frames}: must be at least 1")
    check_tiling(args)  # like the options' own ranges


class _Batch:
    """One ``dfn enhance`` run over its planned images and streams: the chain (opened on first use, at
    the first frame's size for ``auto``), the outputs and the running totals."""

    def __init__(self, args, single: bool, failures: list, log) -> None:
        import threading

        self.args, self.single, self.failures, self.log = args, single, failures, log
        self.outputs: list[str] = []
        self.frames = self.dropped = 0
        self.busy = 0.0
        self.chain = None
        self.stop = threading.Event()

    def get_chain(self, size=None):
        if self.chain is None:
            self.chain = open_chain(self.args, size)
        return self.chain

    def fail(self, name: str, reason: str) -> None:
        from deepfusionnet.errors import DFNError
        from deepfusionnet.runtime.sources import Failure

        if self.single:  # one explicit input: its failure is the run's error
            raise DFNError(f"{name}: {reason}")
        self.failures.append(Failure(name, reason))

    def run_images(self, images) -> None:
        from deepfusionnet.runtime.sinks import ImageFileSink
        from deepfusionnet.runtime.sources import ImageListSource
        from deepfusionnet.runtime.stream import run_stream

        process = self.get_chain(_image_size(images[0][0]))
        sink = ImageFileSink()
        bar = _progress(len(images), "img", "enhance")
        try:
            stats = run_stream(ImageListSource(images, self.args.max_pixels), process, sink, live=False,
                               stop=self.stop, per_item_errors=True, on_write=lambda f: bar.update())
        finally:
            bar.close()
        self.outputs += sink.outputs
        self.frames, self.busy = self.frames + stats.processed, self.busy + stats.seconds
        for f in stats.failures:
            self.fail(f.name, f.reason)

    def run_stream(self, loc, dst) -> None:
        from deepfusionnet.errors import DFNError
        from deepfusionnet.runtime.sources import open_source
        from deepfusionnet.runtime.temporal import smoothed

        args = self.args
        try:
            source = open_source(loc, loop=args.loop, max_frames=args.max_frames, reconnect=args.reconnect)
        except DFNError as exc:
            return self.fail(loc.text, _strip_name(exc, loc.text))
        try:
            chain = self.get_chain(getattr(source, "size", None))
            process = smoothed(chain.run_tensor) if args.smooth == "on" else chain
            stats, sink = _enhance_stream(source, dst, process, self.stop,
                                          loc.path.name if loc.kind == "video" else loc.text)
        except DFNError as exc:
            return self.fail(loc.text, _strip_name(exc, loc.text))
        finally:
            source.close()
        self.outputs += sink.outputs
        self.frames, self.busy = self.frames + stats.processed, self.busy + stats.seconds
        self.dropped += stats.dropped
        if stats.written == 0 and not self.stop.is_set():
            self.fail(loc.text, "no frame could be processed")
        if getattr(source, "lost", False):
            self.log(f"{loc.text}: source lost; kept {stats.written} frames in "
                     f"{', '.join(sink.outputs) or 'no file'}")

    def close(self) -> None:
        if self.chain is not None:
            self.chain.close()


def _summary(batch: _Batch, skipped: list, interrupted: bool) -> tuple[str, float | None]:
    """The last stderr line, and the frame rate it states (None when nothing ran)."""
    summary = f"{len(batch.outputs)} output(s) written"
    if batch.failures:
        summary += f", {len(batch.failures)} failed"
    if skipped:
        summary += f", {len(skipped)} skipped"
    fps = batch.frames / batch.busy if batch.frames and batch.busy > 0 else None
    if fps:
        summary += f"; {fps:.1f} frames/s"
    if batch.dropped:
        summary += f", {batch.dropped} live frames dropped"
    return summary + (" (interrupted)" if interrupted else ""), fps


def _json_record(args, batch: _Batch, skipped, ignored, fps, seconds: float, interrupted: bool) -> dict:
    chain = batch.chain
    return {
        "inputs": list(args.inputs),
        "outputs": batch.outputs,
        "failures": [f.to_json() for f in batch.failures],
        "skipped": skipped,
        "ignored": [f.to_json() for f in ignored],
        "backend": chain.enhancer.backend.name if chain else None,
        "model": str(chain.enhancer.artifact.path) if chain else None,
        "sr_model": str(chain.sr.artifact.path) if chain and chain.sr else None,
        "mode": "fast" if args.fast else ("upscale" if args.upscale == 2 else "enhance"),
        "tta": args.tta,
        "frames": batch.frames,
        "dropped": batch.dropped,
        "fps": round(fps, 3) if fps else None,
        "seconds": round(seconds, 3),
        "interrupted": interrupted,
    }


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from deepfusionnet.output import emit_json
    from deepfusionnet.runtime.stream import stop_on_sigint

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    _check_arguments(args)
    images, streams, failures, skipped, single, ignored = _plan(args, log)
    batch = _Batch(args, single, failures, log)
    started = time.monotonic()
    try:
        with stop_on_sigint(batch.stop, log) as sig:
            if images:
                batch.run_images(images)
            for loc, dst in streams:
                if batch.stop.is_set():
                    break
                batch.run_stream(loc, dst)
            interrupted = sig["signal"] is not None
    finally:
        batch.close()

    for f in ignored:
        log(f"skipped: {f.name}: {f.reason}")
    for f in failures:
        log(f"failed: {f.name}: {f.reason}")
    summary, fps = _summary(batch, skipped, interrupted)
    log(summary)
    if args.json:
        emit_json(_json_record(args, batch, skipped, ignored, fps, time.monotonic() - started, interrupted))
    if interrupted:
        return 130
    return 2 if failures else 0
