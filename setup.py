"""Build hook: compile the typed engine (``hosts/``) with mypyc when a C compiler is present.

Everything else is in pyproject.toml. The pure-Python modules stay beside the compiled ones;
they are what runs when there is no compiler, when ``HVSIM_COMPILE=0`` at install time, when
``HVSIM_PURE=1`` at run time, or when a source has changed since the build (``hosts/__init__``
compares the sources with the manifest written here and falls back, with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import shutil
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
MANIFEST = "hosts/_compiled.json"  # what was compiled, with each source's digest

#: not compiled: package markers, the exception classes (a native class cannot derive from a
#: built-in exception), modules whose classes are pydantic models (pydantic builds them at
#: import: every ``*params.py``), the trace-driven workload (its parameters are in it), and
#: modules that would only lengthen the build: the host operations' request records, guest
#: memory (numpy does its work) and the vCPU record codec (once per vCPU move between processes)
INTERPRETED = {"hosts/errors.py", "hosts/tracewl.py", "hosts/hostops.py", "hosts/memory.py", "hosts/codec.py"}


MYPYC_CONFIG = """\
[mypy]
python_version = 3.11
plugins = pydantic.mypy
ignore_missing_imports = True
"""


def compiled_modules() -> list[str]:
    out = []
    for p in sorted((HERE / "hosts").rglob("*.py")):
        rel = p.relative_to(HERE).as_posix()
        if rel in INTERPRETED or p.name == "__init__.py" or p.name.endswith("params.py"):
            continue
        out.append(rel)
    return out


def source_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def have_compiler() -> bool:
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsExecError, DistutilsPlatformError
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "probe.c"
        src.write_text("int main(void) { return 0; }\n")
        try:
            cc.compile([str(src)], output_dir=d)
        except (CCompilerError, DistutilsExecError, DistutilsPlatformError, OSError):
            return False
    return True


class BuildWithManifest(build_ext):
    """build_ext, then the manifest beside the compiled modules (in place for ``pip install -e``)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:  # the engine's one big C file and the module shims compile side by side
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        root = HERE if self.inplace else Path(self.build_lib)
        keep = {m[: -len(".py")] for m in compiled_modules()}
        for lib in (root / "hosts").rglob("*"):  # modules an older build compiled and this one does not
            if lib.suffix in (".so", ".pyd") and "__mypyc" not in lib.name and lib.with_name(lib.name.split(".")[0]).relative_to(root).as_posix() not in keep:
                lib.unlink()
        doc = {"compiler": "mypyc", "modules": {m: source_digest(HERE / m) for m in compiled_modules()}}
        dest = root / MANIFEST
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def ext_modules() -> list[Any]:
    if os.environ.get("HVSIM_COMPILE", "1") == "0":
        print("hvsim: HVSIM_COMPILE=0: the engine stays pure Python", file=sys.stderr)
        return []
    if not have_compiler():
        print("hvsim: no C compiler found: the engine stays pure Python (slower, same results)", file=sys.stderr)
        return []
    from mypyc.build import mypycify

    # opt_level 1: gcc -O1 takes a third of the time of -O3 on the engine's 20+ MB of C (the
    # build stays within the README's first-command budget), for the same speed within this
    # machine's noise (scripts/bench.py); one C file, not multi_file, since calls between
    # modules are most of the engine's and multi_file made it ~20% slower.
    # The build environment has mypy and pydantic (pyproject's build requirements) but not the
    # other dependencies: their types count as Any here, which compiles to the same code paths
    # as the interpreter takes. pyproject's [tool.mypy] (strict, for CI) is not used here.
    tmp = tempfile.mkdtemp(prefix="hvsim-mypyc-")
    try:
        cfg = Path(tmp) / "mypy.ini"
        cfg.write_text(MYPYC_CONFIG)
        # mypycify type-checks and writes the C sources now: the config is not needed after
        return mypycify(["--config-file", str(cfg), *compiled_modules()], opt_level="1", debug_level="0", group_name="hosts._native")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildWithManifest})
