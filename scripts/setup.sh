#!/usr/bin/env bash
# One-time (idempotent) set-up: Debian packages if missing, then .venv with the project,
# then the mypyc build of the sans-IO layers (gateway/native.py) unless CAG_PURE=1.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)  # bench: latency from a loopback capture
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # deploy/ checks: promtool, a real Prometheus in the tests
command -v baresip >/dev/null 2>&1 || need+=(baresip)  # interop: a real user agent (tests/integration/ua.py)
command -v linphonec >/dev/null 2>&1 || need+=(linphone-cli)  # interop: a second real user agent
# The mypyc build needs a C compiler and the headers of the Python the venv uses.
pure=0
case "${CAG_PURE:-}" in ""|0) ;; *) pure=1 ;; esac  # as gateway/native.py reads it
pyinc="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)"
if [ "$pure" = 0 ]; then
  command -v cc >/dev/null 2>&1 || need+=(build-essential)
  [ -f "$pyinc/Python.h" ] || need+=(python3-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  # Not fatal here: without a compiler the build below falls back to pure Python,
  # and a missing tool the tests need shows up there.
  { $SUDO apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
    || echo "setup: apt-get install ${need[*]} failed" >&2
fi

PY=""
for c in python3.11 python3.12 python3.13 python3; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PY="$c"; break
  fi
done
[ -n "$PY" ] || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import gateway, policy, uvloop, redis, hiredis, dpkt' \
  || { echo "setup: the virtual environment is incomplete" >&2; exit 1; }

# mypyc: compile the modules listed in gateway/native.py in place, when their sources
# changed since the last build (a SHA-256 stamp). Whatever happens, a stale build never
# runs: the import guard in gateway/native.py falls back to the .py files.
if [ "$pure" = 1 ]; then
  .venv/bin/python scripts/native.py clean >/dev/null
  echo "setup: CAG_PURE set - pure Python, mypyc build removed" >&2
elif .venv/bin/python scripts/native.py fresh; then
  :  # up to date
elif ! command -v cc >/dev/null 2>&1 || ! .venv/bin/python -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  .venv/bin/python scripts/native.py clean >/dev/null
  echo "setup: no C compiler or Python headers - pure Python" >&2
else
  echo "setup: compiling the sans-IO layers with mypyc (about a minute)" >&2
  mkdir -p build
  if ! .venv/bin/python scripts/native.py build >build/mypyc.log 2>&1; then
    .venv/bin/python scripts/native.py clean >/dev/null
    tail -20 build/mypyc.log >&2
    echo "setup: the mypyc build failed (build/mypyc.log) - pure Python" >&2
  fi
fi
