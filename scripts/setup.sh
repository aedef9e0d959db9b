#!/usr/bin/env bash
# One-time (idempotent) set-up: Debian packages if missing, then .venv with the project.
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
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
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
