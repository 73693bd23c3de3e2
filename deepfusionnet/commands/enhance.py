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

BACKEND_CHOICES = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")


def add_tta_argument(p: argparse.ArgumentParser) -> None:
    """``--tta [N]``, shared by enhance and eval (the values of ``runtime.enhancer.TTA_CHOICES``)."""
    p.add_argument("--tta", type=int, nargs="?", const=8, default=1, choices=(1, 4, 8), metavar="N",
                   help="quality mode: average N passes over flipped (4) or flipped and transposed (8) copies "
                        "of each frame, at N x the time (--tta alone: 8; default 1, one pass)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, videos or live source URIs")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder; or a file, display://0 or pipeline when there is a single input")
    p.add_argument("--model", default="deepfusionnet", metavar="NAME|PATH",
                   help="shipped model name or a .onnx/.xml/.engine/.safetensors file (default: %(default)s)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
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
                        "(default 1024; 0 = never tile)")
    add_tta_argument(p)
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


def _plan(args, log):
    """-> (image tasks [(src, dst)], stream tasks [(source, sink Location)], failures, skipped, single,
    ignored: files in input folders that are not inputs, as Failure records)."""
    from pathlib import Path

    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.images import IMAGE_SUFFIXES
    from deepfusionnet.runtime.sources import Failure
    from deepfusionnet.runtime.uris import VIDEO_SUFFIXES, Location, parse_sink, parse_source

    locs = [parse_source(text) for text in args.inputs]
    sink = parse_sink(args.output)
    single = len(locs) == 1 and locs[0].kind != "folder"
    failures: list = []
    ignored: list = []
    images: list[tuple[Path, Path]] = []
    streams: list[tuple[Location, Location]] = []

    if sink.kind != "folder":
        if not single:
            what = f"{locs[0].text} is a folder" if len(locs) == 1 else f"{len(locs)} inputs"
            raise DFNError(f"-o {args.output}: {what}; that needs an output folder, not a single {sink.kind}")
        loc = locs[0]
        if sink.kind == "image":
            if loc.kind != "image":
                raise DFNError(f"-o {args.output}: an image file, but {loc.text} is a {loc.kind}; "
                               "use a video file name or a folder")
            images.append((loc.path, Path(sink.target)))
        else:
            if loc.kind == "image":
                raise DFNError(f"-o {args.output}: a {sink.kind}, but {loc.text} is an image; "
                               "use an image file name or a folder")
            streams.append((loc, sink))
        out_folder = Path(sink.target).parent if sink.kind in ("image", "video") else None
    else:
        out_folder = Path(sink.target)
        if out_folder.exists() and not out_folder.is_dir():
            raise DFNError(f"-o {args.output}: exists and is not a folder")
        out_resolved = out_folder.resolve()
        many = len(locs) > 1
        for loc in locs:
            if loc.kind == "image":
                images.append((loc.path, out_folder / loc.path.name))
            elif loc.kind == "video":
                streams.append((loc, Location("video", str(out_folder / loc.path.name), "")))
            elif loc.live:
                streams.append((loc, Location("video", str(out_folder / f"{loc.stem()}.mp4"), "")))
            else:  # folder: recursive, hidden files and the output folder itself left out
                root = loc.path
                if root.resolve() == out_resolved:
                    raise DFNError(f"{loc.text}: refusing to overwrite the inputs with their outputs "
                                   "(-o is the input folder; choose another)")
                prefix = Path(root.resolve().name) if many else Path()
                for path, problem in _walk_folder(root, out_resolved):
                    rel = path.relative_to(root)
                    suffix = path.suffix.lower()
                    if problem:  # a would-be input that cannot be read fails the batch; the rest is listed
                        (failures if _looks_like_input(path) else ignored).append(Failure(str(path), problem))
                    elif suffix in IMAGE_SUFFIXES:
                        images.append((path, out_folder / prefix / rel))
                    elif suffix in VIDEO_SUFFIXES:
                        streams.append((Location("video", str(path), str(path)),
                                        Location("video", str(out_folder / prefix / rel), "")))
        if not images and not streams and not failures:
            raise DFNError(f"{', '.join(args.inputs)}: no images or videos found")

    # Safety: never overwrite an input, never leave the output folder, never write one file twice.
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
        if out_folder is not None and sink.kind == "folder":
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

    skipped: list[str] = []
    if args.skip_existing:
        skipped = [str(dst) for _, dst in safe_images if dst.exists()]
        safe_images = [(src, dst) for src, dst in safe_images if not dst.exists()]

        def done(src, dst) -> bool:  # a live recording is never "done"
            return dst.kind == "video" and not src.live and Path(dst.target).exists()

        skipped += [dst.target for src, dst in safe_streams if done(src, dst)]
        safe_streams = [(src, dst) for src, dst in safe_streams if not done(src, dst)]
        if skipped:
            log(f"skipping {len(skipped)} input(s) whose output exists (--skip-existing)")
    return safe_images, safe_streams, failures, skipped, single, ignored


# ---------------------------------------------------------------------------------------------------
# The model: enhancer, optionally followed by the SR model


def choose_backend(model: str, backend: str, size=None, remeasure: bool = False) -> tuple[str, str, dict]:
    """(backend name, model, backend options) for ``--backend``; ``size`` is the frame's (H, W) if known.

    ``auto`` asks :mod:`deepfusionnet.runtime.auto` for ONNX models (``remeasure``: measure again rather
    than reuse its cached decision) and uses an engine file's or weights file's own backend otherwise.
    """
    if backend != "auto":
        return backend, model, {}
    from pathlib import Path

    from deepfusionnet.runtime.artifacts import resolve
    from deepfusionnet.runtime.enhancer import backend_for

    artifact = resolve(model)
    if artifact.kind != "onnx":
        return backend_for(artifact, "default"), model, {}
    try:
        from deepfusionnet.runtime.auto import choose_with_options
    except ImportError:  # a build without runtime.auto: ONNX Runtime
        return "onnxruntime", model, {}
    # runtime.auto speaks (width, height).
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
    return tile


def open_chain(args, size=None):
    """The processing chain for these arguments; ``size`` (H, W) of the frames when known (for auto)."""
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.enhancer import Chain, open_enhancer

    tile = check_tiling(args)
    if size is not None and args.fast:  # both models then run on the half-size frame
        size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    remeasure = getattr(args, "remeasure", False)
    backend, model, options = choose_backend(args.model, args.backend, size, remeasure)
    options = {**options, **torch_device_options(args.device, backend)}
    enhancer = open_enhancer(model, backend, tile=tile, overlap=args.overlap, tta=args.tta, **options)
    sr = None
    if args.upscale == 2 or args.fast:
        try:
            sr_backend, sr_model, sr_options = choose_backend(args.sr_model, args.backend, size,
                                                              remeasure)
            sr_options = {**sr_options, **torch_device_options(args.device, sr_backend)}
            sr = open_enhancer(sr_model, sr_backend, tile=tile, overlap=args.overlap, tta=args.tta, **sr_options)
        except BaseException:
            enhancer.close()
            raise
        if sr.scale < 2:
            enhancer.close()
            sr.close()
            raise DFNError(f"--sr-model {args.sr_model}: scale {sr.scale}, not an upscaling model "
                           "(set \"scale\": 2 in its .json sidecar if it is one)")
    return Chain(enhancer, sr, fast=args.fast)


# ---------------------------------------------------------------------------------------------------
# Running


class _Status:
    """Live fps on stderr: one rewritten line on a terminal, a line every few seconds otherwise."""

    def __init__(self, name: str) -> None:
        import sys
        import time

        from deepfusionnet.runtime.pipeline import FpsMeter

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


def _run_stream(source, dst, process, stop, name: str):
    """One video or live source through ``process`` into ``dst``: -> (stats, sink)."""
    from deepfusionnet.runtime.pipeline import run_pipeline

    sink = _open_stream_sink(dst, source.fps)
    status = _Status(name) if source.live else None
    bar = None if source.live else _progress(source.length, "frame", name)
    try:
        stats = run_pipeline(source, process, sink, live=source.live, stop=stop,
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


def run(args: argparse.Namespace) -> int:
    import sys
    import threading
    import time

    from deepfusionnet.cli import emit_json
    from deepfusionnet.errors import DFNError
    from deepfusionnet.runtime.pipeline import run_pipeline, stop_on_sigint
    from deepfusionnet.runtime.sinks import ImageFileSink
    from deepfusionnet.runtime.sources import Failure, ImageListSource, open_source

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.fast and args.upscale == 2:
        raise DFNError("--fast and --upscale 2 together would need a 4x model; pick one")
    if args.max_frames is not None and args.max_frames < 1:
        raise DFNError(f"--max-frames {args.max_frames}: must be at least 1")
    check_tiling(args)  # before any file is read or model loaded, like the options' own ranges
    images, streams, failures, skipped, single, ignored = _plan(args, log)
    outputs: list[str] = []
    frames = dropped = 0
    busy = 0.0
    chain = None
    stop = threading.Event()
    started = time.monotonic()

    def get_chain(size=None):
        nonlocal chain
        if chain is None:
            chain = open_chain(args, size)
        return chain

    def fail(name: str, reason: str) -> None:
        if single:  # one explicit input: its failure is the run's error
            raise DFNError(f"{name}: {reason}")
        failures.append(Failure(name, reason))

    try:
        with stop_on_sigint(stop, log) as sig:
            if images:
                process = get_chain(_image_size(images[0][0]))
                sink = ImageFileSink()
                bar = _progress(len(images), "img", "enhance")
                try:
                    stats = run_pipeline(ImageListSource(images, args.max_pixels), process, sink, live=False,
                                         stop=stop, per_item_errors=True, on_write=lambda f: bar.update())
                finally:
                    bar.close()
                outputs += sink.outputs
                frames, busy = frames + stats.processed, busy + stats.seconds
                for f in stats.failures:
                    fail(f.name, f.reason)
            for loc, dst in streams:
                if stop.is_set():
                    break
                try:
                    source = open_source(loc, loop=args.loop, max_frames=args.max_frames, reconnect=args.reconnect)
                except DFNError as exc:
                    fail(loc.text, _strip_name(exc, loc.text))
                    continue
                try:
                    stats, sink = _run_stream(source, dst, get_chain(getattr(source, "size", None)), stop,
                                              loc.path.name if loc.kind == "video" else loc.text)
                except DFNError as exc:
                    fail(loc.text, _strip_name(exc, loc.text))
                    continue
                finally:
                    source.close()
                outputs += sink.outputs
                frames, busy, dropped = frames + stats.processed, busy + stats.seconds, dropped + stats.dropped
                if stats.written == 0 and not stop.is_set():
                    fail(loc.text, "no frame could be processed")
                if getattr(source, "lost", False):
                    log(f"{loc.text}: source lost; kept {stats.written} frames in {', '.join(sink.outputs) or 'no file'}")
            interrupted = sig["fired"]
    finally:
        if chain is not None:
            chain.close()

    for f in ignored:
        log(f"skipped: {f.name}: {f.reason}")
    for f in failures:
        log(f"failed: {f.name}: {f.reason}")
    summary = f"{len(outputs)} output(s) written"
    if failures:
        summary += f", {len(failures)} failed"
    if skipped:
        summary += f", {len(skipped)} skipped"
    fps = frames / busy if frames and busy > 0 else None
    if fps:
        summary += f"; {fps:.1f} frames/s"
    if dropped:
        summary += f", {dropped} live frames dropped"
    log(summary + (" (interrupted)" if interrupted else ""))
    if args.json:
        emit_json({
            "inputs": list(args.inputs),
            "outputs": outputs,
            "failures": [f.to_json() for f in failures],
            "skipped": skipped,
            "ignored": [f.to_json() for f in ignored],
            "backend": chain.enhancer.backend.name if chain else None,
            "model": str(chain.enhancer.artifact.path) if chain else None,
            "sr_model": str(chain.sr.artifact.path) if chain and chain.sr else None,
            "mode": "fast" if args.fast else ("upscale" if args.upscale == 2 else "enhance"),
            "tta": args.tta,
            "frames": frames,
            "dropped": dropped,
            "fps": round(fps, 3) if fps else None,
            "seconds": round(time.monotonic() - started, 3),
            "interrupted": interrupted,
        })
    if interrupted:
        return 130
    return 2 if failures else 0
