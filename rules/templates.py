"""Payload templates: ``{{ field }}`` placeholders filled from the rule's vocabulary.

A payload is any YAML mapping; every string in it may hold placeholders.
A string that is exactly one placeholder keeps the value's type (a number
stays a number in the action's JSON); placeholders inside longer text are
formatted as text. Fields are checked when the rule loads, so an unknown
field is an error in the rule file, never a blank in a customer's message.

>>> t = Template.of({"title": "{{ cart_items }} items waiting", "value": "{{ cart_value }}"})
>>> t.render({"cart_items": 2, "cart_value": 149.5}.get)
{'title': '2 items waiting', 'value': 149.5}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engage.rules.expr import Lookup, Names, did_you_mean

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")
_WHOLE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}$")


def fields_in(payload: Any) -> list[tuple[str, str]]:
    """``(path in the payload, field)`` for every placeholder, in document order."""
    out: list[tuple[str, str]] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            out.extend((path, m.group(1)) for m in _PLACEHOLDER.finditer(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
    walk(payload, "")
    return out


def check_template(payload: Any, names: Names) -> list[str]:
    """Messages for every placeholder naming an unknown field, or a stray ``{{``."""
    errors = []
    for path, field in fields_in(payload):
        if not names.allows(field):
            errors.append(f"payload {path}: unknown field {field!r} in template"
                          f"{did_you_mean(field, names.exact)}")

    def stray(value: Any, path: str) -> None:
        if isinstance(value, str):
            if "{{" in _PLACEHOLDER.sub("", value) or "}}" in _PLACEHOLDER.sub("", value):
                errors.append(f"payload {path}: unbalanced or malformed '{{{{ }}}}' placeholder")
        elif isinstance(value, dict):
            for k, v in value.items():
                stray(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                stray(v, f"{path}[{i}]")
    stray(payload, "")
    return errors


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Template:
    """A payload with placeholders, ready to render for one decision."""

    payload: Any

    @staticmethod
    def of(payload: Any) -> "Template":
        """Wrap an (already checked) payload."""
        return Template(payload)

    def render(self, get: Lookup) -> Any:
        """The payload with every placeholder replaced by the field's current value."""
        return _render(self.payload, get)

    def fields(self) -> list[str]:
        """Fields the template reads."""
        return [f for _, f in fields_in(self.payload)]


def _render(value: Any, get: Lookup) -> Any:
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return get(whole.group(1))
        if "{{" not in value:
            return value
        return _PLACEHOLDER.sub(lambda m: _text(get(m.group(1))), value)
    if isinstance(value, dict):
        return {k: _render(v, get) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, get) for v in value]
    return value
