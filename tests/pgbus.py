"""Several busd instances for the PostgreSQL switch-over tests: nodes and a witness, keys, pgcluster tables."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import zmq.auth
from conftest import Bus
from pgcluster import free_port


def make_keys(directory: Path, names: list[str]) -> None:
    """Write a CURVE key pair ``NAME.key`` / ``NAME.key_secret`` for each name."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        _, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)  # as busctl keygen writes it; pgcluster refuses a secret key others may read


class Peers:
    """The inquiry endpoints and keys of a set of busd instances (nodes and a witness)."""

    def __init__(self, keys: Path, names: list[str]) -> None:
        self.keys = keys
        self.ports = {name: free_port() for name in names}
        make_keys(keys, names)

    def endpoint(self, name: str) -> str:
        """Return ``name``'s inquiry endpoint."""
        return f"tcp://127.0.0.1:{self.ports[name]}"

    def peer(self, name: str) -> dict[str, str]:
        """Return the ``{ name, endpoint, public_key }`` table of ``name``."""
        return {"name": name, "endpoint": self.endpoint(name), "public_key": str(self.keys / f"{name}.key")}

    def table(self, name: str, *, role: str = "node", neighbours: tuple[str, ...] = (), witness: str = "",
              **options: Any) -> dict[str, Any]:
        """Return a ``pgcluster`` receiver table for ``name``."""
        table: dict[str, Any] = {
            "type": "receiver", "builtin": "pgcluster", "role": role, "listen": self.endpoint(name),
            "secret_key": str(self.keys / f"{name}.key_secret"), "public_key": str(self.keys / f"{name}.key"),
            "timeout": 0.3, "interval": 0.3, **options}
        if neighbours:
            table["neighbours"] = [self.peer(n) for n in neighbours]
        if witness:
            table["witness"] = self.peer(witness)
        return table


class Buses:
    """One :class:`Bus` per name, each in its own directory with its own hostname (the name)."""

    def __init__(self, names: list[str]) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pgb", dir="/tmp"))
        self.bus = {name: Bus(self.base / name) for name in names}
        for b in self.bus.values():
            b.base.mkdir()

    def __getitem__(self, name: str) -> Bus:
        return self.bus[name]

    def write(self, name: str, plugins: dict[str, dict[str, Any]]) -> None:
        """Write ``name``'s configuration (hostname = name)."""
        self.bus[name].write(plugins, main={"hostname": name})

    def status(self, name: str, plugin: str = "pgc") -> dict[str, Any]:
        """Return a plugin's status file (``{}`` while there is none)."""
        path = self.bus[name].runtime_dir / "status" / f"{plugin}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def decision(self, name: str) -> dict[str, Any]:
        """Return the last decision of ``name``'s pgcluster receiver (``{}`` before the first)."""
        return self.status(name).get("decision") or {}

    def close(self) -> None:
        """Stop every busd and remove the directories."""
        for b in self.bus.values():
            b.close()
        shutil.rmtree(self.base, ignore_errors=True)
