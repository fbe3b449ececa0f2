"""Fake ``drbdadm``/``drbdsetup``/``systemctl`` programs that record their calls (time + argv) in a file."""

from __future__ import annotations

from pathlib import Path

_SCRIPT = """#!/bin/sh
line="{name} $*"
printf '%s\\t%s\\n' "$(date +%s.%N)" "$line" >> '{log}'
if [ -f '{fail}' ] && grep -qxF -- "$line" '{fail}'; then
    echo "fake failure: $line" >&2
    exit 1
fi
exit 0
"""


class FakeTools:
    """Executables in ``directory`` that append ``<epoch seconds>\\t<name> <args>`` to ``calls.log``.

    A call whose whole line (``systemctl start b.service``) is in ``fail`` exits 1.
    """

    NAMES = ("drbdadm", "drbdsetup", "systemctl")

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.log = directory / "calls.log"
        self.fail_file = directory / "fail"
        for name in self.NAMES:
            path = directory / name
            path.write_text(_SCRIPT.format(name=name, log=self.log, fail=self.fail_file))
            path.chmod(0o755)

    def path(self, name: str) -> str:
        """The fake program's path (for the plugin's option of that name)."""
        return str(self.dir / name)

    def options(self) -> dict[str, str]:
        """``drbdadm``, ``drbdsetup`` and ``systemctl`` options pointing at the fakes."""
        return {name: self.path(name) for name in self.NAMES}

    def fail(self, *lines: str) -> None:
        """Make these calls fail from now on."""
        with self.fail_file.open("a") as f:
            f.writelines(line + "\n" for line in lines)

    def timed_calls(self, *, skip: tuple[str, ...] = ("systemctl is-active",)) -> list[tuple[float, str]]:
        """``(time, "name args")`` of every complete call so far, without those starting with ``skip``."""
        if not self.log.exists():
            return []
        text = self.log.read_text()
        out = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            stamp, _, call = line.partition("\t")
            if not call.startswith(skip):
                out.append((float(stamp), call))
        return out

    def calls(self, **kw: tuple[str, ...]) -> list[str]:
        """The calls so far, in order (``systemctl is-active`` left out unless ``skip=()``)."""
        return [call for _, call in self.timed_calls(**kw)]
