"""Parser ``pattern``: turns lines into synthetic events with regular-expression rules.

Each rule is a table: ``match`` (a regex searched in the event's ``msg``), ``event_type``,
optional ``system`` (default: the input's), ``severity`` (default info), ``dev_name`` and ``msg``
(templates filled from the named groups, e.g. ``"{dev}"``), and ``contains`` (a plain substring
that must be present before the regex is tried: a cheap prefilter). The first matching rule wins;
the named groups go to ``extensions``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bus.config import Option
from bus.event import SEVERITIES, Event
from bus.plugin import Parser, run

OPTIONS = {
    "rules": Option(list, Option.REQUIRED, "array of rule tables (match, event_type, ...)"),
}
_RULE_KEYS = {"match", "event_type", "system", "severity", "dev_name", "msg", "contains"}


@dataclass(frozen=True)
class Rule:
    """One compiled rule."""

    regex: re.Pattern[str]
    event_type: str
    system: str | None
    severity: str
    dev_name: str
    msg: str | None
    contains: str | None


def compile_rules(rules: list[Any]) -> list[Rule]:
    """Compile and check the ``rules`` option.

    Raises:
        ValueError: naming the rule (``rules[2].match``) and what is wrong with it.
    """
    out = []
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(rule, dict):
            raise ValueError(f"{where}: must be a table")
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown key (allowed: {', '.join(sorted(_RULE_KEYS))})")
        for key in ("match", "event_type"):
            if not isinstance(rule.get(key), str) or not rule[key]:
                raise ValueError(f"{where}.{key}: is required (a non-empty string)")
        try:
            regex = re.compile(rule["match"])
        except re.error as exc:
            raise ValueError(f"{where}.match: not a valid regular expression ({exc})") from None
        severity = rule.get("severity", "info")
        if severity not in SEVERITIES:
            raise ValueError(f"{where}.severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
        out.append(Rule(regex, rule["event_type"], rule.get("system"), severity, rule.get("dev_name", ""),
                        rule.get("msg"), rule.get("contains")))
    return out


def check_options(options: dict[str, Any]) -> None:
    """Validate options at configuration time (called by busd's config loader)."""
    compile_rules(options["rules"])


class Pattern(Parser):
    """Match each event's ``msg`` against the rules."""

    async def setup(self) -> None:
        """Compile the rules once."""
        self.rules = compile_rules(self.options["rules"])

    def handle(self, event: Event) -> Event | None:
        """Return one synthetic event for the first rule that matches, else nothing."""
        text = event.get("msg", "")
        for rule in self.rules:
            if rule.contains is not None and rule.contains not in text:
                continue
            m = rule.regex.search(text)
            if m is None:
                continue
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            return self.event(
                rule.system or event["system"], rule.event_type,
                rule.msg.format_map(_Defaults(groups)) if rule.msg else text,
                severity=rule.severity, dev_name=rule.dev_name.format_map(_Defaults(groups)),
                timestamp=event["timestamp"],
                extensions={**groups, "raw_event_id": event["event_id"], "raw_source": event.get("source", "")})
        return None


class _Defaults(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


if __name__ == "__main__":
    run(Pattern)
