"""``cag``: the one command carriers script against (SPEC §9).

Only argument plumbing lives here; each command's work is in the module
that owns it (``gateway.supervisor`` serves, ``policy.cli`` manages data and
explains decisions).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.config import Settings, load_settings


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway", description="Run the admission gateway.")
    p.add_argument("--config", help="TOML configuration file (flags and CAG_* environment override it)")
    p.add_argument("--listen", action="append", help="udp:HOST:PORT or tcp:HOST:PORT (repeatable)")
    p.add_argument("--next-hop", action="append", dest="next_hop", help="[udp:|tcp:]HOST:PORT[;weight=N] (repeatable)")
    p.add_argument("--redis-url", dest="redis_url", help="Redis URL; none = embedded redis-server")
    p.add_argument("--metrics", help="HOST:PORT for /metrics, /healthz, /readyz")
    p.add_argument("--workers", type=int, help="worker processes")
    p.add_argument("--fail-mode", dest="fail_mode", choices=["closed", "open"])
    p.add_argument("--budget-ms", dest="budget_ms", type=float, help="decision budget (ms)")
    p.add_argument("--state-dir", dest="state_dir", help="state directory (embedded Redis, secrets)")
    p.add_argument("--shadow", action="store_const", const=True, help="decide and record, forward everything")
    p.add_argument("--demo", action="store_const", const=True, help="load the shipped sample policy data")
    p.add_argument("--hop-timeout", dest="hop_timeout", type=float, help="next-hop response timeout (s)")
    p.add_argument("--unknown-source", dest="unknown_source", choices=["drop", "403"])
    p.add_argument("--log-level", dest="log_level")
    p.set_defaults(func=_serve)


_SERVE_KEYS = (
    "listen", "next_hop", "redis_url", "metrics", "workers", "fail_mode", "budget_ms",
    "state_dir", "shadow", "demo", "hop_timeout", "unknown_source", "log_level",
)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, **{k: getattr(args, k) for k in _SERVE_KEYS})
    except Exception as e:  # pydantic ValidationError, TOML errors, missing file
        print(f"cag serve: bad configuration: {e}", file=sys.stderr)
        return 2
    from gateway.supervisor import run

    return run(settings)


def _config_doc(args: argparse.Namespace) -> int:
    print(config_table())
    return 0


def config_table() -> str:
    """The README's configuration table, generated so docs and code cannot drift."""
    lines = ["| key / flag | env | default | meaning |", "|---|---|---|---|"]
    defaults = Settings.model_construct()
    for name, field in Settings.model_fields.items():
        default = getattr(defaults, name, None)
        if isinstance(default, list):
            default = " ".join(default)
        flag = "--" + name.replace("_", "-")
        lines.append(f"| `{name}` / `{flag}` | `CAG_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cag", description="Outbound call admission gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from policy.cli import register as register_policy

    register_policy(sub)
    try:
        from policy.audit_cli import register as register_audit  # the audit issue adds it
    except ImportError:
        pass
    else:
        register_audit(sub)
    doc = sub.add_parser("config-doc", help="print the configuration table (Markdown)")
    doc.set_defaults(func=_config_doc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
