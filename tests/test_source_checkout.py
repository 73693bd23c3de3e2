"""The stage folders resolve as deepfusionnet.runtime/.train/.export from a bare source checkout too:
the case of `python -c ...` run in the repository root while a non-editable install sits elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_stage_packages_resolve_from_the_checkout_without_site_packages():
    # -S: no site-packages, so no installed or editable deepfusionnet; only the checkout on the path.
    code = ("import importlib.util as u\n"
            "for name in ('runtime', 'train', 'export'):\n"
            "    print(u.find_spec('deepfusionnet.' + name).origin)\n")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(REPO / n / "__init__.py") for n in ("runtime", "train", "export")]
