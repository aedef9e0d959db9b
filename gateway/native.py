"""The mypyc build of the sans-IO layers, and the guard that never lets a stale one run.

``scripts/native.py build`` compiles the modules of ``SOURCES`` with
mypyc, in place: each ``x.py`` gets an ``x.<abi>.so`` beside it (which
Python's import system prefers to the ``.py``), plus one shared library,
``cag_native__mypyc.<abi>.so`` at the project root, holding the code of them
all. It sits at the root because mypyc derives a compiled package's
``__path__`` from the library's directory; the editable install does not put
the root on ``sys.path``, so the guard's finder is what locates it. Then it
writes ``STAMP``: the SHA-256 of every compiled source as it was built.

Why a guard: compiled modules call each other's functions and classes
directly inside the shared library, so the build is one unit. An edited
``.py`` next to its old ``.so`` would silently run the old code, and a
half-rebuilt set would mix two versions of a class. So at the first import of
any listed module, ``install()``'s finder compares every source with the
stamp (a few hundred kB hashed, well under a millisecond) and, unless *all*
match and every ``.so`` is there, loads *every* listed module from its
``.py``. ``CAG_PURE=1`` forces the pure path the same way (and makes
``scripts/setup.sh`` remove the build). ``scripts/native.py status`` says which it is and why; ``tests/unit/sip/test_native.py`` fails when a
build is present but stale.

Adding a package to the build is one line in ``SOURCES``. The top-level
packages' ``__init__.py`` (``gateway``, ``policy``) are never compiled: they
install the guard, so they must load before it decides; a sub-package's
``__init__`` is (``policy.rules`` keeps its evaluation there).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
# Globs relative to ROOT. Left out, and why (docs/performance-mypyc.md):
# gateway/proxy is being restructured (add "gateway/proxy/*.py" when it lands).
SOURCES: tuple[str, ...] = (
    "gateway/sip/*.py",
    "gateway/proxy/*.py",
    "policy/decision.py",
    "policy/numbers.py",
    "policy/rules/*.py",
)
GROUP = "cag_native"  # the shared library: cag_native__mypyc.<abi>.so at ROOT
STAMP = ROOT / "gateway" / "native-build.json"
PURE_ENV = "CAG_PURE"
EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _top_level_init(path: Path) -> bool:
    return path.name == "__init__.py" and len(path.relative_to(ROOT).parts) == 2


def source_files() -> list[Path]:
    """The compiled sources, sorted; never a top-level ``__init__.py`` (see the module docstring)."""
    out: set[Path] = set()
    for pattern in SOURCES:
        out.update(p for p in ROOT.glob(pattern) if not _top_level_init(p))
    return sorted(out)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def extension_of(path: Path) -> Path:
    return path.with_name(path.stem + EXT_SUFFIX)


SHARED = f"{GROUP}__mypyc"  # its module name


def shared_library() -> Path:
    return ROOT / f"{SHARED}{EXT_SUFFIX}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pure_forced() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


PACKAGES: tuple[str, ...] = ("gateway", "policy", "bench")  # the project ships no other .so


def artefacts() -> list[Path]:
    """Every extension module in the project's packages: this build's, or one left by an older list."""
    found = {p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*" + EXT_SUFFIX)}
    if shared_library().exists():
        found.add(shared_library())
    return sorted(found)


def _source_of(ext: Path) -> Path:
    return ext.with_name(ext.name.removesuffix(EXT_SUFFIX) + ".py")


def stale_reasons() -> list[str]:
    """Why the compiled build must not run; empty when it is complete and matches every source."""
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return ["no build stamp (never built, build failed, or removed)"]
    built: dict[str, str] = stamp.get("modules", {})
    reasons: list[str] = []
    if stamp.get("ext_suffix") != EXT_SUFFIX:
        reasons.append(f"built for {stamp.get('ext_suffix')}, this Python loads {EXT_SUFFIX}")
    current = {module_name(p): p for p in source_files()}
    for name in sorted(set(built) | set(current)):
        path = current.get(name)
        if path is None:
            reasons.append(f"{name}: compiled but no longer listed or present")
        elif name not in built:
            reasons.append(f"{name}: listed but not in the build")
        elif _digest(path) != built[name]:
            reasons.append(f"{name}: source changed since the build")
        elif not extension_of(path).exists():
            reasons.append(f"{name}: {extension_of(path).name} missing")
    if not shared_library().exists():
        reasons.append(f"{shared_library().name} missing")
    expected = {extension_of(p) for p in current.values()} | {shared_library()}
    reasons += [f"{p.relative_to(ROOT)}: not part of this build" for p in artefacts() if p not in expected]
    return reasons


class _PureFinder:
    """Sends the listed modules to their ``.py`` when the build must not run (forced or stale).

    A ``sys.meta_path`` finder by protocol (``find_spec``), not by subclassing
    ``importlib.abc.MetaPathFinder``: importing that ABC costs ~40 ms at every start.
    """

    def __init__(self) -> None:
        self._pure: bool | None = None  # decided at the first listed import, then fixed
        self.reasons: list[str] = []
        self._names = {module_name(p): p for p in source_files()}
        # An extension module left from an older build list is redirected too (if its .py is there).
        for ext in artefacts():
            src = _source_of(ext)
            if src.exists() and not _top_level_init(src):
                self._names.setdefault(module_name(src), src)

    def use_pure(self) -> bool:
        if self._pure is None:
            if pure_forced():
                self.reasons = [f"{PURE_ENV} is set"]
            elif not artefacts():
                self.reasons = ["not built"]
            else:
                self.reasons = stale_reasons()
                if self.reasons:
                    print(
                        "cag: the mypyc build is stale, running pure Python "
                        f"(./scripts/setup.sh rebuilds): {self.reasons[0]}",
                        file=sys.stderr,
                    )
            self._pure = bool(self.reasons)
        return self._pure

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == SHARED:  # imported by the compiled modules only, so only when they run
            lib = shared_library()
            return importlib.util.spec_from_file_location(fullname, lib) if lib.exists() else None
        src = self._names.get(fullname)
        if src is None or not self.use_pure():
            return None  # the normal finders: the .so when there is one
        if src.name == "__init__.py":  # a package: its submodules are searched beside it
            return importlib.util.spec_from_file_location(
                fullname, src, submodule_search_locations=[str(src.parent)]
            )
        return importlib.util.spec_from_file_location(fullname, src)


_finder: _PureFinder | None = None


def install() -> None:
    """Put the guard first on ``sys.meta_path`` (idempotent); package ``__init__``s call this."""
    global _finder
    if _finder is None:
        _finder = _PureFinder()
        sys.meta_path.insert(0, _finder)


def compiled_modules() -> dict[str, bool]:
    """Listed module -> loaded from its extension module (imports them all)."""
    out: dict[str, bool] = {}
    for name in sorted(module_name(p) for p in source_files()):
        mod = importlib.import_module(name)
        out[name] = not (getattr(mod, "__file__", None) or "").endswith(".py")
    return out


# ---------------------------------------------------------------- build


def clean() -> list[Path]:
    """Remove the stamp first (so a half-removed build reads as stale), then the artefacts."""
    STAMP.unlink(missing_ok=True)
    gone = artefacts()
    for p in gone:
        p.unlink()
    return gone


def build(opt_level: str = "3") -> None:
    """Compile ``SOURCES`` in place, then stamp the sources as they were read."""
    from mypyc.build import mypycify  # dev dependency (mypy); only the build needs it
    from setuptools import Distribution

    clean()
    files = source_files()
    digests = {module_name(p): _digest(p) for p in files}
    prev = Path.cwd()
    os.chdir(ROOT)  # mypycify wants paths relative to the project root
    try:
        exts = mypycify(
            [str(p.relative_to(ROOT)) for p in files],
            opt_level=opt_level,
            group_name=GROUP,
            target_dir=str(ROOT / "build" / "mypyc"),
        )
        dist = Distribution({"name": "cag-native", "ext_modules": exts})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True  # type: ignore[attr-defined]
        cmd.build_temp = str(ROOT / "build" / "mypyc-temp")  # type: ignore[attr-defined]
        cmd.parallel = os.cpu_count() or 1  # type: ignore[attr-defined]
        dist.run_command("build_ext")
    finally:
        os.chdir(prev)
    if any(_digest(p) != digests[module_name(p)] for p in files):
        clean()
        raise SystemExit("native: a source changed during the build; run it again")
    STAMP.write_text(
        json.dumps({"ext_suffix": EXT_SUFFIX, "modules": digests}, indent=1, sort_keys=True) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cmd = args[0] if args else "status"
    if cmd == "build":
        build()
        print(f"native: compiled {len(source_files())} modules")
        return 0
    if cmd == "clean":
        print(f"native: removed {len(clean())} files")
        return 0
    if cmd == "fresh":  # exit 0 when a build exists and matches the sources (setup.sh)
        return 0 if artefacts() and not stale_reasons() else 1
    if cmd == "status":
        install()
        mods = compiled_modules()
        n = sum(mods.values())
        print(f"native: {n} of {len(mods)} listed modules compiled")
        for r in _finder.reasons if _finder is not None else ():
            print(f"  pure because: {r}")
        return 0
    print("usage: scripts/native.py [status|build|clean|fresh]", file=sys.stderr)
    return 2
