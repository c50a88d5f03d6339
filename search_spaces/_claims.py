"""Claims a seed preset makes about its paper (what ``distill-study reproduce`` tests), and its arms.

A claim compares arms of the preset (named grid points) on one metric, with a direction and a
threshold fixed before any run: ``difference`` (arm a minus arm b), ``level`` (one arm against a
number), ``trend`` (the slope of a metric over a numeric axis across arms) and ``trend_gap`` (the
slope of one metric minus the slope of another). The verdict logic is ``analysis.reproduction``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["difference", "level", "trend", "trend_gap"]


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, in our words, as a test on a study's runs.

    Attributes:
        id: short and stable, e.g. ``000-crash``.
        sentence: the claim in one sentence.
        source: where the paper says it (figure, table, section).
        paper: the paper's own numbers, as text.
        kind: see the module docstring.
        metric: the run metric compared (its value at the end of each seed's run); for
            ``trend_gap`` the first of two metrics.
        arms: the arms compared: (a, b) for ``difference``, (a,) for ``level``, every arm on the
            axis for the trends.
        direction: ``greater`` (the claim is "estimate > threshold") or ``less``.
        threshold: in the metric's units (accuracy as a fraction: 0.01 is one point).
        axis: the numeric config key of a trend (e.g. ``init.interp_lambda``).
        other: the second metric of ``trend_gap``.
        laptop: what to expect at laptop scale; ``needs paper scale`` marks a claim whose effect
            cannot appear there (it is still run and reported, never counted as a verdict).
    """

    id: str
    sentence: str
    source: str
    paper: str
    kind: Kind
    metric: str
    arms: tuple[str, ...]
    direction: Literal["greater", "less"] = "greater"
    threshold: float = 0.0
    axis: str | None = None
    other: str | None = None
    laptop: str = ""

    def __post_init__(self) -> None:
        needed = {"difference": 2, "level": 1}.get(self.kind)
        if needed is not None and len(self.arms) != needed:
            raise ValueError(f"claim {self.id}: a {self.kind} compares {needed} arm(s)")
        if self.kind in ("trend", "trend_gap") and (self.axis is None or len(self.arms) < 2):
            raise ValueError(f"claim {self.id}: a trend needs an axis and two or more arms")
        if (self.kind == "trend_gap") != (self.other is not None):
            raise ValueError(f"claim {self.id}: trend_gap (and only it) compares a second metric")

    @property
    def needs_paper_scale(self) -> bool:
        return self.laptop.startswith("needs paper scale")


def pick_arm(trial: Any, arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A preset's ``space(trial)``: the label ``arm`` picks one of ``arms``, whose overrides it
    returns (the label too, so that the run is tagged with its arm)."""
    arm = trial.suggest_categorical("arm", list(arms))
    return {"arm": arm, **arms[arm]}
