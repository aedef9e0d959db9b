"""The mypyc build: fresh when present, compiled where a compiler is, and the pure path still green.

``scripts/test.sh`` runs the suite on the compiled build (set-up builds it
whenever ``cc`` and the Python headers are there); these tests make sure that
is what actually ran, that an edited source can never run as its old ``.so``,
and that the same SIP and rules tests pass on the ``.py`` files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from gateway import native

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve()


def _can_compile() -> bool:
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which("cc") is not None and headers.exists()


def test_the_build_list_names_real_modules() -> None:
    files = native.source_files()
    names = {native.module_name(p) for p in files}
    assert {"gateway.sip.parser", "policy.rules", "policy.rules.caps"} <= names
    assert all(p.suffix == ".py" for p in files)
    # The top-level packages install the guard: they must never be compiled themselves.
    assert not names & {"gateway", "policy", "bench"}


@pytest.mark.skipif(native.pure_forced(), reason="CAG_PURE set: the pure build is what runs")
def test_compiled_build_is_present_fresh_and_loaded() -> None:
    """Where a compiler is, set-up built it; whatever built it, it must match the sources."""
    if not native.artefacts():
        if _can_compile():
            pytest.fail("a C compiler is here but there is no mypyc build: run ./scripts/setup.sh")
        pytest.skip("no C compiler: pure Python")
    reasons = native.stale_reasons()
    assert not reasons, f"stale mypyc build (./scripts/setup.sh rebuilds): {reasons}"
    loaded = native.compiled_modules()
    assert all(loaded.values()), f"not loaded compiled: {[m for m, c in loaded.items() if not c]}"
    # mypyc derives a compiled package's __path__ from where the shared library is: a wrong
    # one only shows when a submodule outside the build is imported later.
    for name in loaded:
        mod = sys.modules[name]
        if hasattr(mod, "__path__"):
            assert list(mod.__path__) == [str(ROOT.joinpath(*name.split(".")))], name


def test_stamp_mismatch_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = native.source_files()
    digests = {native.module_name(p): native._digest(p) for p in files}
    digests["gateway.sip.via"] = "0" * 64
    stamp = tmp_path / "stamp.json"
    stamp.write_text(json.dumps({"ext_suffix": native.EXT_SUFFIX, "modules": digests}))
    monkeypatch.setattr(native, "STAMP", stamp)
    assert "gateway.sip.via: source changed since the build" in native.stale_reasons()
    monkeypatch.setattr(native, "STAMP", tmp_path / "absent.json")
    assert native.stale_reasons()[0].startswith("no build stamp")


def test_guard_sends_every_listed_module_to_its_source_when_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    monkeypatch.setattr(native, "artefacts", lambda: [Path("x.so")])
    monkeypatch.setattr(native, "stale_reasons", lambda: ["gateway.sip.via: source changed since the build"])
    finder = native._PureFinder()
    spec = finder.find_spec("gateway.sip.parser", None)
    assert spec is not None and spec.origin == str(ROOT / "gateway" / "sip" / "parser.py")
    assert finder.find_spec("gateway.worker", None) is None  # not listed: left to the normal finders
    pkg = finder.find_spec("policy.rules", None)  # a compiled package __init__ falls back as a package
    assert pkg is not None and pkg.submodule_search_locations == [str(ROOT / "policy" / "rules")]
    assert finder.reasons == ["gateway.sip.via: source changed since the build"]


def test_guard_leaves_a_fresh_build_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    monkeypatch.setattr(native, "artefacts", lambda: [Path("x.so")])
    monkeypatch.setattr(native, "stale_reasons", list)
    assert native._PureFinder().find_spec("gateway.sip.parser", None) is None


def _pure_suite() -> list[str]:
    """The SIP, number and rules unit tests, wherever the tests/ restructuring put them."""
    unit = ROOT / "tests" / "unit"
    found: set[Path] = set()
    for pattern in ("test_sip_*.py", "test_rules_*.py", "test_numbers.py"):
        found.update(unit.rglob(pattern))
    found.update(p for p in (unit / "sip").glob("test_*.py") if p != HERE)
    return sorted(str(p.relative_to(ROOT)) for p in found)


def test_pure_build_passes_the_sip_and_rules_tests() -> None:
    """The same tests, in a fresh interpreter with CAG_PURE=1, and nothing compiled loaded there."""
    files = _pure_suite()
    assert len(files) >= 10, files
    code = (
        "import sys, pytest\n"
        "from gateway import native\n"
        f"rc = pytest.main(['-q', '-x', '-p', 'no:cacheprovider', *{files!r}])\n"
        "loaded = native.compiled_modules()\n"
        "compiled = [m for m, c in loaded.items() if c]\n"
        "print('compiled modules loaded:', compiled)\n"
        "sys.exit(rc or (3 if compiled else 0))\n"
    )
    env = {**os.environ, native.PURE_ENV: "1"}
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    tail = (run.stdout + run.stderr)[-3000:]
    assert run.returncode == 0, tail
    assert "compiled modules loaded: []" in run.stdout, tail
    assert " passed" in run.stdout, tail


def test_an_extension_left_by_an_older_build_list_is_stale_and_bypassed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Taking a module out of SOURCES must not leave its old .so loading behind the guard's back."""
    monkeypatch.delenv(native.PURE_ENV, raising=False)
    orphan = ROOT / "policy" / f"model{native.EXT_SUFFIX}"
    real = native.artefacts()
    monkeypatch.setattr(native, "artefacts", lambda: [*real, orphan])
    assert f"policy/model{native.EXT_SUFFIX}: not part of this build" in native.stale_reasons()
    finder = native._PureFinder()
    spec = finder.find_spec("policy.model", None)
    assert spec is not None and spec.origin == str(ROOT / "policy" / "model.py")
