"""The best trial of a finished study, selected on validation: one, or the Pareto front for nsga2."""

from __future__ import annotations

import math
from typing import Any


def best(grid: Any, objectives: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Among trials that trained every epoch with finite objectives, the best on the (first)
    validation objective, or with several objectives every trial on their Pareto front; best first.
    Of tied trials, the first."""
    signs = [1 if mode == "max" else -1 for _, mode in objectives]

    def score(r: Any) -> list[float]:
        return [
            sign * r.metrics.get(m, math.nan)
            for sign, (m, _) in zip(signs, objectives, strict=True)
        ]

    rows = [
        r
        for r in grid
        if r.metrics and r.metrics.get("finished") and all(map(math.isfinite, score(r)))
    ]
    scores = {id(r): score(r) for r in rows}
    front = [r for r in rows if not any(dominates(scores[id(o)], scores[id(r)]) for o in rows)]
    front.sort(key=score, reverse=True)
    if len(objectives) == 1:
        front = front[:1]
    return [
        {"trial_id": r.metrics["trial_id"], "sampled": r.config, "metrics": r.metrics}
        for r in front
    ]


def dominates(a: list[float], b: list[float]) -> bool:
    """Whether score ``a`` is at least as good as ``b`` everywhere and better somewhere (max)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b
