"""Settings precedence and validation, and the README table kept in step with the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import ESSENTIAL_KEYS, build_parser, config_table
from gateway.config import Settings, load_settings, parse_listen

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    s = load_settings()
    assert s.fail_mode == "closed"
    assert s.budget_ms == 50
    assert s.redis_url is None
    assert s.listen == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]


def test_precedence_flag_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('workers = 5\nfail_mode = "open"\nbudget_ms = 20\nnext_hop = ["udp:10.0.0.1:5060"]\n')
    monkeypatch.setenv("CAG_WORKERS", "3")
    monkeypatch.setenv("CAG_NEXT_HOP", "udp:1.2.3.4:5060, tcp:1.2.3.5:5060;weight=2")
    s = load_settings(cfg, workers=4)
    assert s.workers == 4  # flag
    assert s.next_hop == ["udp:1.2.3.4:5060", "tcp:1.2.3.5:5060;weight=2"]  # env
    assert s.fail_mode == "open" and s.budget_ms == 20  # file


def test_gateway_table_in_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nshadow = true\n"fail-mode" = "open"\n')
    s = load_settings(cfg)
    assert s.shadow and s.fail_mode == "open"


@pytest.mark.parametrize("bad", ["udp:host", "sctp:1.2.3.4:5060", "udp:1.2.3.4:99999", "1.2.3.4:5060"])
def test_bad_listen_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(bad)


def test_ipv6_listen() -> None:
    assert parse_listen("udp:[::1]:5060") == ("udp", "::1", 5060)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text("wrokers = 2\n")
    with pytest.raises(Exception, match="wrokers"):
        load_settings(cfg)


def test_serve_flags_are_the_spec_names() -> None:
    parser = build_parser()
    args = parser.parse_args([
        "serve", "--config", "x.toml", "--listen", "udp:127.0.0.1:5060", "--listen", "tcp:127.0.0.1:5060",
        "--next-hop", "udp:127.0.0.1:5080;weight=2", "--redis-url", "redis://127.0.0.1:6379/0",
        "--metrics", "127.0.0.1:9090", "--workers", "2", "--fail-mode", "open", "--budget-ms", "30",
        "--state-dir", "/tmp/s", "--shadow", "--demo",
    ])
    assert args.listen == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert args.shadow is True and args.demo is True and args.fail_mode == "open"


def test_every_setting_has_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_readme_configuration_table_matches_the_model() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config_table(ESSENTIAL_KEYS) in readme, (
        "regenerate the README table with `cag config-doc --essential --update README.md`"
    )


def test_configuration_doc_table_matches_the_model() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert config_table() in doc, "regenerate it with `cag config-doc --update docs/configuration.md`"
    for key in ESSENTIAL_KEYS:  # every README row is a real key
        assert f"| `{key}` /" in doc, key


def test_every_setting_is_a_serve_flag() -> None:
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {opt for action in serve._actions for opt in action.option_strings}
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in flags, name


def test_cag_bench_is_python_m_bench(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])  # the benchmarks' own help, not cag's
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "python -m bench" in out and "sweep" in out and "replay" in out


def test_tls_listen_and_keys(tmp_path: Path) -> None:
    assert parse_listen("tls:127.0.0.1:5061") == ("tls", "127.0.0.1", 5061)
    s = load_settings(
        listen=["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"],
        next_hop=["tls:10.0.0.9:5061"],
        tls_cert_file=str(tmp_path / "c.pem"),
        tls_key_file=str(tmp_path / "c.key"),
    )
    assert s.tls_cert_file == tmp_path / "c.pem" and s.tls_verify_hop and not s.tls_verify_client


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"listen": ["tls:127.0.0.1:5061"]}, "tls_cert_file"),
        ({"next_hop": ["tls:10.0.0.9:5061"]}, "tls: listen"),
        ({"tls_verify_client": True, "tls_cert_file": "c", "tls_key_file": "k"}, "tls_ca_file"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_settings(**kw)
