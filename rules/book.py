"""The rules in force, and how they are reloaded while the engine runs.

Rule files are checked for changes (modification time and size) at an
interval. A changed file that loads cleanly replaces its previous version;
a file with any error is refused as a whole, its previous version keeps
running, and the refusal is logged with every error and metered. A reload
whose result would be inconsistent across files (an id defined twice) is
refused as a whole too. Shards pick up the new set at their next batch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from engage.monitoring import metrics
from engage.rules.loader import (CATALOG_DIR, FileResult, RuleError, combine, load_checked,
                                 load_files, rule_files)
from engage.rules.model import RuleSet
from engage.state.customer import StateConfig

log = logging.getLogger(__name__)


def rule_paths(setting: str | None) -> list[str]:
    """The paths named by ``ENGAGE_RULES`` (separated by ',' or ';'), or the shipped catalog."""
    if not setting:
        return [str(CATALOG_DIR)]
    return [p.strip() for p in setting.replace(";", ",").split(",") if p.strip()]


class RuleBook:
    """Holds the current :class:`RuleSet`; :meth:`reload` swaps in changed files."""

    def __init__(self, current: RuleSet, paths: list[str] | None = None,
                 cfg: StateConfig | None = None,
                 accepted: dict[str, tuple[tuple[int, int], FileResult]] | None = None) -> None:
        self.current = current
        self.paths = paths or []
        self.cfg = cfg or StateConfig.default()
        self.accepted = accepted or {}
        self.refused: dict[str, tuple[int, int]] = {}   # file -> stamp of the refused version
        self._lock = threading.Lock()

    @staticmethod
    def fixed(rules: RuleSet) -> "RuleBook":
        """A book that never reloads (replays, tests)."""
        return RuleBook(rules)

    @staticmethod
    def load(paths: list[str], cfg: StateConfig) -> "RuleBook":
        """Load every file; refuses to start (RuleLoadError) if any has an error."""
        rules, results = load_checked(paths, cfg)
        accepted = {res.file: (_stamp(Path(res.file)), res) for res in results}
        metrics.RULES_LOADED.set(len(rules.rules))
        return RuleBook(rules, paths, cfg, accepted)

    def reload(self) -> bool:
        """Apply changed files; True when the rule set changed."""
        if not self.paths:
            return False
        with self._lock:
            files, _ = rule_files(self.paths)
            stamps = {str(f): _stamp(f) for f in files}
            changed = [f for f in files
                       if self.accepted.get(str(f), ((-1, -1), None))[0] != stamps[str(f)]
                       and self.refused.get(str(f)) != stamps[str(f)]]
            removed = [name for name in self.accepted if name not in stamps]
            if not changed and not removed:
                return False
            results = {name: res for name, (_, res) in self.accepted.items() if name in stamps}
            refused: list[RuleError] = []
            fresh = {}
            for res in load_files(changed, self.cfg):
                if res.errors:
                    refused.extend(res.errors)
                    self.refused[res.file] = stamps[res.file]   # reported once per save
                    continue
                results[res.file] = res
                fresh[res.file] = res
            rules, cross = combine(list(results.values()))
            if cross:
                refused.extend(cross)
                for name in fresh:
                    self.refused[name] = stamps[name]
                fresh = {}
            if refused:
                metrics.RULE_RELOADS.labels("refused").inc()
                log.error("rule reload refused; the previous version keeps running:\n%s",
                          "\n".join(str(e) for e in refused))
            if not fresh and not removed:
                return False
            for name in removed:
                self.accepted.pop(name, None)
            for name, res in fresh.items():
                self.accepted[name] = (stamps[name], res)
            self.current = combine([self.accepted[n][1] for n in sorted(self.accepted)])[0]
            metrics.RULE_RELOADS.labels("ok").inc()
            metrics.RULES_LOADED.set(len(self.current.rules))
            log.info("rules reloaded: %d in force (%s)", len(self.current.rules),
                     ", ".join(sorted(fresh) + [f"-{n}" for n in removed]))
            return True


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return -1, -1
