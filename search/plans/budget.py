"""One budget for a plan: ``valley plan NAME --budget 600`` (trial-epochs) or ``--budget 2h`` (wall clock).

The plan file's ``budget_split`` gives each training stage its share. A stage may spend its
share of what is left when it starts, scaled over the stages still to run, so what one stage
leaves unspent goes to the later ones and the plan as a whole never spends more than the budget.
Trial-epochs are every epoch of every trial (a stopped trial counts the epochs it trained).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from analysis.format import budget_amount
from search.options import SearchError

EPOCHS, SECONDS = "trial-epochs", "seconds"
_TIME = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[smh])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclasses.dataclass(frozen=True)
class Budget:
    total: float  # in ``unit``
    unit: str  # EPOCHS | SECONDS

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``600`` (trial-epochs), or a wall-clock time: ``90m``, ``2h``, ``3600s``."""
        text = str(text).strip().lower()
        if text.isdigit() and int(text) > 0:
            return cls(int(text), EPOCHS)
        match = _TIME.match(text)
        if match and float(match["n"]) > 0:
            return cls(float(match["n"]) * _SECONDS[match["unit"]], SECONDS)
        raise SearchError(f"--budget must be a whole number of trial-epochs (e.g. 600) or a time (e.g. 90m, 2h, "
                          f"3600s), got {text!r}")

    def describe(self, value: float) -> str:
        """Trial-epochs whole, rounded down (a stage allowed 11.6 can train 11), or minutes."""
        return budget_amount(value, self.unit)

    def as_state(self, split: dict[str, float]) -> dict[str, Any]:
        return {"total": self.total, "unit": self.unit, "split": split, "spent": {}, "allowed": {}}


def check_split(split: Any, training: list[str], where: str) -> dict[str, float]:
    """``budget_split``: a share per training stage, every one named, the shares summing to 1."""
    if not isinstance(split, dict) or not split:
        raise SearchError(f"{where}: budget_split must map each training stage to its share, e.g. "
                          f"{{{', '.join(f'{name}: ...' for name in training)}}}")
    unknown = [k for k in split if k not in training]
    missing = [k for k in training if k not in split]
    if unknown or missing:
        raise SearchError(f"{where}: budget_split must name every training stage ({', '.join(training)}) and no "
                          f"other; unknown: {unknown or 'none'}, missing: {missing or 'none'}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in split.values()):
        raise SearchError(f"{where}: budget_split shares must be numbers > 0, got {split}")
    if abs(sum(split.values()) - 1) > 0.01:
        raise SearchError(f"{where}: budget_split shares must sum to 1, got {sum(split.values()):g}")
    return {k: float(v) for k, v in split.items()}


def allowance(budget: dict[str, Any], stage: str, later: list[str], units: dict[str, float] | None = None,
              most: dict[str, int] | None = None) -> float:
    """What ``stage`` may spend: its share of the budget left, over the shares of it and the ``later`` stages.

    ``units`` names later stages that can only spend whole units (a confirm stage: one candidate
    over its seeds, ``seeds x epochs``), and ``most`` how many units each can use at most (the
    candidates it can have): such a stage's share is first rounded down to the units it can pay for
    and use, and the rest is shared among the others, so that no trial-epochs are left unspent at
    the end of the plan. A share below one unit is left whole.
    """
    spent_elsewhere = sum(v for k, v in budget["spent"].items() if k != stage)
    left = max(0.0, budget["total"] - spent_elsewhere)
    shares = budget["split"]
    total_share = sum(shares[name] for name in [stage, *later])
    reserved = {}
    for name, unit in (units or {}).items():
        if name in later and unit > 0:
            share = round(left * shares[name] / total_share, 9)  # 0.4 x 30 is 11.999999999999998: 12
            reserved[name] = unit * min(share // unit, (most or {}).get(name, float("inf"))) or share
    rest = [name for name in [stage, *later] if name not in reserved]
    return round(max(0.0, left - sum(reserved.values())) * shares[stage] / sum(shares[name] for name in rest), 9)
