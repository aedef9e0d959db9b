"""Gateway configuration: one pydantic-settings model, three sources.

Precedence (highest first): command-line flags, ``CAG_*`` environment
variables, the TOML file given with ``--config``, then the defaults below.
Every key has a type, a default and a one-line description; the README's
configuration table is generated from this model (``cag config-doc``) and a
test checks that the two agree, so they cannot drift.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from policy.decision import ResponseMap
from policy.engine import EngineConfig
from policy.model import FrequencyCap, QuietHours
from policy.rules import RuleConfig

ENV_PREFIX = "CAG_"


def parse_listen(text: str) -> tuple[str, str, int]:
    """``udp:HOST:PORT`` / ``tcp:HOST:PORT`` / ``tls:HOST:PORT`` (IPv6 as ``[::1]``) → (transport, host, port)."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in ("udp", "tcp", "tls"):
        raise ValueError(f"listen address {text!r}: expected udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT")
    host, port = split_host_port(rest, text)
    return transport, host, port


def split_host_port(rest: str, original: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_s = tail.lstrip(":")
    else:
        host, _, port_s = rest.rpartition(":")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"{original!r}: bad port") from None
    if not host or not 0 <= port <= 65535:
        raise ValueError(f"{original!r}: expected HOST:PORT")
    return host, port


# Settings a running gateway takes on SIGHUP (the parent re-reads the TOML file,
# workers apply these from their next decision / next call on; calls in progress
# are not touched). Every other key (listen, workers, redis_url, state_dir,
# metrics, rr_secret, node, audit_*…) binds sockets, processes or identities
# at start: a change is logged and needs a restart.
RELOADABLE = frozenset(
    {
        "fail_mode", "budget_ms", "shadow", "log_level", "next_hop", "hop_timeout",
        "probe_interval", "region", "default_tz", "quiet_hours", "callee_daily_cap",
        "callee_total_daily_cap", "caller_per_second", "consent_reject_code",
        "time_reject_code", "unknown_source", "unconsented_threshold", "unconsented_window",
        "stir_shaken", "max_transactions", "max_pending", "overload_wait_ms", "drain_timeout",
    }
)


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the ``--config`` TOML file (path passed in by the CLI)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.data: dict[str, Any] = {}
        if path is not None:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
            # Accept both flat keys and a [gateway] table; dashes as in the flags.
            table = raw.get("gateway", raw)
            self.data = {k.replace("-", "_"): v for k, v in table.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        # Unknown keys are passed through so extra="forbid" names them: a typo in a
        # carrier's file must fail loudly, not fall back to a default.
        return dict(self.data)


class Settings(BaseSettings):
    """Every knob of ``cag serve`` (SPEC §9 names)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    listen: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"],
        description="SIP listen addresses, udp:HOST:PORT / tcp:HOST:PORT / tls:HOST:PORT (repeatable)",
    )
    next_hop: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["udp:127.0.0.1:5080"],
        description="next hops (carrier core), [udp:|tcp:|tls:]HOST:PORT[;weight=N] (repeatable)",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) for tls: listen addresses, also shown to TLS next hops; "
        "re-read on SIGHUP"
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file; re-read on SIGHUP")
    tls_ca_file: Path | None = Field(
        None, description="PEM CA bundle to verify TLS next hops (and clients with tls_verify_client); "
        "none = the system store"
    )
    tls_verify_client: bool = Field(
        False, description="TLS trunks must present a certificate that tls_ca_file verifies (else the handshake fails)"
    )
    tls_verify_hop: bool = Field(
        True, description="verify TLS next hops' certificates (chain and host name or IP)"
    )
    redis_url: str | None = Field(
        None, description="redis:// rediss:// unix:// URL or a Cluster node; none = embedded redis-server"
    )
    metrics: str = Field("127.0.0.1:9090", description="HOST:PORT for /metrics, /healthz, /readyz")
    workers: int = Field(2, ge=1, le=64, description="worker processes sharing the listen ports")
    steer: bool = Field(
        True,
        description="hand each UDP request to the worker owning its Call-ID (crc32 % workers), so one "
        "trunk address uses every worker instead of the one its address hashes to",
    )
    fail_mode: Literal["closed", "open"] = Field(
        "closed", description="when Redis is unreachable: closed = 503, open = admit on in-memory checks"
    )
    budget_ms: float = Field(50, gt=0, description="decision budget per INVITE before the fail mode applies")
    state_dir: Path = Field(Path(".state"), description="embedded Redis data, spool files, worker state")
    shadow: bool = Field(False, description="decide and record, but forward every call (rollout)")
    demo: bool = Field(False, description="load the shipped sample policy data before serving")
    region: str = Field("CN", description="default region for number normalisation (phonenumbers)")
    default_tz: str = Field("Asia/Shanghai", description="callee time zone when the number gives none")
    quiet_hours: str = Field("21:00-08:00", description="default quiet windows, callee local time")
    callee_daily_cap: int = Field(3, ge=0, description="calls per (callee, enterprise) per day; 0 = no limit")
    callee_total_daily_cap: int = Field(0, ge=0, description="calls per callee per day across enterprises; 0 = no limit")
    caller_per_second: int = Field(0, ge=0, description="calls per caller number per second; 0 = no limit")
    consent_reject_code: Literal[603, 608] = Field(608, description="status for consent/DNC/purpose rejections")
    time_reject_code: Literal[480, 603] = Field(603, description="status for quiet-hours and cap rejections")
    unknown_source: Literal["drop", "403"] = Field("drop", description="requests from unknown addresses")
    pike_density: int = Field(
        0, ge=0, description="requests per pike_interval from one address before it is blocked (Kamailio pike); 0 = off"
    )
    pike_interval: float = Field(2.0, gt=0, description="pike sampling window, seconds")
    pike_block: float = Field(60.0, gt=0, description="seconds a flooding address stays blocked after its last request")
    tcp_max_connections: int = Field(10_000, ge=1, description="accepted TCP connections per worker; more are closed at once")
    tcp_max_per_ip: int = Field(200, ge=1, description="accepted TCP connections per worker from one source address")
    tcp_message_timeout: float = Field(
        10.0, gt=0, description="seconds a TCP peer has to finish a message it started (slow-loris guard)"
    )
    tcp_idle_timeout: float = Field(300.0, gt=0, description="seconds without any bytes before a TCP connection is closed")
    hop_timeout: float = Field(1.0, gt=0, description="seconds without a response before failing over a next hop")
    probe_interval: float = Field(2.0, gt=0, description="seconds between OPTIONS probes of each next hop")
    rr_secret: str | None = Field(
        None, description="HMAC key for Record-Route tokens (same on every node); none = generated in state_dir"
    )
    unconsented_threshold: int = Field(100, ge=1, description="unconsented attempts per window that suspend an enterprise")
    unconsented_window: int = Field(3600, ge=1, description="window (s) for the automatic restriction")
    complaint_threshold: int = Field(
        10, ge=1, description="complaints per rolling 30 days over which an enterprise is suspended (R12); "
        "an enterprise's complaint_threshold column replaces it"
    )
    api: str | None = Field(
        None, description="HOST:PORT of the provisioning API started beside the workers (cag api); none = not started"
    )
    max_transactions: int = Field(100_000, ge=10, description="INVITE transactions per worker before 503 overload")
    max_pending: int = Field(
        2000, ge=1, description="decisions in flight per worker before new INVITEs get 503 overload"
    )
    overload_wait_ms: float = Field(
        50.0, ge=0, description="a worker sheds new INVITEs (503 overload) while datagrams wait longer than this in its kernel queue (two ticks in a row); 0 = off"
    )
    drain_timeout: float = Field(
        5.0, gt=0, description="seconds SIGTERM waits for in-flight transactions before a worker exits"
    )
    stir_shaken: Literal["off", "require"] = Field("off", description="require an RFC 8224 Identity header")
    advertise_host: str | None = Field(
        None, description="host written into Record-Route/Via when listening on a wildcard address"
    )
    node: str | None = Field(None, description="node name in record ids and logs; none = host name")
    audit: bool = Field(True, description="record every decision and outcome in the audit trail (R8)")
    audit_spool_mb: int = Field(
        256, ge=1, description="per-worker local spool (MiB) used while Redis is unreachable or the stream is full"
    )
    audit_max_stream: int = Field(
        1_000_000, ge=1000, description="audit stream entries held in Redis before workers spool instead"
    )
    audit_archiver: Literal["auto", "on", "off"] = Field(
        "auto", description="run an archiver child: auto = only with the embedded Redis"
    )
    audit_dir: Path | None = Field(None, description="archive directory for the archiver child; none = state_dir/audit")
    audit_retention_days: int = Field(30, ge=30, description="days of archived audit partitions kept (R8: at least 30)")
    log_level: str = Field("info", description="debug, info, warning, error")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="log lines: json, text (for a person), auto = text when stderr is a terminal"
    )
    metrics_max_enterprises: int = Field(
        200, ge=0, description="enterprise ids given their own metrics label per worker; the rest count as 'other'"
    )
    log_reject_per_s: int = Field(
        100, ge=0, description="rejection log lines per second per worker; beyond, counted and summarised; 0 = all"
    )
    log_keep_digits: int = Field(
        -1, ge=-1, description="digits of caller/callee kept in log lines (the rest masked); -1 = whole numbers"
    )

    @field_validator("log_format")
    @classmethod
    def _export_log_format(cls, v: str) -> str:
        # gateway.logs.setup is called with the level only (supervisor, workers, archiver);
        # the format reaches it, and the processes forked from this one, through the environment.
        os.environ["CAG_LOG_FORMAT"] = v
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_listen(item)
        return v

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        tls_listen = any(item.startswith("tls:") for item in self.listen)
        if tls_listen and not (self.tls_cert_file and self.tls_key_file):
            raise ValueError("a tls: listen address needs tls_cert_file and tls_key_file")
        if self.tls_verify_client and not self.tls_ca_file:
            raise ValueError("tls_verify_client needs tls_ca_file (the CA that signs the trunks' certificates)")
        if any(h.strip().lower().startswith("tls:") for h in self.next_hop) and not tls_listen:
            # The callee's in-dialog requests come back over TLS to our Record-Route address.
            raise ValueError("a tls: next hop needs a tls: listen address")
        return self

    @field_validator("listen", "next_hop", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        # Environment variables give one string: comma- or space-separated.
        if isinstance(v, str):
            return [p for p in v.replace(",", " ").split() if p]
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str) -> str:
        split_host_port(v, v)
        return v

    def engine_config(self) -> EngineConfig:
        """The admission engine's configuration, so ``explain`` decides exactly as ``serve``."""
        rules = RuleConfig(
            region=self.region,
            default_tz=self.default_tz,
            default_quiet_hours=QuietHours.parse(self.quiet_hours),
            caps=FrequencyCap(
                callee_daily=self.callee_daily_cap,
                callee_total_daily=self.callee_total_daily_cap,
                caller_per_second=self.caller_per_second,
            ),
            stir_shaken=self.stir_shaken,
            responses=ResponseMap(
                consent_code=self.consent_reject_code,
                time_code=self.time_reject_code,
                unknown_source_code=403 if self.unknown_source == "403" else 0,
            ),
        )
        return EngineConfig(
            rules=rules,
            fail_mode=self.fail_mode,
            budget_ms=self.budget_ms,
            shadow=self.shadow,
            unconsented_threshold=self.unconsented_threshold,
            unconsented_window_s=self.unconsented_window,
        )

    @field_validator("api")
    @classmethod
    def _api(cls, v: str | None) -> str | None:
        if v:
            split_host_port(v, v)
        return v or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls, _CONFIG_PATH.get("path")))


_CONFIG_PATH: dict[str, Path | None] = {}


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings: flags (``overrides``, None values ignored) > env > TOML file > defaults."""
    _CONFIG_PATH["path"] = Path(config) if config else None
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_PATH.pop("path", None)


def resolve_redis_url(redis_url: str | None = None, state_dir: str | Path | None = None) -> str:
    """The Redis URL a command should use.

    Explicit flag, then ``CAG_REDIS_URL``; with neither, the embedded server's
    unix socket under the state directory (``--state-dir`` / ``CAG_STATE_DIR``
    / ``.state``), started if it does not answer yet — so ``cag policy load``
    works before ``cag serve`` ever ran (SPEC §8).
    """
    url = redis_url or os.environ.get(ENV_PREFIX + "REDIS_URL")
    if url:
        return url
    from gateway.embedded_redis import ensure_running

    sd = Path(state_dir or os.environ.get(ENV_PREFIX + "STATE_DIR") or ".state").resolve()
    return ensure_running(sd)
