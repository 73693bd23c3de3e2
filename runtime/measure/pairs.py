"""Finding ``(low, high)`` image pairs in a folder, torch-free (shared by ``dfn eval`` and training).

Understood layouts: ``low/`` + ``high/`` (also ``Low/Normal``, ``low/normal``, ``input/target``,
``Low/High``), directly under the root or under a LOL-v1 split (``our485``, ``eval15``) or a LOL-v2
split (``Train``, ``Test``). Pairs are matched by relative name, ignoring a leading ``low``/``normal``
prefix so LOL-v2's ``low00001.png`` / ``normal00001.png`` match.
"""

from __future__ import annotations

import re
from pathlib import Path

from deepfusionnet.errors import DFNError
from deepfusionnet.runtime.images import IMAGE_SUFFIXES

# (low folder, high folder) names, tried in order under the given root and its known sub-splits.
PAIR_DIRS = [("low", "high"), ("Low", "Normal"), ("low", "normal"), ("input", "target"), ("Low", "High")]
SPLITS = ["", "our485", "eval15", "Train", "train", "Test", "test"]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _key(path: Path, folder: Path) -> str:
    # LOL-v2 names pairs low00001.png / normal00001.png: compare what follows the prefix.
    rel = path.relative_to(folder).with_suffix("").as_posix()
    return re.sub(r"^(low|normal|high|input|target)[_-]?", "", rel, flags=re.IGNORECASE)


def find_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """Matching ``(low, high)`` paths under ``root``, sorted by the low image's path.

    The first layout found wins (the root itself, then ``our485``, ``eval15``, ``Train``, ...), so
    point at ``lol-v1/eval15`` to evaluate, not at ``lol-v1``. Raises :class:`DFNError` when no
    layout is found or the two folders share no names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DFNError(f"{root}: not a folder of image pairs")
    for split in SPLITS:
        base = root / split if split else root
        for lo, hi in PAIR_DIRS:
            if (base / lo).is_dir() and (base / hi).is_dir():
                highs = {_key(p, base / hi): p for p in _images(base / hi)}
                lows = [(p, _key(p, base / lo)) for p in _images(base / lo)]
                pairs = [(p, highs[k]) for p, k in lows if k in highs]
                if not pairs:
                    raise DFNError(f"{base}: '{lo}/' and '{hi}/' share no file names")
                return pairs
    raise DFNError(f"{root}: expected low/ and high/ folders "
                   "(or LOL-v1 our485/eval15, LOL-v2 Train/Test Low/Normal)")


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files skipped)."""
    return [p for p in _images(Path(folder)) if p.is_file()]


def has_pair_layout(root: str | Path) -> bool:
    """Whether ``root`` holds one of the paired layouts :func:`find_pairs` understands."""
    root = Path(root)
    return any((root / s / lo).is_dir() and (root / s / hi).is_dir() for s in SPLITS for lo, hi in PAIR_DIRS)


def find_items(root: str | Path, limit: int | None = None) -> list[tuple[Path, Path | None]]:
    """``(input, ground truth or None)`` for an image, a folder of pairs, or a plain folder of images.

    Used by parity, which also runs on unpaired night frames. ``limit`` keeps the first N (sorted by
    name, so the choice is reproducible).
    """
    root = Path(root)
    if root.is_file():
        items: list[tuple[Path, Path | None]] = [(root, None)]
    elif not root.is_dir():
        raise DFNError(f"{root}: no such file or folder")
    elif has_pair_layout(root):
        items = list(find_pairs(root))
    else:
        items = [(p, None) for p in list_images(root)]
    if not items:
        raise DFNError(f"{root}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return items[:limit] if limit else items
