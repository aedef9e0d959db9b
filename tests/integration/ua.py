"""Real SIP user agents from Debian (baresip, linphonec), scripted on loopback for the interop tests.

No audio device: baresip plays a sine (``ausine``) and discards what it
hears (``aubridge``, an in-process bridge with nothing on the other side);
linphonec runs with ``soundcard`` ``null`` (the ``-D`` fake sound card is
not needed). No registration: each UA has one account with ``regint=0`` and
is called directly at ``sip:USER@127.0.0.1:PORT``.

baresip is driven through its ``ctrl_tcp`` module: JSON commands and events
framed as netstrings on a loopback TCP port (what its own test tools use),
so a test waits for ``CALL_ESTABLISHED`` / ``CALL_CLOSED`` instead of
scraping a console. Every process started here lives in its own session, is
bounded in time and killed at ``stop``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.peers import free_port

BARESIP = shutil.which("baresip")
LINPHONEC = shutil.which("linphonec")
MODULES = Path("/usr/lib/baresip/modules")


def _free_both(host: str = "127.0.0.1") -> int:
    """A port free for UDP and TCP on ``host``, and port + 1 for TCP (baresip's TLS listener)."""
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket() as s, socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                s.bind((host, port))
                t.bind((host, port + 1))
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


class UaError(RuntimeError):
    pass


@dataclass
class Baresip:
    """One baresip process with one account, scripted over ``ctrl_tcp``."""

    workdir: Path
    user: str
    answer: bool = True  # auto-answer incoming calls (answermode=auto)
    host: str = "127.0.0.1"  # any loopback address: a callee on 127.0.0.3 still connects from 127.0.0.1 over TCP
    port: int = 0  # 0: a free one
    ctrl_port: int = field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    proc: subprocess.Popen[bytes] | None = None
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    # PEM with certificate and key: baresip then serves TLS on port + 1 (``sip_certificate``),
    # and trusts the same file as CA (``sip_cafile``).
    tls_pem: Path | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = _free_both(self.host)
        self._sock: socket.socket | None = None
        self._responses: queue.Queue[dict[str, Any]] = queue.Queue()
        self._log: IO[bytes] | None = None
        self._token = 0

    @property
    def uri(self) -> str:
        return f"sip:{self.user}@{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "baresip.log"

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "poll_method poll",
            f"net_interface {self.host}",
            f"sip_listen {self.host}:{self.port}",
            f"module_path {MODULES}",
            "module g711.so",
            "module ausine.so",
            "module aubridge.so",
            "module_app account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "audio_source aubridge,src",
            "audio_player aubridge,sink",
            "audio_alert aubridge,sink",
            f"rtp_ports {20000 + (self.port % 20000)}-{20000 + (self.port % 20000) + 20}",
            "rtp_timeout 0",
            "sip_trans_def udp",
        ]
        if self.tls_pem is not None:
            lines += [f"sip_certificate {self.tls_pem}", f"sip_cafile {self.tls_pem}"]
        (self.workdir / "config").write_text("\n".join(lines) + "\n")
        mode = "auto" if self.answer else "manual"
        (self.workdir / "accounts").write_text(
            f"<sip:{self.user}@{self.host}>;regint=0;answermode={mode};audio_codecs=PCMU\n"
        )
        (self.workdir / "contacts").write_text("")

    def start(self, timeout: float = 10.0) -> Baresip:
        if BARESIP is None:
            raise UaError("baresip is not installed")
        self._write_config()
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(  # fixed argv
            [BARESIP, "-f", str(self.workdir), "-s", "-t", "120"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise UaError(f"baresip exited {self.proc.returncode}: {tail}")
            try:
                self._sock = socket.create_connection(("127.0.0.1", self.ctrl_port), 0.5)
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise UaError(f"baresip ctrl_tcp did not open: {self.log_tail()}")
        self._sock.settimeout(None)
        threading.Thread(target=self._reader, name=f"baresip-{self.user}", daemon=True).start()
        return self

    def _reader(self) -> None:
        sock = self._sock
        assert sock is not None
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                colon = buf.find(b":")
                if colon < 0 or not buf[:colon].isdigit():
                    break
                n = int(buf[:colon])
                if len(buf) < colon + 1 + n + 1:
                    break
                payload = buf[colon + 1 : colon + 1 + n]
                buf = buf[colon + 2 + n :]
                try:
                    msg = json.loads(payload)
                except ValueError:
                    continue
                if msg.get("event"):
                    self.events.put(msg)
                elif msg.get("response"):
                    self._responses.put(msg)

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """One ctrl_tcp command (a menu long command: dial, hangup, accept, hold, resume...)."""
        assert self._sock is not None
        self._token += 1
        body = json.dumps({"command": command, "params": params, "token": str(self._token)}).encode()
        self._sock.sendall(str(len(body)).encode() + b":" + body + b",")
        try:
            return self._responses.get(timeout=timeout)
        except queue.Empty:
            raise UaError(f"baresip did not answer {command!r}: {self.log_tail()}") from None

    def wait_event(self, type_: str, timeout: float = 8.0) -> dict[str, Any]:
        """The next event of this type (earlier ones of other types are kept in ``seen``)."""
        for ev in self.seen:
            if ev.get("type") == type_ and not ev.get("_used"):
                ev["_used"] = True
                return ev
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                types = [e.get("type") for e in self.seen]
                raise UaError(f"{self.user}: no {type_} within {timeout}s (saw {types}): {self.log_tail()}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if ev.get("type") == type_:
                ev["_used"] = True
                return ev

    def has_event(self, type_: str) -> bool:
        while True:
            try:
                self.seen.append(self.events.get_nowait())
            except queue.Empty:
                break
        return any(e.get("type") == type_ for e in self.seen)

    def trace(self) -> list[tuple[str, str, str, str]]:
        """The SIP trace (``-s``): (transport, from, to, first line) of every message sent or received."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [
            (m[1], m[2], m[3], m[4].strip())
            for m in re.finditer(r"(UDP|TCP|TLS) (\S+) -> (\S+)\r?\n([^\r\n]*)", text)
        ]

    def received(self, start: str, transport: str | None = None) -> list[str]:
        """First lines of the messages this UA received on its listen ports that start with ``start``
        (UDP/TCP on ``port``, TLS on ``port + 1``)."""
        here = (f":{self.port}", f":{self.port + 1}")
        return [
            line
            for t, _src, dst, line in self.trace()
            if dst.endswith(here) and line.startswith(start) and (transport is None or t == transport.upper())
        ]

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Linphonec:
    """linphonec (linphone-cli) as a caller, scripted on its stdin; state read from its console output.

    Headless set-up, each found necessary on Debian's 5.1: ``soundcard use
    files`` (no ALSA/PulseAudio device: wav files instead of a sound card),
    ``ipv6 disable`` (else the SDP offers the host's IPv6 address and an
    IPv4-only callee answers 488) and ``ports sip N`` at run time (the port
    in the configuration file is not listened on until it is set again). The
    SIP identity is ``[sip] contact``; HOME points into the work dir so the
    user's ~/.local/share/linphone is never touched. Used as caller only: as
    callee it would have to be told the address the gateway reaches it at.
    """

    workdir: Path
    user: str
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = _free_both(self.host)
        self._out: IO[bytes] | None = None

    @property
    def console_path(self) -> Path:
        return self.workdir / "console.txt"

    @property
    def log_path(self) -> Path:
        return self.workdir / "linphone.log"

    def start(self, timeout: float = 10.0) -> Linphonec:
        if LINPHONEC is None:
            raise UaError("linphonec is not installed")
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        rc = self.workdir / "linphonerc"
        rc.write_text(
            "[sip]\n"
            f"sip_port={self.port}\n"
            f"sip_tcp_port={self.port}\n"
            "sip_tls_port=-1\n"
            f"contact=sip:{self.user}@{self.host}\n"
            "default_proxy=-1\n"
            "inc_timeout=30\n"
            "[rtp]\n"
            f"audio_rtp_port={30000 + self.port % 20000}\n"
            "[video]\nenabled=0\ncapture=0\ndisplay=0\n"
            "[net]\nfirewall_policy=0\n"
        )
        self._out = open(self.console_path, "ab")  # closed in stop()
        env = dict(os.environ, HOME=str(home))
        self.proc = subprocess.Popen(  # fixed argv
            [LINPHONEC, "-c", str(rc), "-d", "6", "-l", str(self.log_path)],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.command("ipv6 disable")
        self.command("soundcard use files")
        self.command(f"ports sip {self.port}")
        self.wait_console(f"sip port = {self.port}", timeout, after=lambda: self.command("ports"))
        return self

    def command(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise UaError(f"linphonec exited {self.proc.returncode}: {self.console()}")
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_console(self, text: str, timeout: float = 8.0, after: Any = None) -> None:
        """Until ``text`` appears on the console (``after`` is called once per poll when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.console():
                return
            if after is not None:
                after()
            time.sleep(0.2)
        raise UaError(f"linphonec: no {text!r} within {timeout}s: {self.console()[-3000:]}")

    def call(self, uri: str) -> None:
        self.command(f"call {uri}")

    def wait_connected(self, timeout: float = 8.0) -> None:
        self.wait_console(" connected.", timeout)

    def wait_ended(self, timeout: float = 8.0) -> None:
        self.wait_console(" ended (", timeout)

    def sip_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.command("quit")
                self.proc.wait(3)
            except (UaError, OSError, subprocess.TimeoutExpired):
                pass
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self._out is not None:
            self._out.close()
            self._out = None
