"""The ``dfn`` command line: subcommands registered by name, each in its own module.

Command modules import only argparse at the top, so ``dfn --help`` and every subcommand's ``--help``
work whatever extras are installed; heavy imports happen in ``run``. A :class:`DFNError` becomes one
line on stderr and exit code 1 (no traceback); ``--json`` puts machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys

from deepfusionnet import __version__
from deepfusionnet.errors import DFNError
from deepfusionnet.options import check_numeric_options
from deepfusionnet.output import emit_json  # noqa: F401  (deepfusionnet.cli.emit_json, as before)

# name -> (module, one-line help, extra it needs)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "enhance": ("deepfusionnet.commands.enhance", "enhance images, folders, videos or live cameras", "base"),
    "eval": ("deepfusionnet.commands.eval", "score a model or exported artifact on paired data (PSNR/SSIM)", "base"),
    "info": ("deepfusionnet.commands.info", "parameters, MACs, IO names/shapes and hash of a model or artifact", "base"),
    "bench": ("deepfusionnet.commands.bench", "latency benchmark across backends, precisions and sizes", "base"),
    "train": ("deepfusionnet.commands.train", "train DeepFusionNet or its SR model (resumable, DDP-ready)", "train"),
    "fit-exposure": ("deepfusionnet.commands.fit_exposure",
                     "fit an enhancer's exposure calibration on its training frames", "train"),
    "export": ("deepfusionnet.commands.export", "export FP32/FP16/INT8 ONNX with a parity check", "export"),
    "check": ("deepfusionnet.commands.check", "check an ONNX graph against TensorRT 10/11 conformance rules",
              "export"),
    "parity": ("deepfusionnet.commands.parity", "compare two models/artifacts on a data set", "base"),
    "build": ("deepfusionnet.commands.build", "build a TensorRT engine from an ONNX graph", "trt"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; here 2 means "some inputs of a batch failed", so use 1."""

    def error(self, message: str):
        # One line, like every other error: argparse's usage block would bury it (--help shows usage).
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# OS errors that are about the user's files or machine (not a bug): one line, exit 1.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
                errno.EEXIST, errno.EDQUOT, errno.ENAMETOOLONG, errno.EMFILE, errno.EIO}


def _on_sigterm(signum, frame):
    # A service manager stopping us gets the same clean stop as Ctrl-C: temporaries removed,
    # finished outputs kept.
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dfn", description="DeepFusionNet deploy toolkit: train, export, build, enhance, benchmark.")
    parser.add_argument("--version", action="version", version=f"deepfusionnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    for name, (module, help_text, extra) in COMMANDS.items():
        mod = importlib.import_module(module)
        needs = "" if extra == "base" else f" [needs deepfusionnet[{extra}]]"
        p = sub.add_parser(name, help=help_text + needs, description=(mod.__doc__ or help_text).strip() + needs,
                           parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        check_numeric_options(p, name)
        p.set_defaults(_module=mod)
    return parser


@contextlib.contextmanager
def library_warnings_to_log():
    """Python warnings from libraries (Pillow's "Corrupt EXIF data", deprecation notes) go to the
    ``deepfusionnet`` log at debug level instead of the terminal: a file that decodes fine needs no such
    noise, and one that does not gets our one-line error. ``DFN_DEBUG=1`` shows that log on stderr."""
    import logging
    import warnings

    log = logging.getLogger("deepfusionnet")
    if os.environ.get("DFN_DEBUG") and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("debug: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)

    def to_log(message, category, filename, lineno, file=None, line=None):
        log.debug("%s: %s (%s:%s)", category.__name__, message, filename, lineno)

    previous = warnings.showwarning
    warnings.showwarning = to_log
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: list[str] | None = None) -> int:
    with library_warnings_to_log():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (its one line is printed), --help or --version
        return exc.code if isinstance(exc.code, int) else 0
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 1
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (dfn called from a library): leave signals alone
        pass
    try:
        return int(args._module.run(args) or 0)
    except DFNError as exc:
        print(f"dfn {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dfn {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print(f"dfn {args.command}: error: out of memory; try a smaller --tile", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("DFN_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:  # disk full, permissions, ...
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"dfn {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1
        import traceback

        # A bug, not a user error: one line on the terminal; DFN_DEBUG=1 shows the whole traceback.
        print(f"dfn {args.command}: internal error: {traceback.format_exc().strip().splitlines()[-1]} "
              "(set DFN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
