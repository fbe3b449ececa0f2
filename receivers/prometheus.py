"""Receiver ``prometheus``: a ``/metrics`` endpoint with drbd-reactor's DRBD metrics and busd's own.

DRBD metrics have drbd-reactor's names, types, labels and HELP texts (``drbd_resource_role``,
``drbd_resource_maypromote``, ``drbd_device_state``, ``drbd_device_written_bytes_total``,
``drbd_connection_state``, ``drbd_peerdevice_outofsync_bytes``, ... and ``drbdreactor_up``). They
are computed at scrape time from the latest ``state`` each ``drbd`` event carries (the complete
resource, as ``drbdsetup status --json`` prints it); a destroyed resource's series disappear.
Sizes and traffic are KiB in DRBD and bytes here, in-flight counts are 512-byte sectors, as in
drbd-reactor. ``drbd_peerdevice_sent_bytes`` and ``drbd_peerdevice_received_bytes`` are untyped:
drbd-reactor calls them counters without the ``_total`` suffix that prometheus_client requires of
counters, and keeping the names keeps dashboards working. ``drbd_version`` comes from one
``drbdadm --version`` at start (option ``drbdadm``; ``""`` leaves it out).

busd's metrics: ``busd_events_total`` (the events this receiver got, by system, event type,
severity and kind; its default filter takes every synthetic event), and, from busd's control
socket at each scrape (``scrape_timeout``), ``busd_up``, ``busd_published_events_total``,
``busd_plugin_events_in_total``, ``busd_plugin_events_out_total``,
``busd_plugin_dropped_total`` (by reason), ``busd_plugin_restarts_total``, ``busd_plugin_state``,
``busd_plugin_lag_events`` and ``busd_plugin_counter_total`` (receivers' own counters). When busd
does not answer, ``busd_up`` is 0 and the rest is still served.

Options: ``address`` (``":9942"`` every address, ``"[::]:9942"``, ``"127.0.0.1:9942"``; port 0 picks
a free port, shown in ``busctl``'s status files), ``enums`` (drbd-reactor's one-series-per-value
gauges ``drbd_resource_role``, ``drbd_device_state``, ``drbd_connection_state``; drbd-reactor's
default is false, here true), ``scrape_timeout``, ``drbdadm``.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, UnknownMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from bus.client import request
from bus.config import Option
from bus.event import Event
from bus.plugin import Receiver, run
from receivers._drbd import flag, well_formed

OPTIONS = {
    "address": Option(str, ":9942", "host:port to serve /metrics on (':9942': every address; port 0: any free)"),
    "enums": Option(bool, True, "export drbd_resource_role, drbd_device_state, drbd_connection_state"),
    "scrape_timeout": Option((int, float), 1.0, "seconds to wait for busd's status at a scrape"),
    "drbdadm": Option(str, "drbdadm", "run as 'drbdadm --version' at start for drbd_version ('': skip)"),
}

ROLES = ("Unknown", "Primary", "Secondary")
DISK_STATES = ("Diskless", "Attaching", "Detaching", "Failed", "Negotiating", "Inconsistent", "Outdated", "DUnknown",
               "Consistent", "UpToDate")
CONNECTION_STATES = ("StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe", "NetworkFailure",
                     "ProtocolError", "TearDown", "Connecting", "Connected")
PLUGIN_STATES = ("starting", "running", "restarting", "failed", "stopped", "disabled")

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def parse_address(address: str) -> tuple[str | None, int]:
    """Return ``(host, port)`` of ``:PORT``, ``[V6]:PORT`` or ``HOST:PORT`` (host ``None``: every address)."""
    m = _ADDRESS.match(address)
    if not m or int(m["port"]) > 65535:
        raise ValueError(f"address: {address!r} is not HOST:PORT, [IPv6]:PORT or :PORT")
    return (m["v6"] or m["host"] or None), int(m["port"])


def check_options(options: dict[str, Any]) -> None:
    """Refuse a bad ``address`` or ``scrape_timeout``."""
    parse_address(options["address"])
    if options["scrape_timeout"] <= 0:
        raise ValueError("scrape_timeout: must be positive")


def _bool(value: Any) -> int:
    return int(flag(value))


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class _Families:
    """Metric families by name, created on first use with their type, HELP and label names."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def add(self, cls: type[Metric], name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = cls(name, help_text, labels=list(labels))  # type: ignore[call-arg]
        family.add_metric(list(labels.values()), value)  # type: ignore[attr-defined]

    def gauge(self, name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        self.add(GaugeMetricFamily, name, help_text, labels, value)

    def counter(self, name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        self.add(CounterMetricFamily, name, help_text, labels, value)


def drbd_families(resources: dict[str, dict[str, Any]], enums: bool, out: _Families) -> None:
    """Add drbd-reactor's metrics of these resource states to ``out``."""
    out.gauge("drbd_resource_resources", "Number of resources", {}, len(resources))
    for name, r in sorted(resources.items()):
        res = {"name": name}
        if enums:
            for role in ROLES:
                out.gauge("drbd_resource_role", "DRBD role of the resource", {**res, "drbd_resource_role": role},
                          int(r.get("role") == role))
        out.gauge("drbd_resource_suspended", "Boolean whether the resource is suspended", res, _bool(r.get("suspended")))
        out.gauge("drbd_resource_maypromote", "Boolean whether the resource may be promoted to Primary", res,
                  _bool(r.get("may_promote")))
        out.gauge("drbd_resource_promotionscore", "The promotion score (higher is better) for the resource", res,
                  _num(r.get("promotion_score")))
        out.gauge("drbd_resource_forceiofailures", "Boolean whether the resource is configured (could be "
                  "temporarily) to force IO failures (e.g., during secondary --force)", res,
                  _bool(r.get("force-io-failures")))
        for c in r.get("connections") or []:
            conn = {**res, "conn_name": str(c.get("name", "")), "peer_node_id": str(c.get("peer-node-id", ""))}
            if enums:
                for cstate in CONNECTION_STATES:
                    out.gauge("drbd_connection_state", "DRBD connection state",
                              {**conn, "drbd_connection_state": cstate}, int(c.get("connection-state") == cstate))
            for pd in c.get("peer_devices") or []:
                peer = {**conn, "volume": str(pd.get("volume", ""))}
                out.gauge("drbd_peerdevice_outofsync_bytes", "Number of bytes currently out of sync with this peer, "
                          "according to the bitmap that DRBD has for it", peer, _num(pd.get("out-of-sync")) * 1024)
                out.add(UnknownMetricFamily, "drbd_peerdevice_sent_bytes", "Number of bytes currently sent to this "
                        "peer", peer, _num(pd.get("sent")) * 1024)
                out.add(UnknownMetricFamily, "drbd_peerdevice_received_bytes", "Number of bytes currently received "
                        "from this peer", peer, _num(pd.get("received")) * 1024)
            out.gauge("drbd_connection_congested", "Boolean whether the TCP send buffer of the data connection is "
                      "more than 80% filled", conn, _bool(c.get("congested")))
            out.gauge("drbd_connection_apinflight_bytes", "Number of application requests in flight (not completed)",
                      conn, _num(c.get("ap-in-flight")) * 512)
            out.gauge("drbd_connection_rsinflight_bytes", "Number of resync requests in flight", conn,
                      _num(c.get("rs-in-flight")) * 512)
        for d in r.get("devices") or []:
            dev = {**res, "volume": str(d.get("volume", "")), "minor": str(d.get("minor", ""))}
            disk = d.get("disk-state")
            if enums:
                for dstate in DISK_STATES:
                    out.gauge("drbd_device_state", "DRBD device state", {**dev, "drbd_device_state": dstate},
                              int(disk == dstate))
            client = _bool(d.get("client"))
            out.gauge("drbd_device_client", "Boolean whether this device is a client (i.e., intentional diskless)",
                      dev, client)
            out.gauge("drbd_device_unintentionaldiskless", "Boolean whether the devices is unintentional diskless",
                      dev, int(not client and disk == "Diskless"))
            out.gauge("drbd_device_quorum", "Boolean if this device has DRBD quorum", dev, _bool(d.get("quorum")))
            out.gauge("drbd_device_open", "Boolean if this device is opened", dev, _bool(d.get("open")))
            out.gauge("drbd_device_size_bytes", "Device size in bytes", dev, _num(d.get("size")) * 1024)
            out.counter("drbd_device_read_bytes_total", "Net data read from local hard disk", dev,
                        _num(d.get("read")) * 1024)
            out.counter("drbd_device_written_bytes_total", "Net data written on local disk", dev,
                        _num(d.get("written")) * 1024)
            out.counter("drbd_device_alwrites_total", "Number of updates of the activity log area of the meta data",
                        dev, _num(d.get("al-writes")))
            out.counter("drbd_device_bmwrites_total", "Number of updates of the bitmap area of the meta data", dev,
                        _num(d.get("bm-writes")))
            out.gauge("drbd_device_upperpending", "Number of block I/O requests forwarded to DRBD, but not yet "
                      "answered by DRBD.", dev, _num(d.get("upper-pending")))
            out.gauge("drbd_device_lowerpending", "Number of open requests to the local I/O sub-system issued by DRBD",
                      dev, _num(d.get("lower-pending")))
            out.gauge("drbd_device_alsuspended", "Boolean whether the Activity-Log is suspended", dev,
                      _bool(d.get("al-suspended")))


def bus_families(status: dict[str, Any] | None, events: Counter[tuple[str, str, str, str]], out: _Families) -> None:
    """Add busd's metrics: the events this receiver counted, and busd's status (``None``: busd down)."""
    for (system, event_type, severity, kind), n in sorted(events.items()):
        out.counter("busd_events_total", "Events received by this receiver, by system, event type, severity and kind",
                    {"system": system, "event_type": event_type, "severity": severity, "kind": kind}, n)
    out.gauge("busd_up", "Whether busd answered this scrape's status request", {}, int(status is not None))
    if status is None:
        return
    broker = status.get("broker") or {}
    out.gauge("busd_uptime_seconds", "Seconds since busd started", {}, _num(broker.get("uptime")))
    for kind, seq in sorted((broker.get("head") or {}).items()):
        out.counter("busd_published_events_total", "Events busd published, by kind", {"kind": kind}, _num(seq))
    for p in status.get("plugins") or []:
        labels = {"plugin": str(p.get("name")), "type": str(p.get("type"))}
        out.counter("busd_plugin_events_in_total", "Events a plugin produced (collectors), was routed (parsers) or "
                    "received (receivers)", labels, _num(p.get("events_in")))
        out.counter("busd_plugin_events_out_total", "Events a plugin had published (parsers) or handled "
                    "(receivers)", labels, _num(p.get("events_out")))
        for reason, n in sorted((p.get("dropped") or {}).items()):
            out.counter("busd_plugin_dropped_total", "Events dropped, failed or lost at a plugin, by reason",
                        {**labels, "reason": str(reason)}, _num(n))
        out.counter("busd_plugin_restarts_total", "Times busd restarted a plugin", labels, _num(p.get("restarts")))
        for state in PLUGIN_STATES:
            out.gauge("busd_plugin_state", "A plugin's state: 1 for the current one", {**labels, "state": state},
                      int(p.get("state") == state))
        if "lag" in p:
            out.gauge("busd_plugin_lag_events", "Events published that a receiver has not handled yet", labels,
                      _num(p.get("lag")))
        for name, n in sorted((p.get("counters") or {}).items()):
            out.counter("busd_plugin_counter_total", "A receiver's own counters", {**labels, "name": str(name)},
                        _num(n))


class _Collector:
    """The registry's only collector: everything is computed from a snapshot at scrape time."""

    def __init__(self, plugin: Prometheus) -> None:
        self.plugin = plugin
        self.bus_status: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        """Yield every family (called by prometheus_client's encoders)."""
        p = self.plugin
        out = _Families()
        out.gauge("drbdreactor_up", "Boolean indicating whether or not drbdreactor is running. Always 1", {}, 1)
        if p.drbd_version:
            out.gauge("drbd_version", "Version of the loaded DRBD kernel module and DRBD utils", p.drbd_version, 1)
        drbd_families(p.resources, p.options["enums"], out)
        bus_families(self.bus_status, p.events, out)
        yield from out.families.values()


class Prometheus(Receiver):
    """Serve ``/metrics`` from the latest DRBD resource states and busd's status."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.resources: dict[str, dict[str, Any]] = {}
        self.events: Counter[tuple[str, str, str, str]] = Counter()
        self.drbd_version: dict[str, str] = {}
        self.collector = _Collector(self)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)  # type: ignore[arg-type]
        self.runner: web.AppRunner | None = None
        self._busd_down = False

    async def setup(self) -> None:
        """Bind the HTTP server (on the plugin's event loop) and read DRBD's versions."""
        host, port = parse_address(self.options["address"])
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/", self.index)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, reuse_address=True).start()
        listening = [f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}" for a in self.runner.addresses]
        self.log.info("prometheus_listening", addresses=listening)
        self.write_status({"listening": listening})
        if self.options["drbdadm"]:
            self.drbd_version = await self._versions(self.options["drbdadm"])

    async def _versions(self, drbdadm: str) -> dict[str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(drbdadm, "--version", stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL)
            async with asyncio.timeout(5):
                out, _ = await proc.communicate()
        except (OSError, TimeoutError) as exc:
            self.log.info("drbd_version_unknown", drbdadm=drbdadm, error=str(exc))
            return {}
        fields = dict(line.partition("=")[::2] for line in out.decode(errors="replace").splitlines())
        kmod, utils = fields.get("DRBD_KERNEL_VERSION", ""), fields.get("DRBDADM_VERSION", "")
        return {"kmod": kmod, "utils": utils} if kmod or utils else {}

    def handle(self, event: Event) -> None:
        """Count the event; keep a DRBD resource's latest state (forget a destroyed one)."""
        self.events[(event.get("system", ""), event.get("event_type", ""), event.get("severity", ""),
                     event.get("kind", ""))] += 1
        if event.get("system") != "drbd":
            return
        ext = event.get("extensions") or {}
        name = ext.get("resource")
        if not isinstance(name, str):
            return
        if event.get("event_type") == "DRBD_RESOURCE_DESTROYED":
            self.resources.pop(name, None)
        elif well_formed(ext.get("state")):
            self.resources[name] = ext["state"]
        elif "state" in ext:
            self.count("bad_state")
            self.log.warning("drbd_state_malformed", resource=name, event_id=event.get("event_id"))

    async def bus_status(self) -> dict[str, Any] | None:
        """busd's ``status`` reply, or ``None`` (logged once per outage) if it does not answer in time."""
        try:
            reply = await request(self.env["BUS_CONTROL"], {"op": "status"}, self.options["scrape_timeout"])
        except Exception as exc:
            if not self._busd_down:
                self.log.warning("busd_status_unavailable", error=str(exc) or type(exc).__name__)
            self._busd_down = True
            return None
        if self._busd_down:
            self.log.info("busd_status_available")
        self._busd_down = False
        return reply

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the text format (or OpenMetrics when the scraper asks for it)."""
        status = await self.bus_status()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # no await between the snapshot and the encoding, so concurrent scrapes never mix
        self.collector.bus_status = status
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def index(self, request: web.Request) -> web.Response:
        """``GET /``: a pointer to ``/metrics``."""
        return web.Response(text='<html><body><a href="/metrics">/metrics</a></body></html>', content_type="text/html")

    async def teardown(self) -> None:
        """Stop serving."""
        if self.runner is not None:
            await self.runner.cleanup()


if __name__ == "__main__":
    run(Prometheus)
