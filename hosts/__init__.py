"""hvsim's host engine: pCPUs, schedulers, guest memory, hypercalls (no Ray, no cluster code).

Compiled or pure. ``pip install`` compiles most modules here with mypyc when a C compiler is
present (see setup.py); the pure-Python sources stay beside them and give the same results.
The pure modules are used instead of the compiled ones when ``HVSIM_PURE=1`` is set, and when a
source has changed since the build (its digest differs from ``_compiled.json``), so an edit is
never shadowed by a stale build; the latter says so once on stderr. :data:`COMPILED` tells
which one this process runs.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
_MANIFEST = _HERE / "_compiled.json"
_EXT = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _source_of(lib: Path) -> str:
    """``hosts/x/y.py`` for ``.../hosts/x/y.cpython-311-x86_64-linux-gnu.so``."""
    return lib.with_name(lib.name.split(".")[0] + ".py").relative_to(_HERE.parent).as_posix()


def _stale() -> list[str]:
    """Compiled modules whose source changed since the build (or that lost their build)."""
    try:
        built: dict[str, str] = json.loads(_MANIFEST.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["(no readable _compiled.json)"]
    out = []
    for lib in _HERE.rglob("*"):  # a compiled module the last build did not make (left from an older one)
        if lib.name.endswith(_EXT) and "__mypyc" not in lib.name and _source_of(lib) not in built:
            out.append(_source_of(lib))
    for rel, digest in built.items():
        src = _HERE.parent / rel
        try:
            ok = hashlib.blake2b(src.read_bytes(), digest_size=16).hexdigest() == digest
        except OSError:
            ok = False
        if not ok:
            out.append(rel)
    return out


class _PureFinder(MetaPathFinder):
    """Finds ``hosts.*`` modules as their ``.py`` source even where a compiled one is beside it."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if not fullname.startswith(__name__ + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(_EXT):
            return spec
        origin = spec.origin
        for suffix in _EXT:
            if origin.endswith(suffix):
                origin = origin[: -len(suffix)] + ".py"
                break
        return importlib.util.spec_from_file_location(fullname, origin)


def _choose() -> bool:
    if not any(p.name.endswith(_EXT) for p in _HERE.glob("*")):
        return False  # nothing was compiled
    if os.environ.get("HVSIM_PURE", "") not in ("", "0"):
        sys.meta_path.insert(0, _PureFinder())
        return False
    stale = _stale()
    if stale:
        sys.meta_path.insert(0, _PureFinder())
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        print(
            f"hvsim: the compiled engine is older than its sources ({', '.join(stale[:3])}{more} changed); "
            "running the pure-Python engine (same results, slower). Rebuild with: pip install -e .",
            file=sys.stderr,
        )
        return False
    return True


#: True when this process runs the mypyc-compiled engine, False for the pure-Python one
COMPILED: bool = _choose()
