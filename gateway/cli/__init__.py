"""``cag``: the one command carriers script against (SPEC §9).

Only argument plumbing lives here; each command's work is in the module
that owns it (``gateway.supervisor`` serves; ``gateway.cli.policy`` manages data
and explains decisions; ``gateway.cli.audit`` exports the audit trail).
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

from gateway.config import Settings, load_settings


def _serve_parser(sub: Any) -> None:
    """One flag per settings key (``--key-with-dashes``), generated so none can be missed."""
    p = sub.add_parser("serve", help="run the gateway", description="Run the admission gateway.")
    p.add_argument("--config", help="TOML configuration file (flags and CAG_* environment override it)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        origin = typing.get_origin(field.annotation)
        args = typing.get_args(field.annotation)
        # argparse %-formats help strings: a literal % (e.g. "crc32 % workers") must be doubled.
        helptext = (field.description or "").replace("%", "%%")
        if field.annotation is bool:
            # --shadow / --no-shadow: default None so an unset flag leaves env/TOML alone
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=helptext)
        elif origin is list or (args and typing.get_origin(args[0]) is list):
            p.add_argument(flag, dest=name, action="append", help=f"{helptext} (repeatable)")
        elif origin is typing.Literal:
            kind = type(args[0])
            p.add_argument(flag, dest=name, type=kind, choices=list(args), help=helptext)
        elif field.annotation in (int, float):
            p.add_argument(flag, dest=name, type=field.annotation, help=helptext)
        else:
            p.add_argument(flag, dest=name, help=helptext)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in Settings.model_fields}
    try:
        settings = load_settings(args.config, **overrides)
    except Exception as e:  # pydantic ValidationError, TOML errors, missing file
        print(f"cag serve: bad configuration: {e}", file=sys.stderr)
        return 2
    from gateway.supervisor import run

    return run(settings, reload=lambda: load_settings(args.config, **overrides))


# The SPEC §9 flags a carrier sets first: the README shows these, docs/configuration.md all.
ESSENTIAL_KEYS = (
    "listen", "next_hop", "redis_url", "metrics", "workers", "fail_mode", "budget_ms",
    "state_dir", "shadow", "demo", "api",
)


def _config_doc(args: argparse.Namespace) -> int:
    table = config_table(ESSENTIAL_KEYS if args.essential else None)
    if args.update:
        path = Path(args.update)
        text = path.read_text()
        lines = text.split("\n")
        start = lines.index("| key / flag | env | default | meaning |")
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines[start:end] = table.split("\n")
        path.write_text("\n".join(lines))
        return 0
    print(table)
    return 0


def config_table(keys: tuple[str, ...] | None = None) -> str:
    """The configuration table (all keys, or ``keys``), generated so docs and code cannot drift."""
    lines = ["| key / flag | env | default | meaning |", "|---|---|---|---|"]
    defaults = Settings.model_construct()
    for name, field in Settings.model_fields.items():
        if keys is not None and name not in keys:
            continue
        default = getattr(defaults, name, None)
        if isinstance(default, list):
            default = " ".join(default)
        flag = "--" + name.replace("_", "-")
        lines.append(f"| `{name}` / `{flag}` | `CAG_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    return _bench_argv(list(args.args))


def _bench_argv(argv: list[str]) -> int:
    """``cag bench ...`` = ``python -m bench ...`` (the sweep, replay and micro-benchmarks)."""
    try:
        from bench.__main__ import main as bench_main
    except ImportError as e:  # an install without the checkout's bench/ and its extras
        print(f"cag bench: the benchmarks are not installed here ({e}); run from a checkout", file=sys.stderr)
        return 2
    return bench_main(argv)


def version() -> str:
    """The installed distribution's version (the checkout's pyproject when run from source)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("cag")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled checkout
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cag", description="Outbound call admission gateway")
    parser.add_argument("--version", action="version", version=f"cag {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from gateway.cli.policy import register as register_policy

    register_policy(sub)
    from provisioning.cli import register as register_api  # cag api (SPEC §10)

    register_api(sub)
    from gateway.cli.audit import register as register_audit

    register_audit(sub)
    bench = sub.add_parser(
        "bench", add_help=False, help="the benchmarks: same as python -m bench (sweep, replay, gen-pcap, ...)"
    )
    bench.add_argument("args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)
    doc = sub.add_parser("config-doc", help="print the configuration table (Markdown)")
    doc.add_argument("--essential", action="store_true",
                     help="only the keys a carrier sets first (the README's table)")
    doc.add_argument("--update", metavar="FILE", help="replace the table in FILE (README.md) in place")
    doc.set_defaults(func=_config_doc)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every argument after it is the benchmarks' own, --help included
        return _bench_argv(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
