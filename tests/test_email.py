"""Receiver ``email``: mails received by a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import Bus, ev, wait_for

from bus.config import load
from bus.event import new_event
from bus.exceptions import ConfigError
from receivers.email import Digest, Email, render

USER, PASSWORD = "busd", "s3cret pass"


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mail:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    authenticated: bool

    @property
    def body(self) -> str:
        return str(self.message.get_content()).replace("\r\n", "\n")  # as sent on the wire


class SmtpServer:
    """aiosmtpd in a thread on 127.0.0.1, keeping every message and the AUTH mechanisms used."""

    def __init__(self, port: int | None = None, *, starttls: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None, auth: bool = False, exclude: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.mails: list[Mail] = []
        self.mechanisms: list[str] = []
        self.lock = threading.Lock()
        kwargs: dict[str, Any] = {}
        if starttls is not None:
            kwargs.update(tls_context=starttls, require_starttls=True)
        if auth:
            kwargs.update(authenticator=self.authenticate, auth_required=True, auth_exclude_mechanism=list(exclude))
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, ssl_context=implicit_tls,
                                     server_hostname="localhost", **kwargs)

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (USER.encode(), PASSWORD.encode())
        if ok:
            self.mechanisms.append(mechanism)
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message, session.ssl is not None,
                                   bool(session.authenticated)))
        return "250 OK"

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    base = tmp_path_factory.mktemp("tls")
    crt, key = base / "cert.pem", base / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return crt, key


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """The server side's TLS context."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


def email_plugin(**options: Any) -> Email:
    """An Email receiver built directly, as busd would configure it."""
    table = {"type": "receiver", "builtin": "email", "to": ["ops@example.com"], **options}
    return Email({"BUS_PLUGIN": "mail", "BUS_HOSTNAME": "node1", "BUS_PLUGIN_CONFIG": json.dumps(table)})


def io_error(dev: str = "sdb", **kw: Any) -> dict[str, Any]:
    return new_event("block", "BLK_IO_ERROR", f"I/O error, dev {dev}", severity="error", kind="synthetic",
                     dev_name=dev, hostname="node1", **kw)


# -- units -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("to = []", "plugins.m.to: must list at least one address"),
    ("to = ['nobody']", "plugins.m.to: 'nobody' is not an e-mail address"),
    ("to = ['a@b']\nsubject = '{severity} {x}'", "plugins.m.subject: unknown field 'x'"),
    ("to = ['a@b']\nbody = '{msg'", "plugins.m.body: bad template"),
    ("to = ['a@b']\nsubject = \"{msg}\\n{msg}\"", "plugins.m.subject: must render to one line"),
    ("to = ['a@b']\nssl = true\nstarttls = true", "plugins.m.starttls: not with ssl"),
    ("to = ['a@b']\nusername = 'u'\npassword = 'p'\npassword_file = 'f'", "plugins.m.password_file: give either"),
    ("to = ['a@b']\npassword = 'p'", "plugins.m.username: is required with a password"),
    ("to = ['a@b']\ndigest_window = -1", "plugins.m.digest_window: must not be negative"),
    ("port = 25", "plugins.m.to: is required"),
])
def test_bad_options(tmp_path: Path, text: str, message: str) -> None:
    """Bad options, templates included, are refused when the configuration is loaded."""
    conf = tmp_path / "busd.toml"
    conf.write_text(f"[plugins.m]\ntype = 'receiver'\nbuiltin = 'email'\n{text}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(conf)


def test_templates() -> None:
    """Templates see the event's keys, extensions (a missing one is empty), time and the readable line."""
    event = io_error(extensions={"sector": 42}, timestamp=0.5)
    assert render("{severity} {event_type} on {hostname} {dev_name}", event) == "error BLK_IO_ERROR on node1 sdb"
    assert render("{extensions[sector]}/{extensions[none]}/{time}", event) == "42//1970-01-01T00:00:00.500+00:00"
    assert "block/BLK_IO_ERROR sdb I/O error, dev sdb" in render("{line}", event)
    assert render("{extensions_text}", event) == "sector: 42\n"


def test_digest_counts_are_bounded() -> None:
    """A digest counts per (event type, device), lists the first N, and counts flood summaries fully."""
    digest = Digest(max_listed=3)
    for i in range(1500):
        digest.add(io_error(f"d{i}"))
    digest.add(io_error("d0", extensions={"flood_summary": True, "flood_count": 99}))
    assert digest.total == 1599 and len(digest.listed) == 3 and digest.counts[("BLK_IO_ERROR", "d0")] == 100
    assert len(digest.counts) == 1001 and digest.counts[("(other types and devices)", "")] == 500
    assert digest.subject().startswith("[busd] digest: 1599 events on node1 (500 (other types and devices)")
    assert "      100  BLK_IO_ERROR" in digest.body(60)


def test_auth_login_and_wrong_password(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    """AUTH LOGIN (PLAIN not offered) after STARTTLS; a wrong password is an SMTP error, nothing sent."""
    with SmtpServer(starttls=server_context(cert), auth=True, exclude=("PLAIN",)) as server:
        options = {"host": "127.0.0.1", "port": server.port, "starttls": True, "cafile": str(cert[0]),
                   "username": USER}
        plugin = email_plugin(**options, password=PASSWORD)
        done: list[bool] = []
        plugin.smtp_send([plugin.event_message(io_error())], 5, done)
        assert done == [True] and server.mechanisms == ["LOGIN"]
        (mail,) = server.mails
        assert mail.tls and mail.authenticated and mail.rcpt_tos == ["ops@example.com"]
        wrong = email_plugin(**options, password="wrong")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            wrong.smtp_send([wrong.event_message(io_error())], 5, [])
        assert len(server.mails) == 1


def test_implicit_tls(cert: tuple[Path, Path]) -> None:
    """ssl = true speaks TLS from the first byte, verifying the server against cafile."""
    with SmtpServer(implicit_tls=server_context(cert)) as server:
        plugin = email_plugin(host="127.0.0.1", port=server.port, ssl=True, cafile=str(cert[0]))
        plugin.smtp_send([plugin.event_message(io_error())], 5, [])
        assert len(server.mails) == 1
        untrusted = email_plugin(host="127.0.0.1", port=server.port, ssl=True)
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.smtp_send([untrusted.event_message(io_error())], 5, [])


# -- through a real busd -------------------------------------------------------------------------------


def _mail_bus(bus: Bus, port: int, **options: Any) -> None:
    table = {"type": "receiver", "builtin": "email", "host": "127.0.0.1", "port": port,
             "to": ["ops@example.com", "storage@example.com"], "from": "busd@node1.example.com", **options}
    bus.write({"mail": table})
    bus.start()
    bus.wait_running("mail")


@pytest.fixture(name="smtp")
def fixture_smtp() -> Iterator[SmtpServer]:
    """A plain SMTP server."""
    with SmtpServer() as server:
        yield server


def test_one_mail_per_event(bus: Bus, smtp: SmtpServer) -> None:
    """digest_window = 0: each event is one mail with the templated subject and the event in its body."""
    _mail_bus(bus, smtp.port, digest_window=0)
    bus.emit([
        ev("scsi", "SCSI_MEDIUM_ERROR", "medium error, sector 1234", severity="error", dev_name="sdb",
           dev_wwid="naa.5000c500a1b2c3d4", kind="synthetic", event_id="11111111-2222-4333-8444-555555555555",
           extensions={"sector": 1234, "sense": "03/11/00"}),
        ev("drbd", "DRBD_PEER_DISCONNECTED", "peer node2 disconnected", severity="warn", dev_name="r0",
           kind="synthetic"),
    ])
    wait_for(lambda: len(smtp.mails) >= 2, what="2 mails")
    first, second = smtp.mails  # one stream (synthetic): in order
    assert first.mail_from == "busd@node1.example.com"
    assert first.rcpt_tos == ["ops@example.com", "storage@example.com"]
    assert first.message["To"] == "ops@example.com, storage@example.com"
    assert first.message["Subject"] == "[busd] error SCSI_MEDIUM_ERROR on testhost sdb"
    assert first.message["X-Busd-Event-Id"] == "11111111-2222-4333-8444-555555555555"
    body = first.body
    assert body.startswith("medium error, sector 1234\n")
    for text in ("device:     sdb naa.5000c500a1b2c3d4", "event:      scsi/SCSI_MEDIUM_ERROR", "sector: 1234",
                 "sense: 03/11/00", "event id:   11111111-2222-4333-8444-555555555555", "source:     bus-emit"):
        assert text in body
    assert second.message["Subject"] == "[busd] warn DRBD_PEER_DISCONNECTED on testhost r0"
    assert len(smtp.mails) == 2
    wait_for(lambda: bus.plugin("mail").get("counters", {}).get("emails_sent") == 2, what="emails_sent=2")


def test_flood_is_one_mail_and_one_digest(bus: Bus, smtp: SmtpServer) -> None:
    """10 000 I/O errors on two disks: the first is mailed at once, the rest in ONE digest with exact counts."""
    _mail_bus(bus, smtp.port, digest_window=5, max_events_listed=5)
    devs = ["sdb" if i % 5 < 3 else "sdc" for i in range(10_000)]
    bus.emit([ev("block", "BLK_IO_ERROR", f"I/O error, dev {d}, sector {i}", severity="error", dev_name=d,
                 kind="synthetic") for i, d in enumerate(devs)])
    wait_for(lambda: len(smtp.mails) >= 1, what="the first mail")
    assert smtp.mails[0].message["Subject"] == "[busd] error BLK_IO_ERROR on testhost sdb"
    assert smtp.mails[0].body.startswith("I/O error, dev sdb, sector 0\n")
    wait_for(lambda: len(smtp.mails) >= 2, timeout=20, what="the digest")
    wait_for(lambda: bus.plugin("mail")["events_out"] == 10_000, what="10 000 events handled in busctl status")
    digest = smtp.mails[1]
    assert digest.message["Subject"] == "[busd] digest: 9999 events on testhost (5999 BLK_IO_ERROR sdb, 4000 BLK_IO_ERROR sdc)"
    body = digest.body
    assert re.search(r"^\s+5999  BLK_IO_ERROR  sdb$", body, re.M) and re.search(r"^\s+4000  BLK_IO_ERROR  sdc$", body, re.M)
    assert "The first 5 of them:" in body and "sector 1 [bus-emit]" in body and "sector 6 " not in body
    assert "highest severity error (digest of 5 s)" in body
    assert len(smtp.mails) == 2


def test_smtp_down_then_up(bus: Bus) -> None:
    """No server at first: a clear error, counted, retried; once it listens, the mail arrives."""
    port = free_port()
    _mail_bus(bus, port, digest_window=0, retry_max=0.3)
    bus.emit([ev("md", "MD_DISK_FAILURE", "disk failure on sdd", severity="error", dev_name="md0", kind="synthetic")])
    errors = wait_for(lambda: [r for r in bus.log_records() if r.get("event") == "smtp_unavailable"],
                      what="smtp_unavailable in the log")
    assert errors[0]["level"] == "error" and errors[0]["error"].startswith(f"127.0.0.1:{port}: ")
    assert errors[0]["plugin"] == "mail"
    wait_for(lambda: bus.plugin("mail").get("counters", {}).get("smtp_errors", 0) >= 1, what="smtp_errors counted")
    with SmtpServer(port) as server:
        wait_for(lambda: server.mails, what="the mail after the server came up")
        assert server.mails[0].message["Subject"] == "[busd] error MD_DISK_FAILURE on testhost md0"
        wait_for(lambda: any(r.get("event") == "smtp_recovered" for r in bus.log_records()), what="smtp_recovered")
        assert len(server.mails) == 1


def test_starttls_and_auth_with_password_file(bus: Bus, cert: tuple[Path, Path]) -> None:
    """STARTTLS verified against a self-signed CA, AUTH with a password read from a file next to the config."""
    (bus.base / "smtp.pw").write_text(PASSWORD + "\n")
    with SmtpServer(starttls=server_context(cert), auth=True) as server:
        _mail_bus(bus, server.port, digest_window=0, starttls=True, cafile=str(cert[0]), username=USER,
                  password_file="smtp.pw")
        bus.emit([ev("lvm", "LVM_THIN_POOL_FULL", "pool vg/pool 95% full", severity="warn", dev_name="vg/pool",
                     kind="synthetic")])
        wait_for(lambda: server.mails, what="the mail over STARTTLS")
        (mail,) = server.mails
        assert mail.tls and mail.authenticated and server.mechanisms == ["PLAIN"]
        assert mail.message["Subject"] == "[busd] warn LVM_THIN_POOL_FULL on testhost vg/pool"


def test_digest_is_sent_at_shutdown(bus: Bus, smtp: SmtpServer) -> None:
    """Events collected in a window still open when the receiver stops are mailed, not lost."""
    _mail_bus(bus, smtp.port, digest_window=600)
    bus.emit([ev("block", "BLK_IO_ERROR", f"I/O error {i}", severity="error", dev_name="sdb", kind="synthetic")
              for i in range(3)])
    wait_for(lambda: smtp.mails and bus.plugin("mail")["events_out"] == 3, what="the first mail, 3 events handled")
    assert len(smtp.mails) == 1
    rc, _ = bus.stop()
    assert rc == 0
    wait_for(lambda: len(smtp.mails) == 2, what="the digest mailed at shutdown")
    assert smtp.mails[1].message["Subject"] == "[busd] digest: 2 events on testhost (2 BLK_IO_ERROR sdb)"
