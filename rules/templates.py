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


def _strings(payload: Any, path: str = "") -> list[tuple[str, str]]:
    """``(path in the payload, text)`` for every string, in document order."""
    if isinstance(payload, str):
        return [(path, payload)]
    out: list[tuple[str, str]] = []
    if isinstance(payload, dict):
        for k, v in payload.items():
            out.extend(_strings(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(payload, list):
        for i, v in enumerate(payload):
            out.extend(_strings(v, f"{path}[{i}]"))
    return out


def fields_in(payload: Any) -> list[tuple[str, str]]:
    """``(path in the payload, field)`` for every placeholder, in document order."""
    return [(path, m.group(1)) for path, text in _strings(payload)
            for m in _PLACEHOLDER.finditer(text)]


def check_template(payload: Any, names: Names) -> list[str]:
    """Messages for every placeholder naming an unknown field, or a stray ``{{``."""
    errors = []
    for path, text in _strings(payload):
        for m in _PLACEHOLDER.finditer(text):
            field = m.group(1)
            if not names.allows(field):
                errors.append(f"payload {path}: unknown field {field!r} in template"
                              f"{did_you_mean(field, names.exact)}")
        rest = _PLACEHOLDER.sub("", text)
        if "{{" in rest or "}}" in rest:
            errors.append(f"payload {path}: unbalanced or malformed '{{{{ }}}}' placeholder")
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
