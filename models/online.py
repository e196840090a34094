"""The river pipelines, their progressive validation, and their versions.

A model here is a river pipeline (feature scaling and a classifier) plus what
ops and marketing need around it: a version (what it is, and which
generation since the last reset), whether it is pinned (scores, but learns
no more), how many labels it learned from, and a :class:`Validation` of the
scores it gave *before* it saw each label.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import operator
from array import array
from dataclasses import dataclass
from typing import Any, Iterable

from engage.models.features import FEATURE_NAMES

#: Classifiers compared by ``engage eval-churn``; the engine runs one (ENGAGE_MODEL_KIND).
KINDS = ("logreg", "tree", "forest")
#: The default (benchmarks/RESULTS.md): ahead of the tree and the forest from a
#: few thousand customers on, better calibrated, and 6x (tree) to 40x (forest)
#: cheaper per label; the forest learns faster on a thousand customers.
DEFAULT_KIND = "logreg"

# Scores are binned by log-odds: logistic outputs crowd near 0 and 1, where
# equal-width bins on the probability would tie most of them.
_BINS = 240
_LOGIT_MIN, _LOGIT_MAX = -12.0, 12.0
_EPS = 1e-7


def build_pipeline(kind: str, seed: int = 7) -> Any:
    """A fresh river pipeline of ``kind`` (one of :data:`KINDS`).

    >>> build_pipeline("logreg").predict_proba_one({"x": 1.0})
    {False: 0.5, True: 0.5}
    """
    # Imported by name, not by an import statement: the compiled shards import
    # this module, and mypyc's type check would otherwise follow river and
    # its dependencies (thousands of modules, many minutes per build).
    forest, linear_model, optim, preprocessing, tree = (
        importlib.import_module(f"river.{m}")
        for m in ("forest", "linear_model", "optim", "preprocessing", "tree"))

    if kind == "logreg":
        # A small constant rate: labels arrive one customer at a time, for ever.
        return preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(0.02), l2=1e-4)
    if kind == "tree":
        # Splits do not care about scale: no scaler to pay for.
        return tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, leaf_prediction="nba",
                                                     seed=seed)
    if kind == "forest":
        return forest.ARFClassifier(n_models=5, seed=seed, leaf_prediction="nba")
    raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")


def _bin(p: float) -> int:
    p = min(max(p, _EPS), 1 - _EPS)
    logit = math.log(p / (1 - p))
    i = int((logit - _LOGIT_MIN) / (_LOGIT_MAX - _LOGIT_MIN) * _BINS)
    return min(max(i, 0), _BINS - 1)


class Validation:
    """Progressive validation: ROC AUC and log loss of scores given before their labels.

    Kept as two histograms of scores (one per label) and a sum of losses, so
    the validations of many shards merge exactly into one (river's running
    ROCAUC does not merge); the AUC is exact up to ties within a bin of
    0.1 log-odds.

    >>> v = Validation()
    >>> for y, p in [(True, .9), (False, .2), (True, .6), (False, .7)]:
    ...     v.update(y, p)
    >>> v.auc(), round(v.log_loss(), 3)
    (0.75, 0.511)
    """

    __slots__ = ("pos", "neg", "loss", "n")

    def __init__(self) -> None:
        self.pos = array("q", bytes(8 * _BINS))
        self.neg = array("q", bytes(8 * _BINS))
        self.loss = 0.0
        self.n = 0

    def update(self, label: bool, p: float, with_loss: bool = True) -> None:
        """Count one score ``p`` given before its ``label`` was known."""
        (self.pos if label else self.neg)[_bin(p)] += 1
        self.n += 1
        if with_loss:
            q = min(max(p, _EPS), 1 - _EPS)
            self.loss -= math.log(q if label else 1 - q)

    def merge(self, other: "Validation") -> None:
        """Add ``other``'s counts to these."""
        self.pos = array("q", map(operator.add, self.pos, other.pos))
        self.neg = array("q", map(operator.add, self.neg, other.neg))
        self.loss += other.loss
        self.n += other.n

    def auc(self) -> float | None:
        """Probability that a random positive scores above a random negative (ties: half)."""
        positives, negatives = sum(self.pos), sum(self.neg)
        if not positives or not negatives:
            return None
        below = 0      # negatives in lower bins
        wins = 0.0
        for i in range(_BINS):
            wins += self.pos[i] * (below + self.neg[i] / 2)
            below += self.neg[i]
        return wins / (positives * negatives)

    def log_loss(self) -> float | None:
        """Mean log loss (None before the first label)."""
        return self.loss / self.n if self.n else None

    def positives(self) -> int:
        """Labels that were true (churned, bought again)."""
        return sum(self.pos)

    def to_doc(self) -> dict[str, Any]:
        """A JSON-able copy (what ``engage models`` reads from Redis)."""
        return {"pos": list(self.pos), "neg": list(self.neg), "loss": self.loss, "n": self.n}

    @staticmethod
    def from_doc(doc: dict[str, Any]) -> "Validation":
        """Inverse of :meth:`to_doc`."""
        v = Validation()
        v.pos = array("q", doc["pos"])
        v.neg = array("q", doc["neg"])
        v.loss, v.n = doc["loss"], doc["n"]
        return v

    def __getstate__(self) -> tuple:
        return (self.pos.tobytes(), self.neg.tobytes(), self.loss, self.n)

    def __setstate__(self, st: tuple) -> None:
        self.pos, self.neg = array("q"), array("q")
        self.pos.frombytes(st[0])
        self.neg.frombytes(st[1])
        self.loss, self.n = st[2], st[3]


@dataclass(frozen=True)
class ModelSpec:
    """What a model predicts and how: the part of its version that is not learnt."""

    name: str           # churn_risk | repurchase_30d
    kind: str           # one of KINDS
    horizon_ms: int

    #: The window of the ``orders_365d`` / ``spend_365d`` features (the RFM window).
    window: str = "365d"

    def digest(self) -> str:
        """A short hash of everything that changes what the model means."""
        text = (f"{self.name}|{self.kind}|{self.horizon_ms}|{self.window}|"
                f"{','.join(FEATURE_NAMES)}")
        return hashlib.sha256(text.encode()).hexdigest()[:6]


class OnlineModel:
    """One river pipeline that learns as labels arrive, with its validation.

    ``version`` is ``<kind>-<spec digest>.g<generation>``: a reset starts a
    new generation, a change of kind, horizon or features a new digest.
    """

    def __init__(self, spec: ModelSpec, generation: int = 0) -> None:
        self.spec = spec
        self.generation = generation
        # Stamped on every score: worked out once, not per score.
        self.version = f"{spec.kind}-{spec.digest()}.g{generation}"
        self.pipeline = build_pipeline(spec.kind)
        self.validation = Validation()
        self.baseline = Validation()
        self.learned = 0
        self.pinned = False

    def score(self, x: dict[str, float]) -> float:
        """Probability of the positive label for features ``x``."""
        return float(self.pipeline.predict_proba_one(x).get(True, 0.0))

    def learn(self, x: dict[str, float], label: bool, scored: float | None,
              baseline: float) -> None:
        """Validate the score given earlier (and the baseline's), then learn from the label.

        ``scored`` None: the score was another model's (before a reset), so
        nothing is validated. A pinned model is validated but does not change.
        """
        if scored is not None:
            self.validation.update(label, scored)
            self.baseline.update(label, baseline, with_loss=False)
        if not self.pinned:
            self.pipeline.learn_one(x, label)
            self.learned += 1

    def reset(self) -> None:
        """Forget everything learnt: a new generation, empty validation, unpinned."""
        self.__init__(self.spec, self.generation + 1)  # type: ignore[misc]

    def summary(self) -> dict[str, Any]:
        """What ``engage models`` shows and Redis keeps (validation merges across shards)."""
        return {"version": self.version, "kind": self.spec.kind, "horizon_ms": self.spec.horizon_ms,
                "learned": self.learned, "pinned": self.pinned,
                "validation": self.validation.to_doc(), "baseline": self.baseline.to_doc()}


def merged(summaries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One model's summaries from many shards as one: counts added, validations merged."""
    out: dict[str, Any] = {}
    validation, baseline = Validation(), Validation()
    versions: set[str] = set()
    for s in summaries:
        versions.add(s["version"])
        out["learned"] = out.get("learned", 0) + s["learned"]
        out["pinned"] = out.get("pinned", False) or s["pinned"]
        out["shards"] = out.get("shards", 0) + 1
        validation.merge(Validation.from_doc(s["validation"]))
        baseline.merge(Validation.from_doc(s["baseline"]))
    out["versions"] = sorted(versions)
    out["labels"] = validation.n
    out["positives"] = validation.positives()
    out["auc"] = validation.auc()
    out["log_loss"] = validation.log_loss()
    out["baseline_auc"] = baseline.auc()
    return out
