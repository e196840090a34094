"""Rule files: the shipped catalog loads, and every broken file gets exactly the right `file:line` errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from engage.cli import main
from engage.rules.loader import CATALOG_DIR, RuleLoadError, load_rules, load_text, validate
from engage.rules.model import AbsenceTrigger, ScheduleTrigger, TransitionTrigger
from engage.state.customer import StateConfig

CORPUS = Path(__file__).parent / "rule_corpus"
PLAYBOOKS = {"first_order_nudge", "cart_abandon_24h", "size_return_guide",
             "post_purchase_cross_sell", "birthday_coupon", "declining_30d", "lost_90d",
             "sleeping_high_value", "content_nurture_sofa"}


def expected_errors(path: Path) -> list[str]:
    """The `# expect: LINE: message` comments at the end of a corpus file."""
    return [f"{path}:{line[len('# expect: '):]}" for line in path.read_text().splitlines()
            if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_broken_rule_file_gets_exactly_its_errors(path: Path) -> None:
    expected = expected_errors(path)
    assert expected, f"{path} lists no expected errors"
    assert [str(e) for e in validate([str(path)])] == expected


def test_the_shipped_catalog_is_valid_and_has_a_rule_for_every_playbook() -> None:
    assert validate([str(CATALOG_DIR)]) == []
    rules = load_rules()
    assert {r.id for r in rules.rules} == PLAYBOOKS
    kinds = Counter(type(r.trigger).__name__ for r in rules.rules)
    assert kinds["AbsenceTrigger"] == 2 and kinds["ScheduleTrigger"] == 1
    assert kinds["TransitionTrigger"] == 3 and kinds["EventTrigger"] == 3
    cart = rules.by_id("cart_abandon_24h")
    assert isinstance(cart.trigger, AbsenceTrigger) and cart.trigger.within_ms == 24 * 3_600_000
    assert [v.name for v in cart.action.variants] == ["A", "B"]
    assert cart.action.control_share == pytest.approx(0.10)
    birthday = rules.by_id("birthday_coupon").trigger
    assert isinstance(birthday, ScheduleTrigger)
    assert (birthday.offset_ms, birthday.at_minute) == (-3 * 86_400_000, 600)
    declining = rules.by_id("declining_30d").trigger
    assert declining == TransitionTrigger("stage_entered", "declining")
    assert rules.policy.global_cap is not None and rules.policy.global_cap.max == 2


def test_an_id_defined_in_two_files_and_a_second_policy_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  - id: twin\n    trigger: {event: login}\n"
                                     "    action: {channel: push}\npolicy: {conflict_window: 1d}\n")
    (tmp_path / "b.yaml").write_text("policy: {conflict_window: 2d}\nrules:\n  - id: twin\n"
                                     "    trigger: {event: register}\n    action: {channel: sms}\n")
    errors = [str(e) for e in validate([str(tmp_path)])]
    assert errors == [f"{tmp_path}/b.yaml:3: duplicate rule id 'twin' (first defined at "
                      f"{tmp_path}/a.yaml:2)",
                      f"{tmp_path}/b.yaml:1: a second 'policy:' (the first is in "
                      f"{tmp_path}/a.yaml); keep one"]
    with pytest.raises(RuleLoadError) as info:
        load_rules([str(tmp_path)])
    assert len(info.value.errors) == 2


def test_rules_validate_exits_0_when_valid_and_1_listing_every_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate"]) == 0
    assert main(["rules", "validate", str(CATALOG_DIR), str(CORPUS / "unknown_keys.yaml"),
                 str(CORPUS / "bad_durations.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == expected_errors(CORPUS / "unknown_keys.yaml") + \
        expected_errors(CORPUS / "bad_durations.yaml")


def test_a_missing_path_is_an_error_not_silence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate", "no/such/rules"]) == 1
    assert capsys.readouterr().out.strip() == "no/such/rules:0: no such file or directory"


def test_rule_version_follows_content_not_layout() -> None:
    cfg = StateConfig.default()
    base = "rules:\n  - id: r\n    trigger: {event: login}\n    action: {channel: push, priority: 5}\n"
    reordered = "rules:\n  - action: {priority: 5, channel: push}\n    id: r\n\n    trigger: {event: login}\n"
    changed = base.replace("priority: 5", "priority: 6")
    v = [load_text(t, "f.yaml", cfg).rules[0].version for t in (base, reordered, changed)]
    assert v[0] == v[1] != v[2]


def test_ab_bucketing_is_stable_and_follows_the_weights() -> None:
    rule = load_rules().by_id("cart_abandon_24h")
    arms = Counter(rule.action.bucket(rule.id, f"c-{i}") for i in range(20_000))
    assert arms["control"] / 20_000 == pytest.approx(0.10, abs=0.01)
    assert arms["A"] / 20_000 == pytest.approx(0.45, abs=0.015)
    assert arms["B"] / 20_000 == pytest.approx(0.45, abs=0.015)
    # Same customer, same rule: same arm, every time (restarts and replays).
    assert all(rule.action.bucket(rule.id, f"c-{i}") == rule.action.bucket(rule.id, f"c-{i}")
               for i in range(100))
