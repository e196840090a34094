"""Rule files (YAML) to a :class:`~engage.rules.model.RuleSet`, or errors a marketer can act on.

Every problem is reported as ``file:line: message``, all of them at once,
not just the first: unknown keys (with a did-you-mean), wrong types, unknown
event types, unknown fields in conditions and templates (with the column
inside the condition), duplicate ids, bad durations. YAML is read with the
safe loader only, and keys are checked for duplicates (which plain YAML
loaders silently resolve to the last one).

A file is accepted or refused as a whole: one bad rule refuses its file, so
a running engine keeps that file's previous version (see hot reload).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from engage.events import EVENT_TYPES
from engage.rules.expr import Condition, ExprError, Names, did_you_mean
from engage.rules.model import (TRANSITION_KINDS, AbsenceTrigger, Action, Cap, Eligibility,
                                EventTrigger, Policy, Preferences, QuietHours, Rule, RuleSet,
                                ScheduleTrigger, TagDef, TransitionTrigger, Trigger, Variant,
                                rule_version)
from engage.rules.templates import Template, check_template
from engage.rules.vocabulary import CHANNELS, FUNCTIONS, customer_fields, names_for
from engage.state.customer import StateConfig
from engage.state.windows import parse_duration

#: Where the default catalog lives (used when ENGAGE_RULES is not set).
CATALOG_DIR = Path(__file__).resolve().parent / "catalog"

_RULE_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
SCHEDULE_DATES = ("birthday",)
TOP_KEYS = ("rules", "policy", "tags", "preferences")


@dataclass(frozen=True)
class RuleError:
    """One problem in a rule file, where a person can find it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RuleLoadError(ValueError):
    """Rule files that cannot be loaded; ``errors`` lists every problem found."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


# ---------------------------------------------------------------- YAML with positions
Path_ = tuple[Any, ...]


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Doc:
    """A parsed file: plain data, the line of every key and value, and errors so far."""

    def __init__(self, file: str, text: str = "") -> None:
        self.file = file
        self.lines = text.splitlines()
        self.errors: list[RuleError] = []
        self.key_lines: dict[Path_, int] = {}
        self.nodes: dict[Path_, yaml.Node] = {}
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, line: int, message: str) -> None:
        self.errors.append(RuleError(self.file, line, message))

    def line(self, path: Path_) -> int:
        """1-based line of the key at ``path`` (or of its value, for list items)."""
        if path in self.key_lines:
            return self.key_lines[path]
        node = self.nodes.get(path)
        if node is not None:
            return node.start_mark.line + 1
        return self.line(path[:-1]) if path else 1

    def data(self, node: yaml.Node, path: Path_) -> Any:
        self.nodes[path] = node
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            # Composing never runs a tag's constructor; refusing here makes
            # sure nothing later could either.
            self.error(node.start_mark.line + 1, f"unsupported YAML tag {node.tag!r}: rule files "
                                                 "hold plain data only")
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                line = knode.start_mark.line + 1
                if not isinstance(knode, yaml.ScalarNode):
                    self.error(line, "keys must be plain names")
                    continue
                key = knode.value
                if key in out:
                    self.error(line, f"duplicate key {key!r} (the first one would be silently lost)")
                    continue
                self.key_lines[path + (key,)] = line
                out[key] = self.data(vnode, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.data(child, path + (i,)) for i, child in enumerate(node.value)]
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(node.start_mark.line + 1, f"unsupported value: {exc}".splitlines()[0])
            return None


def _parse_yaml(text: str, doc: _Doc) -> Any:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and mark is not None and start.line != mark.line:
            # The parser notices at the next line what went wrong on an earlier one.
            problem += f" ({context} that starts at line {start.line + 1})"
        doc.error(mark.line + 1 if mark else 1, f"not valid YAML: {problem}")
        return None
    if root is None:
        return None
    return doc.data(root, ())


# ---------------------------------------------------------------- typed access
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
               dict: "a mapping of keys to values", list: "a list"}


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    return {str: "a string", int: "a number", float: "a number", dict: "a mapping",
            list: "a list"}.get(type(value), type(value).__name__)


class _Section:
    """A mapping in the file, with typed getters that record errors instead of raising."""

    def __init__(self, doc: _Doc, path: Path_, value: dict[str, Any], where: str) -> None:
        self.doc = doc
        self.path = path
        self.value = value
        self.where = where   # "rule 'x'", for messages

    def line(self, key: str | None = None) -> int:
        return self.doc.line(self.path + (key,) if key is not None else self.path)

    def error(self, key: str | None, message: str) -> None:
        self.doc.error(self.line(key), message)

    def keys(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
        for key in self.value:
            if key not in allowed:
                self.error(key, f"unknown key {key!r} in {self.where}{did_you_mean(key, allowed)}")
        for key in required:
            if key not in self.value:
                self.error(None, f"{self.where} needs {key!r}")

    def typed(self, key: str, kind: type, default: Any = None) -> Any:
        if key not in self.value:
            return default
        value = self.value[key]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            self.error(key, f"{key} must be {_TYPE_NAMES[kind]}, not {_type_name(value)}")
            return default
        return value

    def section(self, key: str, where: str) -> "_Section | None":
        value = self.typed(key, dict)
        return None if value is None else _Section(self.doc, self.path + (key,), value, where)

    def duration(self, key: str, default: int | None = None, allow_negative: bool = False) -> int | None:
        if key not in self.value:
            return default
        raw = self.value[key]
        if not isinstance(raw, str):
            self.error(key, f"{key} must be a duration such as '24h' or '7d', not {_type_name(raw)}")
            return default
        text = raw.strip()
        sign = 1
        if allow_negative and text.startswith("-"):
            sign, text = -1, text[1:]
        try:
            return sign * parse_duration(text)
        except ValueError as exc:
            self.error(key, f"{key}: {exc}")
            return default

    def names(self, key: str, what: str, choices: tuple[str, ...] | frozenset[str],
              default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """One name or a list of names, each from ``choices``."""
        if key not in self.value:
            return default
        raw = self.value[key]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            self.error(key, f"{key} must be {what} or a list of them")
            return default
        for item in items:
            if item not in choices:
                self.error(key, f"unknown {what} {item!r}{did_you_mean(item, choices)}")
        return tuple(items)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.typed(key, str)
        if value is None:
            return default
        if value not in choices:
            self.error(key, f"{key} must be one of {', '.join(choices)}, not {value!r}"
                       f"{did_you_mean(value, choices)}")
            return default
        return value

    def condition(self, key: str, names: Names, index: int | None = None) -> Condition | None:
        """A condition, with an error pointing at the line and column of the problem."""
        path = self.path + (key,) if index is None else self.path + (key, index)
        text = self.value[key] if index is None else self.value[key][index]
        label = key if index is None else f"{key}[{index}]"
        if not isinstance(text, str):
            self.doc.error(self.doc.line(path), f"{label} must be a condition written as text, "
                                                f"not {_type_name(text)}")
            return None
        try:
            return Condition.of(text, names)
        except ExprError as exc:
            line, column = _expr_position(self.doc.nodes.get(path), text, exc.column,
                                          self.doc.lines)
            line = line or self.doc.line(path)
            self.doc.error(line, f"{label}: column {column}: {exc.message}")
            return None


def _expr_position(node: yaml.Node | None, text: str, column: int,
                   lines: list[str]) -> tuple[int, int]:
    """File line and column of ``column`` (1-based) inside a scalar's text."""
    if node is None or not isinstance(node, yaml.ScalarNode):
        return 0, column
    before = text[:column - 1]
    if node.style in ("|", ">") or "\n" in before:
        # Block scalar: the text starts on the next line, indented.
        line = node.start_mark.line + 1 + before.count("\n") + (1 if node.style in ("|", ">") else 0)
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        indent = len(source) - len(source.lstrip(" "))
        return line, indent + column - (before.rfind("\n") + 1)
    quote = 1 if node.style in ("'", '"') else 0
    return node.start_mark.line + 1, node.start_mark.column + quote + column


# ---------------------------------------------------------------- rules
RULE_KEYS = ("id", "description", "enabled", "transactional", "trigger", "when", "action",
             "eligibility", "cancel_on", "cancel_when", "on_quiet", "conflict_group", "cap",
             "attribution_window")
TRIGGER_KEYS = ("event", "where", "after", "missing", "within", "schedule", "transition")
ACTION_KEYS = ("channel", "priority", "payload", "variants", "control")
VARIANT_KEYS = ("name", "weight", "payload", "channel")
CAP_KEYS = ("max", "per", "window")


def _trigger(s: _Section, cfg: StateConfig) -> tuple[Trigger | None, Names]:
    s.keys(TRIGGER_KEYS)
    kinds = [k for k in ("event", "after", "schedule", "transition") if k in s.value]
    if len(kinds) != 1:
        s.error(None, "a trigger needs exactly one of 'event', 'after' (with 'missing' and "
                      f"'within'), 'schedule' or 'transition'; found {kinds or 'none'}")
        return None, names_for(cfg)
    kind = kinds[0]
    if kind in ("schedule", "transition"):
        for extra in ("where", "missing", "within"):
            if extra in s.value:
                s.error(extra, f"{extra!r} does not apply to a {kind} trigger")
    if kind == "event":
        for extra in ("missing", "within"):
            if extra in s.value:
                s.error(extra, f"{extra!r} belongs to an absence trigger: use 'after' instead "
                               "of 'event'")
        types = s.names("event", "event type", EVENT_TYPES)
        names = names_for(cfg, types)
        where = s.condition("where", names) if "where" in s.value else None
        return (EventTrigger(types, where) if types else None), names
    if kind == "after":
        after = s.names("after", "event type", EVENT_TYPES)
        missing = s.names("missing", "event type", EVENT_TYPES)
        if "missing" not in s.value:
            s.error(None, "an absence trigger needs 'missing': the event types whose absence it waits for")
        within = s.duration("within")
        if "within" not in s.value:
            s.error(None, "an absence trigger needs 'within': how long to wait, e.g. '24h'")
        elif within is not None and within <= 0:
            s.error("within", "within must be longer than zero")
        names = names_for(cfg, after)
        where = s.condition("where", names) if "where" in s.value else None
        if after and missing and within:
            return AbsenceTrigger(after, missing, within, where), names
        return None, names
    if kind == "schedule":
        sch = s.section("schedule", "schedule")
        if sch is None:
            return None, names_for(cfg)
        sch.keys(("date", "offset", "at"), required=("date",))
        date = sch.choice("date", SCHEDULE_DATES, "birthday")
        offset = sch.duration("offset", 0, allow_negative=True)
        at = sch.typed("at", str, "09:00")
        m = _CLOCK.match(at or "")
        if m is None:
            sch.error("at", f"at must be a local time such as '09:00', not {at!r}")
        minute = int(m.group(1)) * 60 + int(m.group(2)) if m else 540
        return ScheduleTrigger(date, offset or 0, minute), names_for(cfg)
    raw = s.value["transition"]
    if not isinstance(raw, dict) or len(raw) != 1:
        s.error("transition", "transition must be one of "
                              f"{', '.join(TRANSITION_KINDS)} with the name entered "
                              "(e.g. 'stage_entered: declining'), or null for any")
        return None, names_for(cfg, transition=True)
    (tkind, tname), = raw.items()
    if tkind not in TRANSITION_KINDS:
        s.doc.error(s.doc.line(s.path + ("transition", tkind)),
                    f"unknown transition {tkind!r}{did_you_mean(tkind, TRANSITION_KINDS)}")
        return None, names_for(cfg, transition=True)
    if tname is not None and not isinstance(tname, str):
        s.doc.error(s.doc.line(s.path + ("transition", tkind)),
                    f"{tkind} must name what was entered, or be null for any")
        tname = None
    return TransitionTrigger(tkind, tname), names_for(cfg, transition=True)


def _payload(s: _Section, key: str, names: Names) -> Template:
    raw = s.value.get(key, {})
    if not isinstance(raw, dict):
        s.error(key, f"{key} must be a mapping of fields to values, not {_type_name(raw)}")
        return Template.of({})
    for message in check_template(raw, names):
        s.error(key, message)
    return Template.of(raw)


def _share(s: _Section, key: str) -> float:
    if key not in s.value:
        return 0.0
    raw = s.value[key]
    share: float | None = None
    if isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            share = float(raw.strip()[:-1]) / 100
        except ValueError:
            share = None
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 <= raw < 1:
        share = float(raw)
    if share is None or not 0 <= share < 1:
        s.error(key, f"{key} must be a share such as '10%' or 0.1 (under 100%), not {raw!r}")
        return 0.0
    return share


def _action(s: _Section, names: Names) -> Action | None:
    s.keys(ACTION_KEYS, required=("channel",))
    channel = s.choice("channel", CHANNELS + ("preferred",), "preferred")
    priority = s.typed("priority", int, 50)
    if not 0 <= priority <= 100:
        s.error("priority", f"priority must be between 0 and 100, not {priority}")
    payload = _payload(s, "payload", names)
    variants: list[Variant] = []
    raw_variants = s.typed("variants", list, [])
    seen: set[str] = set()
    for i, raw in enumerate(raw_variants):
        path = s.path + ("variants", i)
        if not isinstance(raw, dict):
            s.doc.error(s.doc.line(path), f"variants[{i}] must be a mapping with a name and a weight")
            continue
        v = _Section(s.doc, path, raw, f"variant {raw.get('name', i)!r}")
        v.keys(VARIANT_KEYS, required=("name",))
        name = v.typed("name", str, f"v{i}")
        if name in seen:
            v.error("name", f"duplicate variant name {name!r}")
        seen.add(name)
        weight = v.typed("weight", int, 1)
        if weight <= 0:
            v.error("weight", "weight must be a positive whole number")
            weight = 1
        vchannel = v.choice("channel", CHANNELS + ("preferred",), "") or None
        merged = {**payload.payload, **v.value.get("payload", {})} \
            if isinstance(v.value.get("payload", {}), dict) else payload.payload
        _payload(v, "payload", names)
        variants.append(Variant(name, weight, Template.of(merged), vchannel))
    if len(raw_variants) == 1:
        s.error("variants", "one variant is not an A/B test: give two or more, or none")
    control = _share(s, "control")
    return Action(channel, payload, priority, tuple(variants), control)


def _cap(s: _Section | None) -> Cap | None:
    if s is None:
        return None
    s.keys(CAP_KEYS, required=("max", "per"))
    most = s.typed("max", int, 1)
    if most < 0:
        s.error("max", "max must not be negative")
    per = s.duration("per", 7 * 86_400_000) or 7 * 86_400_000
    window = s.choice("window", ("rolling", "calendar"), "rolling")
    return Cap(most, per, window == "calendar")


def _eligibility(s: _Section) -> Eligibility:
    if "eligibility" not in s.value:
        return Eligibility()
    raw = s.value["eligibility"]
    if raw in ("once", "always"):
        return Eligibility(raw)
    if isinstance(raw, dict) and len(raw) == 1:
        e = _Section(s.doc, s.path + ("eligibility",), raw, "eligibility")
        e.keys(("every", "cooldown"))
        (mode, _), = raw.items()
        if mode in ("every", "cooldown"):
            period = e.duration(mode)
            if period is not None and period > 0:
                return Eligibility(mode, period)
            if period is not None:
                e.error(mode, f"{mode} must be longer than zero")
        return Eligibility()
    s.error("eligibility", "eligibility must be 'once', 'always', 'every: <duration>' "
                           "or 'cooldown: <duration>'")
    return Eligibility()


def _item(doc: _Doc, path: Path_, raw: Any, what: str, keys: tuple[str, ...],
          required: tuple[str, ...], why: str = "") -> tuple[_Section, str, int] | None:
    """One rule or tag: its section, its checked id, and the error count before it."""
    if not isinstance(raw, dict):
        doc.error(doc.line(path), f"each {what} must be a mapping, not {_type_name(raw)}")
        return None
    rid = raw.get("id")
    s = _Section(doc, path, raw, f"{what} {rid!r}" if isinstance(rid, str) else f"a {what}")
    before = len(doc.errors)
    s.keys(keys, required=required)
    item_id = s.typed("id", str, "")
    if item_id and not _RULE_ID.match(item_id):
        s.error("id", f"{what} id {item_id!r} must be lower case letters, digits and '_', "
                      f"starting with a letter{why}")
    return s, item_id, before


def _rule(doc: _Doc, path: Path_, raw: Any, cfg: StateConfig) -> Rule | None:
    item = _item(doc, path, raw, "rule", RULE_KEYS, ("id", "trigger", "action"),
                 " (it appears in metrics and action ids)")
    if item is None:
        return None
    s, rule_id, before = item
    tsec = s.section("trigger", "trigger")
    trigger, names = _trigger(tsec, cfg) if tsec else (None, names_for(cfg))
    conditions: list[Condition] = []
    if "when" in raw:
        when = raw["when"]
        if isinstance(when, list):
            for i in range(len(when)):
                c = s.condition("when", names, i)
                if c is not None:
                    conditions.append(c)
        else:
            c = s.condition("when", names)
            if c is not None:
                conditions.append(c)
    asec = s.section("action", "action")
    action = _action(asec, names) if asec else None
    cancel_on = s.names("cancel_on", "event type", EVENT_TYPES)
    cancel_when = s.condition("cancel_when", names_for(cfg)) if "cancel_when" in raw else None
    rule = Rule(
        id=rule_id,
        version=rule_version(raw),
        source=f"{doc.file}:{doc.line(path)}",
        trigger=trigger or EventTrigger(("login",)),
        action=action or Action("preferred", Template.of({})),
        description=s.typed("description", str, ""),
        enabled=s.typed("enabled", bool, True),
        transactional=s.typed("transactional", bool, False),
        conditions=tuple(conditions),
        eligibility=_eligibility(s),
        cancel_on=cancel_on,
        cancel_when=cancel_when,
        on_quiet=s.choice("on_quiet", ("defer", "drop"), "defer"),
        conflict_group=s.typed("conflict_group", str, None),
        cap=_cap(s.section("cap", "cap")),
        attribution_window_ms=s.duration("attribution_window", 7 * 86_400_000) or 7 * 86_400_000,
    )
    return rule if len(doc.errors) == before else None


# ---------------------------------------------------------------- policy
POLICY_KEYS = ("caps", "quiet_hours", "conflict_window", "arbitration")


def _clock(s: _Section, key: str, default: int) -> int:
    raw = s.typed(key, str)
    if raw is None:
        return default
    m = _CLOCK.match(raw)
    if m is None:
        s.error(key, f"{key} must be a local time such as '21:00', not {raw!r}")
        return default
    return int(m.group(1)) * 60 + int(m.group(2))


def _policy(s: _Section) -> Policy:
    s.keys(POLICY_KEYS)
    policy = Policy()
    caps = s.section("caps", "caps")
    if caps is not None:
        caps.keys(("global", "channels"))
        if "global" in caps.value and caps.value["global"] is None:
            policy = replace(policy, global_cap=None)
        elif "global" in caps.value:
            policy = replace(policy, global_cap=_cap(caps.section("global", "global cap")))
        channels = caps.section("channels", "channel caps")
        if channels is not None:
            per: list[tuple[str, Cap]] = []
            for name in channels.value:
                if name not in CHANNELS:
                    channels.error(name, f"unknown channel {name!r}{did_you_mean(name, CHANNELS)}")
                    continue
                cap = _cap(channels.section(name, f"{name} cap"))
                if cap is not None:
                    per.append((name, cap))
            policy = replace(policy, channel_caps=tuple(per))
    quiet = s.section("quiet_hours", "quiet_hours")
    if quiet is not None:
        quiet.keys(("start", "end", "timezone"))
        tz = quiet.typed("timezone", str, "UTC")
        try:
            from zoneinfo import ZoneInfo  # noqa: PLC0415

            ZoneInfo(tz)
        except Exception:  # noqa: BLE001 - any failure means: not a zone we can use
            quiet.error("timezone", f"unknown time zone {tz!r} (use an IANA name such as "
                                    "'Europe/Berlin')")
            tz = "UTC"
        policy = replace(policy, quiet_hours=QuietHours(_clock(quiet, "start", 21 * 60),
                                                        _clock(quiet, "end", 8 * 60), tz))
    window = s.duration("conflict_window")
    if window is not None:
        policy = replace(policy, conflict_window_ms=window)
    arb = s.section("arbitration", "arbitration")
    if arb is not None:
        arb.keys(("mode", "max_wait"))
        policy = replace(policy, arbitration=arb.choice("mode", ("defer", "drop"), "defer"),
                         max_wait_ms=arb.duration("max_wait", policy.max_wait_ms) or 0)
    return policy


# ---------------------------------------------------------------- tags
TAG_KEYS = ("id", "when", "layer", "description")
TAG_LAYERS = ("dynamic", "static", "predictive")
PREFERENCE_KEYS = ("half_life", "min_score", "top_categories", "top_styles", "price_bands",
                   "weights")


def tag_names(cfg: StateConfig) -> Names:
    """What a tag's condition may read: the customer's fields, but not other tags
    (tags are evaluated together, so one cannot wait for another)."""
    return Names(frozenset(customer_fields(cfg)) - {"tags"},
                 functions=tuple(f for f in FUNCTIONS if f[0] != "has_tag"))


def _tag(doc: _Doc, path: Path_, raw: Any, cfg: StateConfig) -> TagDef | None:
    item = _item(doc, path, raw, "tag", TAG_KEYS, ("id", "when"))
    if item is None:
        return None
    s, tag_id, before = item
    when = s.condition("when", tag_names(cfg)) if "when" in raw else None
    layer = s.choice("layer", TAG_LAYERS, "dynamic")
    if len(doc.errors) > before or when is None:
        return None
    return TagDef(tag_id, when, layer, s.typed("description", str, ""),
                  f"{doc.file}:{doc.line(path)}")


def _preferences(s: _Section) -> Preferences:
    s.keys(PREFERENCE_KEYS)
    p = Preferences()
    half_life = s.duration("half_life", p.half_life_ms)
    if half_life is None or half_life <= 0:
        if "half_life" in s.value and half_life is not None:
            s.error("half_life", "half_life must be longer than zero")
        half_life = p.half_life_ms
    min_score = s.typed("min_score", float, p.min_score)
    if min_score <= 0:
        s.error("min_score", "min_score must be more than zero (scores only fade towards it)")
    tops = {}
    for key in ("top_categories", "top_styles"):
        value = s.typed(key, int, getattr(p, key))
        if value < 0:
            s.error(key, f"{key} must be 0 or more")
        tops[key] = value
    bands = p.price_bands
    bsec = s.section("price_bands", "price_bands")
    if bsec is not None:
        parsed = []
        for name in bsec.value:
            low = bsec.typed(name, float)
            if low is not None:
                parsed.append((name, float(low)))
        parsed.sort(key=lambda b: b[1])
        if parsed and parsed[0][1] > 0:
            bsec.error(None, "price_bands must start at 0 (every price falls in a band)")
        bands = tuple(parsed) or bands
    weights = p.weights
    wsec = s.section("weights", "weights")
    if wsec is not None:
        known = tuple(t for t, _ in p.weights)
        given = dict(p.weights)   # what is not named keeps its default
        for etype in wsec.value:
            if etype not in known:
                wsec.error(etype, f"weights: {etype!r} is not one of {', '.join(known)}"
                                  f"{did_you_mean(etype, known)}")
                continue
            w = wsec.typed(etype, float)
            if w is not None:
                if w < 0:
                    wsec.error(etype, f"weights: {etype} must be 0 or more")
                given[etype] = float(w)
        weights = tuple(given.items())
    return Preferences(half_life, float(min_score), tops["top_categories"], tops["top_styles"],
                       bands, weights)


# ---------------------------------------------------------------- files
@dataclass(frozen=True)
class FileResult:
    """One file's rules, policy and tags, or its errors (then nothing of it is used)."""

    file: str
    rules: tuple[Rule, ...]
    policy: Policy | None
    errors: tuple[RuleError, ...]
    tags: tuple[TagDef, ...] = ()
    preferences: Preferences | None = None


def load_text(text: str, file: str, cfg: StateConfig) -> FileResult:
    """Load one file's text; every error is collected, none raised."""
    doc = _Doc(file, text)
    data = _parse_yaml(text, doc)
    rules: list[Rule] = []
    tags: list[TagDef] = []
    policy: Policy | None = None
    preferences: Preferences | None = None
    if data is None and not doc.errors:
        doc.error(1, "empty file: expected 'rules:', 'policy:', 'tags:' or 'preferences:'")
    elif isinstance(data, dict):
        top = _Section(doc, (), data, "a rule file")
        top.keys(TOP_KEYS)
        if not any(k in data for k in TOP_KEYS):
            doc.error(1, "a rule file needs 'rules:' (a list of rules), 'policy:', 'tags:' "
                         "or 'preferences:'")
        for i, raw in enumerate(top.typed("rules", list, [])):
            rule = _rule(doc, ("rules", i), raw, cfg)
            if rule is not None:
                rules.append(rule)
        for i, raw in enumerate(top.typed("tags", list, [])):
            tag = _tag(doc, ("tags", i), raw, cfg)
            if tag is not None:
                tags.append(tag)
        psec = top.section("policy", "policy")
        if psec is not None:
            policy = _policy(psec)
        prefs = top.section("preferences", "preferences")
        if prefs is not None:
            preferences = _preferences(prefs)
        for section, what in (("rules", "rule"), ("tags", "tag")):
            seen: dict[str, int] = {}
            for i, raw in enumerate(data.get(section) or []):
                rid = raw.get("id") if isinstance(raw, dict) else None
                if isinstance(rid, str):
                    line = doc.line((section, i, "id"))
                    if rid in seen:
                        doc.error(line, f"duplicate {what} id {rid!r} (first defined at line "
                                        f"{seen[rid]})")
                    else:
                        seen[rid] = line
    elif data is not None:
        doc.error(1, f"a rule file must be a mapping with 'rules:', not {_type_name(data)}")
    errors = tuple(sorted(doc.errors, key=lambda e: e.line))
    if errors:
        return FileResult(file, (), None, errors)
    return FileResult(file, tuple(rules), policy, (), tuple(tags), preferences)


def rule_files(paths: list[str]) -> tuple[list[Path], list[RuleError]]:
    """The YAML files named by ``paths`` (directories are searched), sorted."""
    files: list[Path] = []
    errors: list[RuleError] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(x for x in p.rglob("*") if x.suffix in (".yaml", ".yml") and x.is_file())
            if not found:
                errors.append(RuleError(raw, 0, "no rule files (*.yaml, *.yml) in this directory"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append(RuleError(raw, 0, "no such file or directory"))
    return files, errors


def load_files(files: list[Path], cfg: StateConfig) -> list[FileResult]:
    """Each file loaded on its own (a bad file never hides another's errors)."""
    out = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.append(FileResult(str(f), (), None, (RuleError(str(f), 0, f"cannot read: {exc}"),)))
            continue
        out.append(load_text(text, str(f), cfg))
    return out


def _unique(what: str, items: list[Any], errors: list[RuleError]) -> list[Any]:
    """``items`` (rules or tags) without the ones whose id came before, each reported."""
    first: dict[str, str] = {}
    kept = []
    for item in items:
        if item.id in first:
            file, line = item.source.rsplit(":", 1)
            errors.append(RuleError(file, int(line), f"duplicate {what} id {item.id!r} "
                                                     f"(first defined at {first[item.id]})"))
            continue
        first[item.id] = item.source
        kept.append(item)
    return kept


def _single(section: str, found: list[tuple[str, Any]], errors: list[RuleError]) -> Any:
    """The one file's ``section`` (a second one is an error), or None."""
    present = [(file, value) for file, value in found if value is not None]
    for file, _ in present[1:]:
        errors.append(RuleError(file, 1, f"a second '{section}:' (the first is in "
                                         f"{present[0][0]}); keep one"))
    return present[0][1] if present else None


def combine(results: list[FileResult]) -> tuple[RuleSet, list[RuleError]]:
    """The rule set of the accepted files, and the errors that span files."""
    errors: list[RuleError] = []
    accepted = [res for res in results if not res.errors]
    rules = _unique("rule", [r for res in accepted for r in res.rules], errors)
    tags = _unique("tag", [t for res in accepted for t in res.tags], errors)
    policy = _single("policy", [(res.file, res.policy) for res in accepted], errors)
    preferences = _single("preferences", [(res.file, res.preferences) for res in accepted],
                          errors)
    return RuleSet(tuple(rules), policy or Policy(), tuple(r.file for r in results),
                   tuple(tags), preferences), errors


def validate(paths: list[str], cfg: StateConfig | None = None) -> list[RuleError]:
    """Every error in the rule files under ``paths`` (empty: all valid)."""
    cfg = cfg or StateConfig.default()
    files, errors = rule_files(paths)
    results = load_files(files, cfg)
    for res in results:
        errors.extend(res.errors)
    errors.extend(combine(results)[1])
    return errors


def load_checked(paths: list[str], cfg: StateConfig) -> tuple[RuleSet, list[FileResult]]:
    """The rule set under ``paths`` and each file's result; raises :class:`RuleLoadError`
    listing every error of every file."""
    files, errors = rule_files(paths)
    results = load_files(files, cfg)
    for res in results:
        errors.extend(res.errors)
    ruleset, cross = combine(results)
    errors.extend(cross)
    if errors:
        raise RuleLoadError(errors)
    return ruleset, results


def load_rules(paths: list[str] | None = None, cfg: StateConfig | None = None) -> RuleSet:
    """The rule set under ``paths`` (default: the shipped catalog); raises :class:`RuleLoadError`."""
    return load_checked(paths or [str(CATALOG_DIR)], cfg or StateConfig.default())[0]
