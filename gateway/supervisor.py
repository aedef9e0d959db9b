"""The parent process of ``cag serve``: sockets, workers, embedded Redis, metrics.

The parent binds every listening socket itself (one SO_REUSEPORT copy per
worker per address) and keeps them open, so a worker that dies loses no
port: its replacement is forked with the same socket and the kernel's flow
spreading does not change. The parent never touches SIP; it forks, waits,
restarts, serves /metrics /healthz /readyz, and on SIGTERM asks workers to
drain before it stops the embedded Redis it started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gateway.config import RELOADABLE, Settings, parse_listen, split_host_port
from gateway.embedded_redis import EmbeddedRedis
from gateway.tls import TlsContexts
from gateway.tls import wanted as tls_wanted

log = logging.getLogger("cag.supervisor")

RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
STOP_TIMEOUT_S = 5.0  # beyond the workers' drain_timeout (+ their 3 s audit flush) before SIGKILL


def setup_logging(level: str) -> None:
    """JSON lines on stderr (gateway.logs); the parent writes directly, it forks the workers."""
    from gateway import logs

    logs.setup(level, threaded=False)


def setup_multiproc_dir(state_dir: Path) -> Path:
    """Prometheus multiprocess files; must run before gateway.metrics is imported."""
    import shutil

    d = state_dir / "metrics"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d)
    return d


def rr_secret(settings: Settings, state_dir: Path) -> bytes:
    """The Record-Route HMAC key: configured (same on every node) or kept in the state dir."""
    if settings.rr_secret:
        return settings.rr_secret.encode()
    path = state_dir / "rr_secret"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip().encode()


def bind_sockets(settings: Settings) -> list[list[tuple[str, socket.socket]]]:
    """Per worker, one SO_REUSEPORT socket for each listen address."""
    from gateway.worker import set_rcvbuf

    per_worker: list[list[tuple[str, socket.socket]]] = []
    for _ in range(settings.workers):
        socks: list[tuple[str, socket.socket]] = []
        for item in settings.listen:
            transport, host, port = parse_listen(item)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM  # tcp, tls
            s = socket.socket(family, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if transport == "udp":
                set_rcvbuf(s)
            s.bind((host, port))
            if transport != "udp":
                s.listen(1024)
            s.setblocking(False)
            socks.append((transport, s))
        per_worker.append(socks)
    return per_worker


async def _prepare(url: str, settings: Settings) -> None:
    """Load the Redis Function (and the demo data) before any worker decides."""
    from policy.store import PolicyStore

    store = await PolicyStore.connect(url)
    try:
        await store.ensure_functions()
        if settings.demo:
            from policy.demo import load_demo

            await load_demo(store)
            log.info("demo policy data loaded")
    finally:
        await store.close()


class _Health:
    """What /healthz and /readyz read (SPEC §8)."""

    def __init__(self, url: str, workers: dict[int, int]) -> None:
        self.url = url
        self.workers = workers

    def healthy(self) -> tuple[bool, dict[str, object]]:
        return bool(self.workers), {"workers": len(self.workers)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        from gateway import metrics_export as metrics

        redis_ok = self._ping()
        loaded = metrics.sample_values("cag_refdata_loaded")
        hops = metrics.sample_values("cag_next_hop_up")
        detail: dict[str, object] = {
            "redis": redis_ok,
            "reference_data": bool(loaded) and min(loaded) >= 1,
            "next_hop_up": bool(hops) and max(hops) >= 1,
            "workers": len(self.workers),
        }
        return all(bool(v) for v in detail.values()), detail

    def _ping(self) -> bool:
        try:
            from policy.redis_client import sync_client  # redis+sentinel:// too

            client = sync_client(self.url, socket_timeout=0.3, socket_connect_timeout=0.3)
            try:
                if client.ping():
                    return True
            finally:
                client.close()
        except Exception:  # any failure to answer is "not ready", never an error page
            pass
        return False


def start_metrics_server(address: str, health: _Health) -> ThreadingHTTPServer:
    from gateway import metrics_export as metrics

    host, port = split_host_port(address, address)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body = metrics.render()
                self._reply(200, body, "text/plain; version=0.0.4")
            elif self.path.startswith("/healthz"):
                ok, detail = health.healthy()
                self._reply(200 if ok else 503, json.dumps({"ok": ok, **detail}).encode(), "application/json")
            elif self.path.startswith("/readyz"):
                ok, detail = health.ready()
                self._reply(200 if ok else 503, json.dumps({"ok": ok, **detail}).encode(), "application/json")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def reload_settings(
    current: Settings, load: Callable[[], Settings], state_dir: Path, pids: list[int]
) -> Settings:
    """SIGHUP: re-read the configuration, hand the reloadable part to the workers.

    A file that does not validate changes nothing (logged). Keys outside
    ``RELOADABLE`` keep their running value and are named in a warning. The
    workers read ``state_dir/settings-reload.json`` on their own SIGHUP; a
    worker forked later starts from the returned settings.
    """
    from gateway.worker import RELOAD_FILE

    try:
        fresh = load()
    except Exception as e:  # pydantic ValidationError, TOML errors, missing file
        log.error("SIGHUP: configuration not reloaded, the running one is kept: %s", e)
        return current
    changed = {k for k in Settings.model_fields if getattr(fresh, k) != getattr(current, k)}
    fixed = sorted(changed - RELOADABLE)
    if fixed:
        log.warning("SIGHUP: %s changed but only take effect on restart", ", ".join(fixed))
    applied = sorted(changed & RELOADABLE)
    new = current.model_copy(update={k: getattr(fresh, k) for k in applied})
    path = state_dir / RELOAD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: v for k, v in new.model_dump(mode="json").items() if k in RELOADABLE}))
    os.replace(tmp, path)
    logging.getLogger().setLevel(new.log_level.upper())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass
    log.info("SIGHUP: reloaded %s", ", ".join(applied) if applied else "(nothing changed)")
    return new



def _exit_with_parent(parent: int) -> None:
    """A worker gets SIGTERM when the supervisor dies, even by SIGKILL (Linux PR_SET_PDEATHSIG).

    Otherwise orphaned workers keep the listen port (SO_REUSEPORT) and take a
    share of the calls with nobody restarting them or serving /metrics.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop path still applies
        return
    if os.getppid() != parent:  # it died before the call above took effect
        os.kill(os.getpid(), signal.SIGTERM)

def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    setup_logging(settings.log_level)
    state_dir = Path(settings.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    setup_multiproc_dir(state_dir)
    from gateway.metrics_export import check_mode, mark_dead

    check_mode()

    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedRedis(state_dir)
        try:
            embedded.start()
        except Exception as e:
            log.error("cannot start the embedded redis-server: %s", e)
            return 1
        url = embedded.url
        log.info("embedded redis-server on %s", embedded.sock)
    try:
        asyncio.run(_prepare(url, settings))
    except Exception as e:
        log.error("cannot prepare Redis at startup: %s", e)
        if embedded:
            embedded.stop()
        return 1

    if tls_wanted(settings):
        try:  # here, once: a missing or broken certificate fails the start, not every worker
            TlsContexts(settings, live=False)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            log.error("cannot load the TLS certificate, key or CA file: %s", e)
            if embedded:
                embedded.stop()
            return 1

    try:
        sockets = bind_sockets(settings)
    except OSError as e:
        log.error("cannot bind listen addresses %s: %s", settings.listen, e)
        if embedded:
            embedded.stop()
        return 1

    from gateway.worker import WorkerSpec, run_worker

    secret = rr_secret(settings, state_dir)
    node = settings.node or socket.gethostname()
    workers: dict[int, int] = {}  # pid -> index
    health = _Health(url, workers)
    try:
        metrics_server = start_metrics_server(settings.metrics, health)
    except OSError as e:
        log.error("cannot bind metrics address %s: %s", settings.metrics, e)
        if embedded:
            embedded.stop()
        return 1

    stopping = False
    hup = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def _hup(signum: int, frame: object) -> None:
        nonlocal hup
        hup = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _hup)

    # Steering (gateway/proxy/steer.py): one datagram socketpair per worker, made
    # before any fork so only this process tree holds them; [0] is read by its
    # worker, [1] written by the others. The parent keeps them all open, so a
    # re-forked worker finds the requests queued for it while it was down.
    steer_pairs: list[tuple[socket.socket, socket.socket]] = []
    if settings.steer and settings.workers > 1:
        steer_pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(settings.workers)]

    def spawn(index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            _exit_with_parent(parent)
            for i, socks in enumerate(sockets):
                if i != index:
                    for _, s in socks:
                        s.close()
            spec = WorkerSpec(index, settings, url, secret, sockets[index], node, steer_pairs)
            code = 1
            try:
                code = run_worker(spec)
            finally:
                from gateway import logs

                logs.shutdown()  # the listener thread writes what is queued
                logging.shutdown()
                os._exit(code)
        workers[pid] = index

    for i in range(settings.workers):
        spawn(i)
    log.info(
        "serving listen=%s next_hop=%s workers=%d metrics=%s",
        settings.listen, settings.next_hop, settings.workers, settings.metrics,
    )

    archiver = None
    if settings.audit and (settings.audit_archiver == "on" or (settings.audit_archiver == "auto" and embedded)):
        from gateway.audit.service import ArchiverChild

        archive_dir = Path(settings.audit_dir) if settings.audit_dir else state_dir / "audit"
        archiver = ArchiverChild(
            url, archive_dir, f"{node}-archiver",
            retention_days=settings.audit_retention_days, log_level=settings.log_level,
        )
        archiver.start()
    api = None
    if settings.api:  # the provisioning API beside the workers (SPEC §10)
        from provisioning.service import ApiChild

        api = ApiChild(settings, url, state_dir)
        api.start()

    restarts: dict[int, int] = {}
    due: list[tuple[float, int]] = []
    while not stopping:
        if hup:
            hup = False
            if reload is not None:
                settings = reload_settings(settings, reload, state_dir, list(workers))
            else:
                log.warning("SIGHUP ignored: no configuration source to reload")
        if archiver is not None:
            archiver.poll()
        if api is not None:
            api.poll()
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid and pid in workers:
            index = workers.pop(pid)
            mark_dead(pid)
            n = restarts.get(index, 0)
            restarts[index] = n + 1
            delay = RESTART_BACKOFF_S[min(n, len(RESTART_BACKOFF_S) - 1)]
            log.error("worker %d (pid %d) exited with status %d; restarting in %.1fs", index, pid, status, delay)
            due.append((time.monotonic() + delay, index))
        now = time.monotonic()
        for item in [d for d in due if d[0] <= now]:
            due.remove(item)
            spawn(item[1])
        if not pid:
            time.sleep(0.05)

    log.info("stopping: draining %d workers", len(workers))
    for pid in list(workers):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + settings.drain_timeout + 3.0 + STOP_TIMEOUT_S
    while workers and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            workers.pop(pid, None)
        else:
            time.sleep(0.05)
    for pid in list(workers):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    metrics_server.shutdown()
    if api is not None:
        api.stop()
    if archiver is not None:  # after the workers: it archives what their drain flushed
        archiver.stop()
    if embedded:
        embedded.stop()
    log.info("stopped")
    return 0
