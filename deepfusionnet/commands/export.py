"""(not yet implemented)"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from deepfusionnet.errors import DFNError

    raise DFNError("dfn export is not implemented yet")
