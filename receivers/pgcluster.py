"""Receiver ``pgcluster``: cluster agreement for PostgreSQL switch-over, harepd's neighbour inquiry.

It follows the synthetic events of the ``postgres`` parser (``PG_UP``, ``PG_DOWN``,
``PG_PROMOTED``, ``PG_PRIMARY_CHANGED``, ``PG_SPLIT_BRAIN``...), each of which carries that
parser's whole view of the nodes this busd polls, and keeps the latest as its **view** of the
cluster: each node's role (``primary``, ``standby``, ``down``), timeline, LSN and when it was last
seen; the believed ``primary`` (``""`` when none or split brain); ``primaries``, the nodes up that
run as primary; ``split_brain`` when they are two or more. A node's busd polls its own
PostgreSQL, so its view is its node's role plus, on a standby, the primary repmgr names. The
view is kept in the receiver's state file, so a restart does not forget the cluster.

Each busd answers "what do you know" (its view) to its configured peers over ZeroMQ on TCP
(``listen``), encrypted and authenticated with CURVE: only the public keys of the configured
``neighbours`` and ``witness`` are accepted (a ZAP authenticator; ``busctl keygen`` writes key
pairs). A node (``role = "node"``) decides, on every change of its view and every ``interval``
seconds, whether this node may take writes, with harepd's rule:

1. its own view has no primary: deny writes (``local_unknown``); two primaries: deny
   (``split_brain``);
2. it asks its neighbours in order: the first that answers with the same primary decides
   (``neighbour_agrees``: act); one that is unreachable is skipped; one that answers with another
   primary stops the round (on to the witness);
3. no neighbour agreed: it asks the witness: the same primary: act (``witness_agrees``);
   unreachable (``witness_unreachable``), another primary (``witness_disagrees``) or no witness
   configured (``no_witness``): deny writes on this node;
4. split brain: when two nodes claim primary, in this node's view, or a neighbour claiming it
   for itself while this node does, or in the witness's view, writes are denied whatever else
   was said (``split_brain``), and the decision is an ``error`` event. (A neighbour's view of
   other nodes, or a witness seeing only the other node as primary, may be one poll old during
   an ordinary fail-over: that is disagreement, not split brain.)

"Act" means ``allow_writes`` when the agreed primary is this node and it is primary, otherwise
``deny_writes``; reads (``allow_reads``) are allowed on an agreed primary or standby and denied
whenever agreement failed. Standby lists may differ between views without breaking agreement:
they do not change where writes go.

Every decision that differs from the previous one (or the first) is emitted as a synthetic event
``PG_ROUTING_DECISION`` (system ``postgres``, ``dev_name`` this node; severity ``info``, ``warn``
when writes are denied for lack of agreement, ``error`` on split brain) with the evidence in its
extensions: ``node``, ``role``, ``outcome`` (``allow_writes``/``deny_writes``), ``allow_reads``,
``primary`` (agreed, else ""), ``rule``, ``reason``, ``split_brain``, ``primaries``, ``local``
(this node's view), ``answers`` (each peer asked: ``peer``, ``kind``, ``endpoint``, ``ok``,
``error``, ``primary``, ``primaries``, ``role``, ``agrees``) and ``took_ms``. The ``pg_hba`` and
``haproxy`` receivers act on it.

A witness (``role = "witness"``) runs busd with ``postgres`` collectors polling every node itself
(as harepd's witness answers from its own repmgr database rather than relaying what nodes told
it) and this receiver, with the nodes as its ``neighbours`` (the keys it accepts): it only
answers, never asks and never decides.

Options: ``role``, ``node`` (this node's name as in repmgr, default the busd hostname),
``listen`` (``tcp://ADDRESS:PORT``), ``secret_key`` (this node's secret certificate file),
``public_key`` (optional: checked against the secret file), ``neighbours`` (an array of tables
``{ name, endpoint, public_key }``, asked in order), ``witness`` (a table ``{ name, endpoint,
public_key }``), ``timeout`` (seconds per inquiry), ``interval`` (seconds between decisions when
nothing changes). ``busctl pg status`` prints the view, the last decision and what each peer said.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq

from bus.config import Option
from bus.event import Event
from bus.plugin import Receiver, run, write_atomic
from receivers._inquiry import InquiryClient, InquiryError, InquiryServer, load_keys, load_public_key

FILTER = {"system": ["postgres"]}

OPTIONS = {
    "role": Option(str, "node", "node: decides for its PostgreSQL node; witness: only answers", ("node", "witness")),
    "node": Option(str, "", "this node's name as in repmgr (dev_name of the postgres events); default: hostname"),
    "listen": Option(str, Option.REQUIRED, "where neighbours ask, tcp://ADDRESS:PORT"),
    "secret_key": Option(str, Option.REQUIRED, "this node's secret certificate (busctl keygen's NAME.key_secret)"),
    "public_key": Option(str, "", "this node's public certificate, checked against the secret one"),
    "neighbours": Option(list, [], "tables { name, endpoint, public_key }: asked in order, and allowed to ask"),
    "witness": Option(dict, {}, "table { name, endpoint, public_key }, asked when no neighbour agrees"),
    "timeout": Option(float, 1.0, "seconds to wait for one peer's answer"),
    "interval": Option(float, 5.0, "seconds between two decisions when nothing changes"),
}

DENY_RULES = ("local_unknown", "witness_unreachable", "witness_disagrees", "no_witness")
PEER_KEYS = ("name", "endpoint", "public_key")


def _peer(where: str, table: Any) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: must be a table {{ name, endpoint, public_key }}")
    for key in table:
        if key not in PEER_KEYS:
            raise ValueError(f"{where}.{key}: unknown key (allowed: {', '.join(PEER_KEYS)})")
    for key in PEER_KEYS:
        if not isinstance(table.get(key), str) or not table[key]:
            raise ValueError(f"{where}.{key}: is required (a non-empty string)")
    if not table["endpoint"].startswith("tcp://"):
        raise ValueError(f"{where}.endpoint: {table['endpoint']!r} is not tcp://HOST:PORT")
    return {k: table[k] for k in PEER_KEYS}


def check_options(options: dict[str, Any]) -> None:
    """Check the peers and key files (raises ``ValueError("key: reason")``)."""
    if not options["listen"].startswith("tcp://"):
        raise ValueError(f"listen: {options['listen']!r} is not tcp://ADDRESS:PORT")
    for key in ("timeout", "interval"):
        if options[key] <= 0:
            raise ValueError(f"{key}: must be positive")
    names = set()
    for i, table in enumerate(options["neighbours"]):
        names.add(_peer(f"neighbours[{i}]", table)["name"])
    if options["witness"]:
        names.add(_peer("witness", options["witness"])["name"])
    if len(names) != len(options["neighbours"]) + bool(options["witness"]):
        raise ValueError("neighbours: every neighbour and the witness need distinct names")


VIEW_KEYS = ("primary", "primary_source", "primaries", "split_brain", "nodes", "repmgr_nodes")
"""The cluster part of the extensions every event of the ``postgres`` parser carries."""


@dataclass
class ClusterView:
    """The cluster as this busd's ``postgres`` parser last described it.

    Every synthetic event of that parser carries its whole view of the cluster (the nodes this
    busd polls, their roles, the believed primary, split brain); the latest one is kept.
    """

    cluster: dict[str, Any] = field(default_factory=dict)
    wwids: dict[str, str] = field(default_factory=dict)

    def observe(self, event: Event) -> bool:
        """Take one ``PG_*`` event into the view; return whether anything that matters for routing changed."""
        etype = event.get("event_type", "")
        ext = event.get("extensions") or {}
        if not etype.startswith("PG_") or etype == "PG_ROUTING_DECISION" or not isinstance(ext.get("nodes"), dict):
            return False
        if event.get("dev_name") and event.get("dev_wwid"):
            self.wwids[event["dev_name"]] = event["dev_wwid"]
        before = self.significant()
        self.cluster = {k: ext.get(k) for k in VIEW_KEYS}
        return self.significant() != before

    def significant(self) -> tuple[Any, ...]:
        """What a decision depends on: the primary, the claimants, and each node's role."""
        nodes = self.nodes()
        return (self.cluster.get("primary"), tuple(self.cluster.get("primaries") or ()),
                bool(self.cluster.get("split_brain")), tuple(sorted((n, s.get("role")) for n, s in nodes.items())))

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Return node name to its summary (``role``, ``up``, ``timeline``, ``lsn``, ``last_seen``...)."""
        nodes = self.cluster.get("nodes") or {}
        return {str(n): s for n, s in nodes.items() if isinstance(s, dict)}

    def snapshot(self, node: str, role: str, hostname: str) -> dict[str, Any]:
        """Return the view as answered to a peer: this node, its role, the cluster's primary and standbys.

        ``primaries`` are the nodes up that run as primary (whether one or several), plus those
        the parser found claiming primary in repmgr's metadata; two or more is ``split_brain``.
        """
        nodes = self.nodes()
        running = {n for n, s in nodes.items() if s.get("up") and s.get("role") == "primary"}
        primaries = sorted(running | set(self.cluster.get("primaries") or []))
        split = bool(self.cluster.get("split_brain")) or len(primaries) > 1
        if role == "node":
            role = str(nodes[node].get("role") or "unknown") if node in nodes else "unknown"
        witness = [str(r.get("node_name")) for r in self.cluster.get("repmgr_nodes") or []
                   if isinstance(r, dict) and r.get("type") == "witness"]
        return {
            "node": node, "role": role, "hostname": hostname, "time": time.time(),
            "primary": "" if split else str(self.cluster.get("primary") or ""),
            "primary_source": str(self.cluster.get("primary_source") or ""),
            "primaries": primaries, "split_brain": split,
            "standbys": sorted(n for n, s in nodes.items() if s.get("up") and s.get("role") == "standby"),
            "down": sorted(n for n, s in nodes.items() if s.get("role") == "down"),
            "witness": witness[0] if witness else "",
            "nodes": nodes,
        }

    def dump(self) -> dict[str, Any]:
        """Return what the state file keeps."""
        return asdict(self)

    @classmethod
    def load(cls, data: dict[str, Any]) -> ClusterView:
        """Rebuild from :meth:`dump`."""
        return cls(cluster=dict(data.get("cluster") or {}), wwids=dict(data.get("wwids") or {}))


@dataclass
class Answer:
    """One peer's answer (or why there is none)."""

    peer: str
    kind: str
    endpoint: str
    ok: bool
    error: str = ""
    view: dict[str, Any] = field(default_factory=dict)
    agrees: bool = False

    def evidence(self) -> dict[str, Any]:
        """Return the answer as a decision's evidence (the peer's view summarised)."""
        out: dict[str, Any] = {"peer": self.peer, "kind": self.kind, "endpoint": self.endpoint, "ok": self.ok,
                               "error": self.error, "agrees": self.agrees}
        if self.ok:
            out.update(primary=self.view.get("primary", ""), primaries=list(self.view.get("primaries", [])),
                       role=self.view.get("role", ""), node=self.view.get("node", ""))
        return out


@dataclass
class Decision:
    """What a node decided, and why."""

    node: str
    role: str
    outcome: str
    allow_reads: bool
    primary: str
    rule: str
    reason: str
    split_brain: bool
    primaries: list[str]
    local: dict[str, Any]
    answers: list[dict[str, Any]]

    def key(self) -> tuple[Any, ...]:
        """What makes two decisions the same (the evidence may differ)."""
        return (self.outcome, self.allow_reads, self.primary, self.rule, self.split_brain, tuple(self.primaries))

    def severity(self) -> str:
        """``error`` on split brain, ``warn`` when writes are denied for lack of agreement, else ``info``."""
        return "error" if self.split_brain else ("warn" if self.rule in DENY_RULES else "info")


def agrees(local: dict[str, Any], remote: dict[str, Any]) -> bool:
    """Whether a peer's view names the same primary as ours (and sees no split brain)."""
    return bool(local["primary"]) and remote.get("primary") == local["primary"] and not remote.get("split_brain")


def claimants(local: dict[str, Any], answers: list[Answer]) -> list[str]:
    """Return every node claimed primary: by our view, by each peer about itself, and by a witness seeing two.

    A peer's view of *other* nodes may be older than ours by a poll (the old primary just
    stopped, the standby just promoted), so only its claim about itself counts, and a witness's
    view counts when it sees two primaries itself; a witness that sees only the other node as
    primary merely disagrees.
    """
    claims = set(local["primaries"])
    for a in answers:
        if not a.ok:
            continue
        if a.kind == "witness" and a.view.get("split_brain"):
            claims.update(a.view.get("primaries", []))
        elif a.view.get("role") == "primary" and a.view.get("node"):
            claims.add(a.view["node"])
    return sorted(claims)


Ask = Callable[[str], Awaitable[Answer]]
"""Asks the named peer (a neighbour's or the witness's name) and returns its answer."""


async def consult(local: dict[str, Any], neighbours: list[str], witness: str, ask: Ask) -> Decision:
    """Apply the rule (see the module's docstring) to ``local``, asking peers through ``ask`` as needed."""
    node, role = local["node"], local["role"]
    answers: list[Answer] = []

    def done(rule: str, reason: str, primary: str = "") -> Decision:
        claims = claimants(local, answers)
        if len(claims) > 1:
            rule, primary = "split_brain", ""
            reason = f"split brain: {' and '.join(claims)} claim primary"
        agreed = bool(primary)
        writes = agreed and primary == node and role == "primary"
        return Decision(node=node, role=role, outcome="allow_writes" if writes else "deny_writes",
                        allow_reads=agreed and role in ("primary", "standby"), primary=primary, rule=rule,
                        reason=reason, split_brain=len(claims) > 1, primaries=claims,
                        local={k: v for k, v in local.items() if k != "nodes"},
                        answers=[a.evidence() for a in answers])

    if local["split_brain"]:
        return done("split_brain", "")
    if not local["primary"]:
        return done("local_unknown", "this node's view has no primary")
    for name in neighbours:
        answer = await ask(name)
        answers.append(answer)
        if not answer.ok:
            continue
        answer.agrees = agrees(local, answer.view)
        if answer.agrees:
            return done("neighbour_agrees", f"neighbour {name} agrees: primary {local['primary']}", local["primary"])
        break
    if not witness:
        return done("no_witness", "no neighbour agreed and no witness is configured")
    answer = await ask(witness)
    answers.append(answer)
    if not answer.ok:
        return done("witness_unreachable", f"no neighbour agreed; witness {witness}: {answer.error}")
    answer.agrees = agrees(local, answer.view)
    if answer.agrees:
        return done("witness_agrees", f"witness {witness} agrees: primary {local['primary']}", local["primary"])
    return done("witness_disagrees", f"no neighbour agreed; witness {witness} says primary "
                                     f"{answer.view.get('primary') or 'unknown'}, we say {local['primary']}")


class PgCluster(Receiver):
    """Keep the cluster view, answer peers, and decide where writes may go."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        opts = self.options
        self.node = opts["node"] or self.hostname
        self.error = ""  # why this node cannot ask or answer (its keys), shown by busctl status / pg status
        self.view = ClusterView()
        self.neighbours = [_peer(f"neighbours[{i}]", t) for i, t in enumerate(opts["neighbours"])]
        self.witness = _peer("witness", opts["witness"]) if opts["witness"] else None
        self.clients: dict[str, InquiryClient] = {}
        self.peers: dict[str, dict[str, Any]] = {}
        self.told: dict[str, dict[str, Any]] = {}
        self.server: InquiryServer | None = None
        self.decision: Decision | None = None
        self.decided_at = 0.0
        self.changed = asyncio.Event()
        self._decider: asyncio.Task[None] | None = None

    # -- set-up ------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Load the state and the keys, start serving inquiries and (on a node) deciding."""
        self._load_state()
        opts = self.options
        peers = [*self.neighbours, *([self.witness] if self.witness else [])]
        try:
            public, secret = load_keys(self.path(opts["secret_key"]))
            if opts["public_key"] and load_public_key(self.path(opts["public_key"])) != public:
                raise ValueError(f"public_key {opts['public_key']} does not belong to secret_key {opts['secret_key']}")
        except ValueError as exc:
            # without its own keys this node can ask and answer nobody: every decision denies writes
            self.log.error("pgcluster_keys_unusable", error=str(exc))
            self.error = f"keys unusable, every decision denies writes: {exc}"
            public = secret = b""
        keys: dict[str, bytes] = {}
        for p in peers:
            try:
                keys[p["name"]] = load_public_key(self.path(p["public_key"]))
            except ValueError as exc:  # this peer is neither asked nor let in; the others are
                self.log.error("pgcluster_peer_key_unusable", peer=p["name"], error=str(exc))
        for p in peers:
            self.peers[p["name"]] = {"kind": "witness" if p is self.witness else "neighbour",
                                     "endpoint": p["endpoint"], "asked": 0.0, "answered": 0.0, "error": "", "view": None}
            if p["name"] in keys and secret:
                self.clients[p["name"]] = InquiryClient(self.ctx, p["name"], p["endpoint"], keys[p["name"]],
                                                        public, secret)
        if secret:
            self.server = InquiryServer(self.ctx, opts["listen"], public, secret, {k: n for n, k in keys.items()},
                                        self._answer, self.log)
            try:
                self.server.start()
            except zmq.ZMQError as exc:
                self.log.error("inquiry_bind_failed", endpoint=opts["listen"], error=str(exc))
                self.server.close()
                self.server = None
        self.log.info("pgcluster_started", node=self.node, role=opts["role"], listen=opts["listen"],
                      serving=self.server is not None, neighbours=[p["name"] for p in self.neighbours],
                      witness=self.witness["name"] if self.witness else "")
        if opts["role"] == "node":
            self._decider = asyncio.create_task(self._decide_loop(), name="pgcluster-decider")
        self._write_status()

    async def teardown(self) -> None:
        """Stop deciding and serving."""
        if self._decider is not None:
            self._decider.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._decider
        if self.server is not None:
            self.server.close()
        for client in self.clients.values():
            client.close()

    def _load_state(self) -> None:
        path = self.state_file()
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            self.view = ClusterView.load(data.get("view") or {})
        except (OSError, ValueError, TypeError) as exc:
            self.log.warning("state_unreadable", path=str(path), error=str(exc))

    def _save_state(self) -> None:
        path = self.state_file()
        if path is None:
            return
        try:
            write_atomic(path, json.dumps({"view": self.view.dump()}))
        except OSError as exc:
            self.log.warning("state_write_failed", path=str(path), error=str(exc))

    # -- events and inquiries ----------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Take a ``postgres`` event into the view; a change triggers a decision."""
        if event.get("source") == self.name:
            return
        if self.view.observe(event):
            self._save_state()
            self.changed.set()
            self._write_status()

    def local_view(self) -> dict[str, Any]:
        """Return this busd's view, as answered to peers."""
        return self.view.snapshot(self.node, self.options["role"], self.hostname)

    async def _answer(self, peer: str, request: dict[str, Any]) -> dict[str, Any]:
        told = request.get("view")
        self.told[peer] = {"time": time.time(), "view": told if isinstance(told, dict) else None}
        if (isinstance(told, dict) and self.decision is not None and self.decision.outcome == "allow_writes"
                and told.get("primary") != self.decision.primary):
            # we take writes and a peer names another primary: check again now rather than at the
            # next interval (only a writer does, so two disagreeing peers cannot trigger each other forever)
            self.changed.set()
        return self.local_view()

    async def ask(self, name: str) -> Answer:
        """Ask one peer what it knows (an unreachable peer is an answer with ``ok`` false)."""
        peer = self.peers[name]
        peer["asked"] = time.time()
        client = self.clients.get(name)
        if client is None:
            answer = Answer(name, peer["kind"], peer["endpoint"], False, error="no usable keys for this peer")
        else:
            try:
                view = await client.ask({"from": self.node, "view": self.local_view()}, self.options["timeout"])
                answer = Answer(name, peer["kind"], peer["endpoint"], True, view=view)
                peer["answered"] = time.time()
            except InquiryError as exc:
                answer = Answer(name, peer["kind"], peer["endpoint"], False, error=str(exc))
        peer["error"] = answer.error
        if answer.ok:
            peer["view"] = answer.view
        return answer

    # -- deciding ----------------------------------------------------------------------------

    async def _decide_loop(self) -> None:
        interval = self.options["interval"]
        while True:
            self.changed.clear()
            try:
                await self.decide()
            except Exception:
                self.log.exception("decision_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self.changed.wait()

    async def decide(self) -> Decision:
        """Apply the rule now; emit the decision if it differs from the last one."""
        started = time.monotonic()
        decision = await consult(self.local_view(), [p["name"] for p in self.neighbours],
                                 self.witness["name"] if self.witness else "", self.ask)
        took_ms = round((time.monotonic() - started) * 1000, 1)
        previous, self.decision, self.decided_at = self.decision, decision, time.time()
        if previous is None or previous.key() != decision.key():
            await self._emit(decision, took_ms)
        self._write_status()
        return decision

    async def _emit(self, d: Decision, took_ms: float) -> None:
        verb = "allow writes" if d.outcome == "allow_writes" else "deny writes"
        reads = "reads allowed" if d.allow_reads else "reads denied"
        msg = f"{d.node}: {verb}, {reads} (role {d.role}, primary {d.primary or 'not agreed'}; {d.rule}: {d.reason})"
        log = {"error": self.log.error, "warn": self.log.warning}.get(d.severity(), self.log.info)
        log("routing_decision", node=d.node, outcome=d.outcome, rule=d.rule, primary=d.primary, reason=d.reason)
        await self.emit(self.event("postgres", "PG_ROUTING_DECISION", msg, severity=d.severity(), dev_name=d.node,
                                   dev_wwid=self.view.wwids.get(d.node, ""), extensions={**asdict(d), "took_ms": took_ms}))

    def _write_status(self) -> None:
        self.write_status({
            "hostname": self.hostname, "node": self.node, "role": self.options["role"],
            "listen": self.options["listen"], "serving": self.server is not None,
            "view": self.local_view(),
            "decision": asdict(self.decision) if self.decision else None, "decided_at": self.decided_at,
            "peers": self.peers, "told": self.told,
            "denied": self.server.denied if self.server else 0,
            "answered": self.server.answered if self.server else 0,
            "error": self.error,
        })


if __name__ == "__main__":
    run(PgCluster)

