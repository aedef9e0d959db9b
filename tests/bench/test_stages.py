"""``python -m bench stages`` runs every stage and its JSON is what the docs table is read from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import stages

ROOT = Path(__file__).resolve().parents[2]


def test_stages_json_has_every_stage() -> None:
    # A fresh interpreter: the metrics stage needs prometheus-client's multiprocess mode,
    # chosen when prometheus_client is first imported.
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "stages", "--calls", "20", "--repeat", "1", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert set(out["stages"]) == set(stages.STAGES)
    assert all(v > 0 for v in out["stages"].values()), out
    assert abs(out["total"] - sum(out["stages"][k] for k in out["total_of"])) < 0.1
    assert out["build"].startswith(("compiled", "pure"))
