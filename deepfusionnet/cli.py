"""The ``dfn`` command line: subcommands registered by name, each in its own module.

Command modules import only argparse at the top, so ``dfn --help`` and every subcommand's ``--help``
work whatever extras are installed; heavy imports happen in ``run``. A :class:`DFNError` becomes one
line on stderr and exit code 1 (no traceback); ``--json`` puts machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from deepfusionnet import __version__
from deepfusionnet.errors import DFNError

# name -> (module, one-line help, extra it needs)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "enhance": ("deepfusionnet.commands.enhance", "enhance images, folders, videos or live cameras", "base"),
    "eval": ("deepfusionnet.commands.eval", "score a model or exported artifact on paired data (PSNR/SSIM)", "base"),
    "info": ("deepfusionnet.commands.info", "parameters, MACs, IO names/shapes and hash of a model or artifact", "base"),
    "bench": ("deepfusionnet.commands.bench", "latency benchmark across backends, precisions and sizes", "base"),
    "train": ("deepfusionnet.commands.train", "train DeepFusionNet or its SR model (resumable, DDP-ready)", "train"),
    "export": ("deepfusionnet.commands.export", "export FP32/FP16/INT8 ONNX with a parity check", "export"),
    "parity": ("deepfusionnet.commands.parity", "compare two models/artifacts on a data set", "base"),
    "build": ("deepfusionnet.commands.build", "build a TensorRT engine from an ONNX graph", "trt"),
}


def emit_json(obj) -> None:
    """Print ``obj`` as JSON on stdout (the only thing a --json run prints there)."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfn", description="DeepFusionNet deploy toolkit: train, export, build, enhance, benchmark.")
    parser.add_argument("--version", action="version", version=f"deepfusionnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    for name, (module, help_text, extra) in COMMANDS.items():
        mod = importlib.import_module(module)
        needs = "" if extra == "base" else f" [needs deepfusionnet[{extra}]]"
        p = sub.add_parser(name, help=help_text + needs, description=(mod.__doc__ or help_text).strip() + needs,
                           parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
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
    except Exception:
        if os.environ.get("DFN_DEBUG"):
            raise
        import traceback

        # A bug, not a user error: keep the details, but in a file, not on the user's terminal.
        print(f"dfn {args.command}: internal error: {traceback.format_exc().strip().splitlines()[-1]} "
              "(set DFN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
