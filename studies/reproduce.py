"""``distill-study reproduce``: re-run a seed paper's claims as a tracked study and judge each one.

A seed preset (``search_spaces/``, with ``PAPER`` and ``CLAIMS``) runs every arm as an ordinary
study (grid sampler, no early stopping, the preset's seeds; same runner, MLflow layout and
``--resume``), named ``reproduce-<paper>-<scale>``; then ``analysis.reproduction`` turns its runs
into a verdict per claim, written as ``reproduction.md`` and ``reproduction.json`` into the study
folder and logged to its parent run.
"""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from analysis.reproduction import Result, evaluate, tally, write
from analysis.study import load_study
from distill_core import UserError, required_teachers, uses_teacher
from distill_core.storage import copy_into, is_local
from studies import cluster
from studies.options import StudyOptions
from studies.plan import Plan
from studies.runner import prepare, run_study
from studies.spaces import SearchSpace, list_spaces
from tracking.client import open_client
from tracking.schema import StudyStatus


def presets() -> dict[str, SearchSpace]:
    """Paper id -> its preset, for every registered preset that declares claims."""
    return {s.paper: s for s in list_spaces() if s.paper and s.claims}


def papers(which: str) -> list[SearchSpace]:
    """The presets of ``which``: a paper id (``000``) or ``all``.

    Raises:
        UserError: an unknown paper id (the known ones are listed).
    """
    found = presets()
    if which == "all":
        return [found[p] for p in sorted(found)]
    if which not in found:
        raise UserError(
            f"no seed paper {which!r} to reproduce; use one of: {', '.join(sorted(found))}, or all "
            "(distill-study reproduce --list shows their claims)"
        )
    return [found[which]]


def claim_lines() -> list[str]:
    """``--list``: every claim, one line each, with its paper and how it runs at laptop scale."""
    lines = []
    for _, space in sorted(presets().items()):
        laptop = "laptop + paper scale" if space.laptop else "paper scale"
        for claim in space.claims:
            note = "needs paper scale" if claim.needs_paper_scale else laptop
            lines.append(f"{claim.id:<20} [{space.name}, {note}] {claim.sentence}")
    return lines


@dataclass(frozen=True)
class Reproduction:
    """One paper's reproduction: its study and the claims' results."""

    paper: str
    study: str
    status: StudyStatus
    results: list[Result]
    files: list[Path]


def reproduce(
    space: SearchSpace, options: StudyOptions, say: Callable[[str], None] = print
) -> Reproduction:
    """Run (or ``--resume``) the reproduction study of one preset, then judge its claims."""
    name = options.name or f"reproduce-{space.paper}-{options.scale}" + (
        "-smoke" if options.smoke_test else ""
    )
    arms = space.grid_size + len(space.baselines)
    o = replace(options, space=space.name, name=name, sampler="grid", scheduler="none", trials=arms)
    result = run_study(o, say=say)
    if result.status != StudyStatus.COMPLETED:
        return Reproduction(space.paper, name, result.status, [], [])
    study = load_study(open_client(result.tracking_uri), name)
    results = evaluate(study, space.claims)
    recorded, _ = prepare(replace(o, resume=True))  # the study's own, saved settings
    described = setting(space, recorded.plan, recorded.options, study)
    if is_local(result.folder):
        files = write(study, results, described, result.folder)
    else:  # plots and files are drawn on this machine, then kept on the study's storage
        with tempfile.TemporaryDirectory() as tmp:
            drawn = write(study, results, described, Path(tmp))
            copy_into(drawn, result.folder)
        files = [result.folder / f.name for f in drawn]
    counts = tally(results)
    say(
        f"reproduction of {space.paper}: {counts['reproduced']} reproduced, "
        f"{counts['not reproduced']} not reproduced, {counts['inconclusive']} inconclusive; "
        f"{files[0]}"
    )
    for r in results:
        say(f"  {r.claim.id}: {r.verdict.sentence}")
    return Reproduction(space.paper, name, result.status, results, files)


def reproduce_all(
    spaces: list[SearchSpace], options: StudyOptions, say: Callable[[str], None] = print
) -> list[Reproduction]:
    """Reproduce each paper in turn on one Ray (started once for all of them)."""
    with cluster.connected(options):
        return [reproduce(space, options, say) for space in spaces]


def setting(space: SearchSpace, plan: Plan, o: StudyOptions, study: Any) -> dict[str, Any]:
    """What the report says first: the scale, data, models, epochs and seeds, and where it ran."""
    cfg = plan.config({}, plan.seeds[0])
    arms = [plan.config(point, plan.seeds[0]) for point in space.grid_points()]
    models = f"student `{cfg.model.name}`"
    if any(uses_teacher(arm) for arm in arms):
        models += f", teacher `{cfg.teacher.model}`"
    if any(len(required_teachers(arm)) > 1 for arm in arms):
        models += f", assistant `{cfg.method.ta_model}`"
    device = (
        torch.cuda.get_device_name() if o.gpus_per_trial and torch.cuda.is_available() else "CPU"
    )
    return {
        "paper": space.paper,
        "title": space.summary,
        "scale": "smoke test" if o.smoke_test else o.scale,
        "data": cfg.data.name,
        "models": models,
        "epochs": cfg.run.epochs,
        "paper_epochs": space.base.get("run", {}).get("epochs"),
        "seeds": len(plan.seeds),
        "arms": list(space.grid.get("arm", [])),
        "study": study.name,
        "parent_run_id": study.parent_run_id,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {device}",
    }
