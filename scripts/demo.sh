#!/usr/bin/env bash
# Set up, then run the gateway on the embedded default with the sample policy
# data, a SIPp callee standing in for the carrier core, and a few demo calls.
# Ctrl-C stops everything (the embedded redis-server included).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CAG_STATE_DIR="${CAG_STATE_DIR:-$PWD/.state}"
mkdir -p "$CAG_STATE_DIR/demo"

# The carrier core (next hop): SIPp answering every call, and OPTIONS probes.
sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -aa -nostdin \
     -default_behaviors all,-abortunexp >/dev/null 2>&1 &
UAS=$!
trap 'kill $UAS 2>/dev/null || true; kill $GW 2>/dev/null || true; wait 2>/dev/null' EXIT INT TERM

.venv/bin/cag serve --demo --listen udp:127.0.0.1:5060 --listen tcp:127.0.0.1:5060 \
    --next-hop udp:127.0.0.1:5080 --metrics 127.0.0.1:9090 "$@" &
GW=$!
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
  .venv/bin/python - <<'PY' 2>/dev/null && break
import urllib.request; urllib.request.urlopen("http://127.0.0.1:9090/readyz", timeout=1)
PY
  sleep 0.2
done
.venv/bin/python scripts/demo_calls.py --gateway 127.0.0.1:5060 || true
cat <<'TXT'

The gateway keeps running: metrics on http://127.0.0.1:9090/metrics,
SIP on udp/tcp 127.0.0.1:5060 (next hop: the SIPp callee on 127.0.0.1:5080).
Ask why a call would be rejected:
  .venv/bin/cag explain --source 127.0.0.1 --caller 95500 --callee +8613800138002
Press Ctrl-C to stop.
TXT
wait $GW
