"""The neighbour inquiry of the ``pgcluster`` receiver: "what do you know" over ZeroMQ with CURVE.

A server is a ROUTER bound on TCP with ``CURVE_SERVER`` on; a ZAP authenticator accepts only the
public keys it was given (the configured neighbours and witness), so an unknown key never gets a
connection, let alone an answer. A client is a DEALER per peer that knows the peer's public key;
when an answer does not come within the timeout the socket is thrown away with what it queued and
the next inquiry starts on a fresh one ("lazy pirate", like :meth:`bus.client.ControlClient.reconnect`).

Frames are msgpack maps: a request ``{"op": "inquiry", "id": N, "from": NAME, "view": {...}}``,
an answer ``{"ok": true, "id": N, "view": {...}}`` or ``{"ok": false, "id": N, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import recv_monitor_message

from bus import protocol

__all__ = ["InquiryClient", "InquiryError", "InquiryServer", "load_keys", "load_public_key"]

MAX_ANSWER = 1 << 20
"""Largest frame accepted either way (a view is a few hundred bytes)."""


class InquiryError(Exception):
    """An inquiry got no usable answer (timeout, refused authentication, bad frame, error reply)."""


def load_public_key(path: Path) -> bytes:
    """Return the z85 public key of a certificate file (public or secret), or raise ``ValueError``."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc}") from None
    if len(public) != 40:
        raise ValueError(f"{path}: the public key is not a 40-character z85 CURVE key")
    return public


def load_keys(path: Path) -> tuple[bytes, bytes]:
    """Return ``(public, secret)`` z85 keys of a secret certificate file, or raise ``ValueError``.

    The file must be readable by its owner only (0600 or 0400): a secret key others can read lets
    them pass for this node.
    """
    try:
        public, secret = zmq.auth.load_certificate(path)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc}") from None
    if not secret:
        raise ValueError(f"{path} holds no secret key (give the .key_secret file that busctl keygen wrote)")
    if mode & 0o077:
        raise ValueError(f"{path}: a secret key file must be readable by its owner only "
                         f"(mode {mode:04o}): chmod 600 {path}")
    if len(public) != 40 or len(secret) != 40:
        raise ValueError(f"{path}: the keys are not 40-character z85 CURVE keys")
    return public, secret


class _AllowedKeys:
    """ZAP credentials provider: a client is accepted when its public key is one of ours."""

    def __init__(self, keys: dict[bytes, str], on_denied: Callable[[bytes], None]) -> None:
        self.keys = keys
        self.on_denied = on_denied

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.on_denied(key)
        return False


class InquiryServer:
    """Answers inquiries from the peers whose public keys are allowed.

    Args:
        ctx: the asyncio ZeroMQ context.
        endpoint: where to bind, e.g. ``tcp://127.0.0.1:7440``.
        public, secret: this node's z85 key pair.
        allowed: public key (z85) to the peer's name.
        answer: called with the peer's name and its request; returns the answer's ``view``.
        log: the plugin's logger.
    """

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, public: bytes, secret: bytes,
                 allowed: dict[bytes, str], answer: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]],
                 log: Any) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.allowed = allowed
        self.answer = answer
        self.log = log
        self.denied = 0
        self.answered = 0
        self.auth = AsyncioAuthenticator(ctx)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_ANSWER)
        self.sock.curve_server = True
        self.sock.curve_publickey = public
        self.sock.curve_secretkey = secret
        self._task: asyncio.Task[None] | None = None
        self._denied_logged: dict[bytes, float] = {}

    def _denied(self, key: bytes) -> None:
        self.denied += 1
        now = time.monotonic()
        if now - self._denied_logged.get(key, -60.0) < 60.0:  # a refused client reconnects every few 100 ms
            return
        self._denied_logged[key] = now
        self.log.warning("inquiry_denied", endpoint=self.endpoint, client_key=key.decode(errors="replace"),
                         reason="public key is not a configured neighbour's or witness's")

    def start(self) -> None:
        """Start the authenticator, bind, and serve in a task (raises ``zmq.ZMQError`` if it cannot bind)."""
        self.auth.start()
        self.auth.configure_curve_callback("*", _AllowedKeys(self.allowed, self._denied))
        self.sock.bind(self.endpoint)
        self._task = asyncio.create_task(self._serve(), name="inquiry-server")

    async def _serve(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            if len(frames) != 2:
                continue
            peer_key = frames[1].get("User-Id").encode()
            peer = self.allowed.get(peer_key, peer_key.decode())
            try:
                request = protocol.unpackb(frames[1].bytes)
                rid = request["id"]
                if request.get("op") != "inquiry":
                    raise ValueError(f"unknown op {request.get('op')!r}")
            except Exception as exc:
                self.log.warning("inquiry_malformed", peer=peer, error=str(exc))
                continue
            try:
                reply = {"ok": True, "id": rid, "view": await self.answer(peer, request)}
                self.answered += 1
            except Exception as exc:
                self.log.exception("inquiry_answer_failed", peer=peer)
                reply = {"ok": False, "id": rid, "error": f"answer failed: {exc}"}
            await self.sock.send_multipart([frames[0].bytes, protocol.packb(reply)])

    def close(self) -> None:
        """Stop serving and release the socket and the authenticator."""
        if self._task is not None:
            self._task.cancel()
        self.sock.close(0)
        self.auth.stop()


class InquiryClient:
    """Asks one peer "what do you know"; a timeout throws the socket away (lazy pirate).

    Args:
        ctx: the asyncio ZeroMQ context.
        name: the peer's name (for errors).
        endpoint: the peer's inquiry socket, e.g. ``tcp://10.0.0.2:7440``.
        server_key: the peer's z85 public key.
        public, secret: this node's z85 key pair.
    """

    def __init__(self, ctx: zmq.asyncio.Context, name: str, endpoint: str, server_key: bytes,
                 public: bytes, secret: bytes) -> None:
        self.ctx = ctx
        self.name = name
        self.endpoint = endpoint
        self.server_key = server_key
        self.public = public
        self.secret = secret
        self._ids = itertools.count(1)
        self.sock: zmq.asyncio.Socket | None = None
        self.monitor: zmq.asyncio.Socket | None = None
        self.auth_failed = ""

    def _connect(self) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_ANSWER)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.curve_serverkey = self.server_key
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        # the monitor tells a refused key (handshake failed) apart from a peer that is simply away
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.auth_failed = ""
        sock.connect(self.endpoint)
        return sock

    def _drop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.sock.disable_monitor()
            self.sock.close(0)
            self.sock = None
        if self.monitor is not None:
            self.monitor.close(0)
            self.monitor = None

    async def _handshake_failure(self) -> str:
        """Return why the CURVE handshake failed, if the monitor said so (non-blocking)."""
        if self.monitor is None:
            return self.auth_failed
        while await self.monitor.poll(0):
            msg = await recv_monitor_message(self.monitor)
            event = msg.get("event")
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.auth_failed = "authentication refused (is our public key in its allowed list?)"
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.auth_failed = "CURVE handshake failed (is its public key the one configured here?)"
        return self.auth_failed

    async def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send an inquiry and return the peer's ``view``.

        Raises:
            InquiryError: no answer within ``timeout`` seconds (the socket is then renewed), a
                refused handshake, a malformed answer, or an error answer.
        """
        if self.sock is None:
            self.sock = self._connect()
        rid = next(self._ids)
        started = time.monotonic()
        await self.sock.send(protocol.packb({**request, "op": "inquiry", "id": rid}))
        deadline = started + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self.sock.poll(remaining * 1000):
                why = await self._handshake_failure()
                self._drop()
                raise InquiryError(f"{self.name} at {self.endpoint}: "
                                   + (why or f"no answer within {timeout:g} s"))
            try:
                answer = protocol.unpackb(await self.sock.recv())
            except Exception as exc:
                self._drop()
                raise InquiryError(f"{self.name} at {self.endpoint}: malformed answer ({exc})") from None
            if not isinstance(answer, dict) or answer.get("id") != rid:
                continue  # a late answer to an earlier inquiry
            if not answer.get("ok"):
                raise InquiryError(f"{self.name} at {self.endpoint}: {answer.get('error', 'refused')}")
            view = answer.get("view")
            if not isinstance(view, dict):
                raise InquiryError(f"{self.name} at {self.endpoint}: answer without a view")
            return view

    def close(self) -> None:
        """Close the socket."""
        self._drop()

