"""A fake sysfs and /dev/disk tree laid out like the real ones, for the parsers' ``sysfs_root``/``dev_root``."""

from __future__ import annotations

import os
from pathlib import Path


class FakeSys:
    """Build ``root/sys`` and ``root/dev`` with the links and files the kernel parsers read.

    Example::

        fake = FakeSys(tmp_path)
        fake.disk("sdf", "8:80", wwid="naa.6001405f1e2d3c4b")
        fake.partition("sdf", 1, "8:81", fs_uuid="0b1e...")
        fake.dm("dm-0", "253:0", name="mpatha", uuid="mpath-3600140...")
        fake.slaves("dm-0", "sdf")   # sdf is a path of mpatha
        options = fake.options   # {"sysfs_root": ..., "dev_root": ...}
    """

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.dev = root / "dev"
        for d in ("block", "class/block", "dev/block", "devices/virtual/block", "bus/scsi/devices"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        for d in ("by-uuid", "by-id"):
            (self.dev / "disk" / d).mkdir(parents=True, exist_ok=True)

    @property
    def options(self) -> dict[str, str]:
        """The parser options that point at this tree."""
        return {"sysfs_root": str(self.sys), "dev_root": str(self.dev)}

    def _device(self, path: Path, kname: str, majmin: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "dev").write_text(majmin + "\n")
        rel = os.path.relpath(path, self.sys / "class" / "block")
        _link(self.sys / "class" / "block" / kname, rel)
        _link(self.sys / "dev" / "block" / majmin, os.path.relpath(path, self.sys / "dev" / "block"))
        return path

    def disk(self, kname: str, majmin: str, wwid: str = "", hctl: str = "0:0:0:0") -> Path:
        """A SCSI disk ``kname`` with ``device/wwid`` (empty: no wwid file), listed in ``bus/scsi/devices/HCTL``."""
        path = self._device(self.sys / "devices" / "scsi" / hctl / "block" / kname, kname, majmin)
        _link(self.sys / "bus" / "scsi" / "devices" / hctl,
              os.path.relpath(self.sys / "devices" / "scsi" / hctl, self.sys / "bus" / "scsi" / "devices"))
        (path / "device").mkdir(exist_ok=True)
        if wwid:
            (path / "device" / "wwid").write_text(wwid + "\n")
        _link(self.sys / "block" / kname, os.path.relpath(path, self.sys / "block"))
        return path

    def partition(self, disk: str, number: int, majmin: str, fs_uuid: str = "") -> Path:
        """Partition ``number`` of ``disk`` (``sdf1``), optionally with a filesystem UUID in /dev/disk/by-uuid."""
        parent = Path(os.path.realpath(self.sys / "class" / "block" / disk))
        kname = f"{disk}{number}"
        path = self._device(parent / kname, kname, majmin)
        (path / "partition").write_text(f"{number}\n")
        if fs_uuid:
            self.fs(kname, fs_uuid)
        return path

    def dm(self, kname: str, majmin: str, name: str, uuid: str) -> Path:
        """A device-mapper device (``dm-0``) with ``dm/name`` and ``dm/uuid``."""
        path = self._device(self.sys / "devices" / "virtual" / "block" / kname, kname, majmin)
        (path / "dm").mkdir(exist_ok=True)
        (path / "dm" / "name").write_text(name + "\n")
        (path / "dm" / "uuid").write_text(uuid + "\n")
        _link(self.sys / "block" / kname, os.path.relpath(path, self.sys / "block"))
        return path

    def slaves(self, dm: str, *devices: str) -> None:
        """Make ``devices`` (kernel names, e.g. the paths of a multipath map) the slaves of ``dm``.

        Creates ``block/dm-0/slaves/sdd`` and, on each device, ``holders/dm-0``.
        """
        holder = Path(os.path.realpath(self.sys / "block" / dm))
        (holder / "slaves").mkdir(exist_ok=True)
        for kname in devices:
            below = Path(os.path.realpath(self.sys / "class" / "block" / kname))
            _link(holder / "slaves" / kname, os.path.relpath(below, holder / "slaves"))
            (below / "holders").mkdir(exist_ok=True)
            _link(below / "holders" / dm, os.path.relpath(holder, below / "holders"))

    def md(self, kname: str, majmin: str, uuid: str) -> Path:
        """An md array (``md0``) whose UUID is in ``/dev/disk/by-id/md-uuid-UUID``."""
        path = self._device(self.sys / "devices" / "virtual" / "block" / kname, kname, majmin)
        _link(self.sys / "block" / kname, os.path.relpath(path, self.sys / "block"))
        _link(self.dev / "disk" / "by-id" / f"md-uuid-{uuid}", f"../../{kname}")
        return path

    def fs(self, kname: str, uuid: str) -> None:
        """A filesystem with ``uuid`` on ``kname``."""
        _link(self.dev / "disk" / "by-uuid" / uuid, f"../../{kname}")


def _link(link: Path, target: str) -> None:
    if link.is_symlink():
        link.unlink()
    link.symlink_to(target)
