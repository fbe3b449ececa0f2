"""Receiver ``email``: mails events over SMTP, a flood folded into one digest per ``digest_window``.

Options: ``host``/``port`` (default ``localhost:25``), ``starttls`` (upgrade the connection) or
``ssl`` (implicit TLS, usually port 465), ``cafile`` (CA certificates that sign the server's, default
the system's), ``username`` with ``password`` or ``password_file`` (read at each connection, so a
rotated secret needs no restart), ``from`` (default ``busd@<hostname>``), ``to`` (a list, required),
``subject`` and ``body`` templates, ``digest_window``, ``max_events_listed``, ``timeout``,
``retry_max``, ``queue_size``.

Templates are ``str.format`` strings over the event's keys (``{severity}``, ``{event_type}``,
``{dev_name}``, ``{extensions[sector]}`` (empty when missing), ...) plus ``{time}`` (ISO 8601, UTC),
``{line}`` (the readable one-line form) and ``{extensions_text}`` (one ``key: value`` per line).
They are checked against a sample event when the configuration is loaded.

Digest: the first event of a quiet period is mailed at once (no delay: a lone failure is reported as
soon as possible) and opens a window of ``digest_window`` seconds. Further events in the window are
only collected; when it ends they go out as ONE mail with the count per (event type, device) and the
first ``max_events_listed`` events, and a new window opens, so a flood gives one mail per window,
whatever its size; a window that ends with nothing collected makes the period quiet again.
``digest_window = 0`` mails every event on its own (up to ``queue_size`` waiting; beyond that they
are folded into a digest rather than dropped).

When the server is down or refuses the login, the error is logged (``smtp_unavailable``, repeated
every minute while it lasts) and counted (``smtp_errors`` in ``busctl status``); mails wait and are
retried with backoff (1 s doubling up to ``retry_max``) while new events keep folding into the
digest, whose size is bounded (``max_events_listed`` events, 1000 type/device counters). A mail the
server refuses for good (5xx to a recipient, the sender or the data) is logged and counted
(``smtp_refused``), not retried. At shutdown what waits is sent if the server answers within 1 s,
otherwise logged as ``email_unsent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import smtplib
import ssl
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from bus.cli import format_line
from bus.config import Option
from bus.event import Event, new_event, severity_rank
from bus.plugin import Receiver, run
from receivers._retry import Outage

DEFAULT_SUBJECT = "[busd] {severity} {event_type} on {hostname} {dev_name}"
DEFAULT_BODY = """{msg}

time:       {time}
host:       {hostname}
severity:   {severity}
event:      {system}/{event_type}
device:     {dev_name} {dev_wwid}
source:     {source}
event id:   {event_id}
{extensions_text}"""

OPTIONS = {
    "host": Option(str, "localhost", "SMTP server"),
    "port": Option(int, 25, "SMTP port (465 with ssl, 587 usually with starttls)"),
    "starttls": Option(bool, False, "upgrade the connection with STARTTLS"),
    "ssl": Option(bool, False, "implicit TLS from the first byte"),
    "cafile": Option(str, "", "CA certificates to verify the server with (default: the system's)"),
    "username": Option(str, "", "log in with this user (needs password or password_file)"),
    "password": Option(str, "", "the password"),
    "password_file": Option(str, "", "file holding the password (relative to the configuration file)"),
    "from": Option(str, "", "sender address (default busd@<hostname>)"),
    "to": Option(list, Option.REQUIRED, "recipient addresses"),
    "subject": Option(str, DEFAULT_SUBJECT, "subject template (str.format over the event's keys)"),
    "body": Option(str, DEFAULT_BODY, "body template (str.format over the event's keys)"),
    "digest_window": Option(float, 60.0, "seconds after a mailed event in which further events make one digest "
                                         "(0: one mail per event)"),
    "max_events_listed": Option(int, 20, "events listed one by one in a digest"),
    "timeout": Option(float, 10.0, "SMTP connection and command timeout, seconds"),
    "retry_max": Option(float, 60.0, "longest delay between two attempts while the server is down, seconds"),
    "queue_size": Option(int, 1000, "single mails waiting (digest_window = 0); beyond, events join a digest"),
}

MAX_COUNTERS = 1000
"""Distinct (event type, device) pairs counted in one digest; the rest are counted as "other"."""

OTHER = ("(other types and devices)", "")


class _Extensions(dict[str, Any]):
    """Extensions in templates: a missing key renders empty instead of failing."""

    def __missing__(self, key: str) -> str:
        return ""


def template_fields(event: Event) -> dict[str, Any]:
    """Return what templates may use: the event's keys, ``time``, ``line`` and ``extensions_text``."""
    extensions = event.get("extensions") or {}
    return {
        **event,
        "extensions": _Extensions(extensions),
        "time": datetime.fromtimestamp(event.get("timestamp", 0.0), UTC).isoformat(timespec="milliseconds"),
        "line": format_line(event, color=False),
        "extensions_text": "".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}\n"
                                   for k, v in extensions.items()),
    }


def render(template: str, event: Event) -> str:
    """Render a template for an event.

    Raises:
        KeyError: the template names a field events do not have.
        ValueError, IndexError, AttributeError: the template is malformed.
    """
    return template.format_map(template_fields(event))


def check_options(options: dict[str, Any]) -> None:
    """Check addresses, TLS and login settings, numbers, and render both templates on a sample event."""
    to = options["to"]
    if not to:
        raise ValueError("to: must list at least one address")
    for address in to:
        if not isinstance(address, str) or "@" not in address:
            raise ValueError(f"to: {address!r} is not an e-mail address")
    if options["from"] and "@" not in options["from"]:
        raise ValueError(f"from: {options['from']!r} is not an e-mail address")
    if options["ssl"] and options["starttls"]:
        raise ValueError("starttls: not with ssl (implicit TLS already encrypts the connection)")
    if options["password"] and options["password_file"]:
        raise ValueError("password_file: give either password or password_file, not both")
    if options["username"] and not (options["password"] or options["password_file"]):
        raise ValueError("username: needs password or password_file")
    if not options["username"] and (options["password"] or options["password_file"]):
        raise ValueError("username: is required with a password")
    if not 0 < options["port"] < 65536:
        raise ValueError(f"port: must be 1..65535, got {options['port']}")
    for key in ("timeout", "retry_max"):
        if options[key] <= 0:
            raise ValueError(f"{key}: must be positive, got {options[key]}")
    for key in ("digest_window", "max_events_listed"):
        if options[key] < 0:
            raise ValueError(f"{key}: must not be negative, got {options[key]}")
    if options["queue_size"] < 1:
        raise ValueError(f"queue_size: must be at least 1, got {options['queue_size']}")
    sample = new_event("scsi", "SCSI_MEDIUM_ERROR", "sample", severity="error", kind="synthetic", dev_name="sdb",
                       dev_wwid="naa.5000c500a1b2c3d4", hostname="node1", extensions={"sector": 1})
    for key in ("subject", "body"):
        try:
            text = render(options[key], sample)
        except KeyError as exc:
            raise ValueError(f"{key}: unknown field {exc.args[0]!r}") from None
        except (ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"{key}: bad template: {exc}") from None
        if key == "subject" and ("\n" in text or "\r" in text):
            raise ValueError("subject: must render to one line")


@dataclass
class Digest:
    """Events collected during a window: counts per (event type, device), the first few, the span."""

    max_listed: int
    total: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    listed: list[Event] = field(default_factory=list)
    first_ts: float = 0.0
    last_ts: float = 0.0
    severity: str = "info"
    hostnames: set[str] = field(default_factory=set)

    def add(self, event: Event) -> None:
        """Count one event (a flood-control summary counts for the repeats it stands for)."""
        ext = event.get("extensions") or {}
        n = int(ext.get("flood_count", 1)) if ext.get("flood_summary") else 1
        ts = event.get("timestamp", 0.0)
        if not self.total:
            self.first_ts = ts
        self.total += n
        self.last_ts = max(self.last_ts, ts)
        key = (event.get("event_type", ""), event.get("dev_name") or event.get("dev_wwid") or "")
        if key not in self.counts and len(self.counts) >= MAX_COUNTERS:
            key = OTHER
        self.counts[key] += n
        if len(self.listed) < self.max_listed:
            self.listed.append(event)
        severity = event.get("severity", "info")
        if severity != self.severity and severity_rank(severity) > severity_rank(self.severity):
            self.severity = severity
        if len(self.hostnames) < 10:
            self.hostnames.add(event.get("hostname", ""))

    def merge(self, other: Digest) -> None:
        """Add what another digest collected (later events) to this one."""
        if not other.total:
            return
        if not self.total:
            self.first_ts = other.first_ts
        self.total += other.total
        self.last_ts = max(self.last_ts, other.last_ts)
        for key, n in other.counts.items():
            if key not in self.counts and len(self.counts) >= MAX_COUNTERS:
                key = OTHER
            self.counts[key] += n
        self.listed += other.listed[: self.max_listed - len(self.listed)]
        if severity_rank(other.severity) > severity_rank(self.severity):
            self.severity = other.severity
        self.hostnames |= set(sorted(other.hostnames)[: max(0, 10 - len(self.hostnames))])

    def subject(self) -> str:
        """Return the digest's subject: the total, the hosts, and the largest counts."""
        top = ", ".join(f"{n} {t}" + (f" {d}" if d else "") for (t, d), n in self.counts.most_common(2))
        more = ", ..." if len(self.counts) > 2 else ""
        return f"[busd] digest: {self.total} events on {', '.join(sorted(self.hostnames))} ({top}{more})"

    def body(self, window: float) -> str:
        """Return the digest's text: counts per (event type, device), then the first events."""
        def iso(ts: float) -> str:
            return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

        width = max(len(t) for t, _ in self.counts)
        lines = [f"{self.total} events from {iso(self.first_ts)} to {iso(self.last_ts)} on "
                 f"{', '.join(sorted(self.hostnames))}, highest severity {self.severity}"
                 + (f" (digest of {window:g} s)." if window else "."),
                 "", "Count per event type and device:"]
        lines += [f"{n:>9}  {t:{width}}  {d or '-'}" for (t, d), n in self.counts.most_common()]
        if self.listed:
            lines += ["", f"The first {len(self.listed)} of them:"]
            lines += [format_line(e, color=False) for e in self.listed]
        return "\n".join(lines) + "\n"


class Email(Receiver):
    """Mail the first event of a quiet period at once, and what follows as one digest per window."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        opts = self.options
        self.window: float = opts["digest_window"]
        self.sender_address = opts["from"] or f"busd@{self.hostname}"
        self.singles: deque[Event] = deque()
        self.digest = Digest(opts["max_events_listed"])
        self.window_end: float | None = None
        self.outage = Outage(self.log, "smtp", first=1.0, maximum=opts["retry_max"])
        self.wake = asyncio.Event()

    async def setup(self) -> None:
        """Start the task that sends."""
        self.sender = asyncio.create_task(self._sender(), name="email-sender")

    def handle(self, event: Event) -> None:
        """Queue a single mail for the first event of a quiet period; collect the others."""
        now = asyncio.get_running_loop().time()
        if self.window == 0:
            if len(self.singles) < self.options["queue_size"]:
                self.singles.append(event)
            else:
                self.digest.add(event)
        elif self.window_end is None:
            self.singles.append(event)
            self.window_end = now + self.window
        else:
            self.digest.add(event)
        self.wake.set()

    # -- messages --------------------------------------------------------------------------------

    def _message(self, subject: str, body: str, event: Event | None = None) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender_address
        msg["To"] = ", ".join(self.options["to"])
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid("busd", domain=self.hostname)
        if event is not None:
            msg["X-Busd-Event-Id"] = str(event.get("event_id", ""))
            msg["X-Busd-Event-Type"] = str(event.get("event_type", ""))
        msg.set_content(body)
        return msg

    def event_message(self, event: Event) -> EmailMessage:
        """Return the mail about one event, from the subject and body templates."""
        try:
            subject = render(self.options["subject"], event)
            body = render(self.options["body"], event)
        except Exception as exc:  # checked at load time; an odd event still gets a mail
            self.log.error("template_failed", error=str(exc), event_id=event.get("event_id"))
            subject, body = f"[busd] {event.get('event_type', '')}", format_line(event, color=False) + "\n"
        return self._message(" ".join(subject.split()), body, event)

    def digest_message(self) -> EmailMessage:
        """Return the mail about the events collected in the digest."""
        return self._message(self.digest.subject(), self.digest.body(self.window))

    # -- SMTP ------------------------------------------------------------------------------------

    def _password(self) -> str:
        if self.options["password_file"]:
            path = self.path(self.options["password_file"])
            try:
                return path.read_text().rstrip("\r\n")
            except OSError as exc:
                raise smtplib.SMTPException(f"password_file: cannot read {path}: {exc.strerror or exc}") from None
        return str(self.options["password"])

    def smtp_send(self, messages: list[EmailMessage], timeout: float, done: list[bool]) -> None:
        """Send messages over one SMTP session (blocking: run it in a thread).

        For each message in turn, ``done`` gets True once it is sent, False if refused for good.

        Raises:
            OSError, smtplib.SMTPException: the server is unreachable, refused the login, or failed
                temporarily: what is not in ``done`` is to be sent again later.
        """
        opts = self.options
        context = ssl.create_default_context(cafile=opts["cafile"] or None)
        client: smtplib.SMTP
        if opts["ssl"]:
            client = smtplib.SMTP_SSL(opts["host"], opts["port"], timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(opts["host"], opts["port"], timeout=timeout)
        with client:
            if opts["starttls"]:
                client.starttls(context=context)
            if opts["username"]:
                client.login(opts["username"], self._password())
            for msg in messages:
                try:
                    refused = client.send_message(msg)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                    if getattr(exc, "smtp_code", 500) < 500 and not isinstance(exc, smtplib.SMTPRecipientsRefused):
                        raise
                    self.log.error("email_refused", subject=msg["Subject"], error=_describe(exc), server=self.server)
                    client.rset()
                    done.append(False)
                    continue
                if refused:  # some recipients only: the others got it
                    self.log.error("email_refused", subject=msg["Subject"], recipients=refused, server=self.server)
                done.append(True)

    @property
    def server(self) -> str:
        """``host:port`` of the SMTP server, for log lines."""
        return f"{self.options['host']}:{self.options['port']}"

    async def _deliver(self, messages: list[EmailMessage], timeout: float | None = None) -> int:
        """Send messages; return how many are done with. On failure, log, count and wait the backoff delay."""
        done: list[bool] = []
        try:
            await asyncio.to_thread(self.smtp_send, messages, timeout or self.options["timeout"], done)
        except (OSError, smtplib.SMTPException) as exc:
            self._count_done(done)
            self.count("smtp_errors")
            if timeout is None:  # not at shutdown
                waiting = len(self.singles) + (1 if self.digest.total else 0)
                await asyncio.sleep(self.outage.failed(f"{self.server}: {_describe(exc)}", waiting_mails=waiting,
                                                       digest_events=self.digest.total))
            else:
                self.log.error("smtp_unavailable", error=f"{self.server}: {_describe(exc)}")
            return len(done)
        self._count_done(done)
        self.outage.succeeded(server=self.server)
        return len(done)

    def _count_done(self, done: list[bool]) -> None:
        sent = sum(done)
        if sent:
            self.count("emails_sent", sent)
        if len(done) > sent:
            self.count("smtp_refused", len(done) - sent)

    async def _sender(self) -> None:
        """Send single mails first, then the digest when its window ends; wait otherwise."""
        loop = asyncio.get_running_loop()
        while True:
            if self.singles:
                batch = list(self.singles)
                for _ in range(await self._deliver([self.event_message(e) for e in batch])):
                    self.singles.popleft()
                continue
            now = loop.time()
            if self.digest.total and (self.window_end is None or now >= self.window_end):
                # events arriving while it is sent start the next digest
                message, digest = self.digest_message(), self.digest
                self.digest = Digest(digest.max_listed)
                if await self._deliver([message]):
                    self.window_end = loop.time() + self.window if self.window else None
                else:
                    digest.merge(self.digest)
                    self.digest = digest
                continue
            if self.window_end is not None and now >= self.window_end:
                self.window_end = None  # a window without further events: quiet again
            self.wake.clear()
            wait = None if self.window_end is None else self.window_end - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()

    async def teardown(self) -> None:
        """Send what waits, digest included, if the server answers within 1 s; log what could not go."""
        self.sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sender
        messages = [self.event_message(e) for e in self.singles]
        if self.digest.total:
            messages.append(self.digest_message())
        if not messages:
            return
        done = await self._deliver(messages, timeout=1.0) if not self.outage.active else 0
        if done < len(messages):
            self.log.error("email_unsent", mails=len(messages) - done, digest_events=self.digest.total,
                           server=self.server, reason="the SMTP server did not take them before the receiver stopped")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{exc.smtp_code} {error}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    run(Email)

