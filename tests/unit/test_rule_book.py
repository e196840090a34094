"""Hot reload: changed rule files are picked up; a broken one is refused whole and the old one runs on."""

from __future__ import annotations

import os
from pathlib import Path

from engage.monitoring import metrics
from engage.rules.book import RuleBook
from engage.state.customer import StateConfig

GOOD = "rules:\n  - id: {id}\n    trigger: {{event: search}}\n    action: {{channel: {ch}}}\n"


def write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    stamp = path.stat().st_mtime_ns + bump * 1_000_000_000   # a later save, even on coarse clocks
    os.utime(path, ns=(stamp, stamp))


def refused() -> float:
    return metrics.RULE_RELOADS.labels("refused")._value.get()


def test_a_changed_file_is_reloaded_and_a_broken_one_refused_while_the_old_one_runs(
        tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, GOOD.format(id="alpha", ch="push"), 0)
    write(b, GOOD.format(id="beta", ch="push"), 0)
    book = RuleBook.load([str(tmp_path)], StateConfig.default())
    assert [r.id for r in book.current.rules] == ["alpha", "beta"]
    assert book.reload() is False                        # nothing changed

    write(a, GOOD.format(id="alpha", ch="sms"), 1)
    before = book.current.by_id("alpha").version
    assert book.reload() is True
    assert book.current.by_id("alpha").action.channel == "sms"
    assert book.current.by_id("alpha").version != before

    n = refused()
    write(b, GOOD.format(id="beta", ch="pigeon"), 2)     # broken: refused as a whole
    assert book.reload() is False
    assert refused() == n + 1
    assert book.current.by_id("beta").action.channel == "push"
    assert book.reload() is False and refused() == n + 1   # the same bad save is reported once

    write(b, GOOD.format(id="alpha", ch="email"), 3)     # valid alone, but a duplicate id
    assert book.reload() is False and refused() == n + 2
    assert book.current.by_id("beta").action.channel == "push"

    write(b, GOOD.format(id="gamma", ch="email"), 4)
    assert book.reload() is True
    assert [r.id for r in book.current.rules] == ["alpha", "gamma"]
    b.unlink()
    assert book.reload() is True
    assert [r.id for r in book.current.rules] == ["alpha"]
