"""The teachers a study needs, trained once each, in parallel Ray tasks (sharing the cluster's CPUs),
before any trial starts.

Every distinct teacher (stage 0) and teacher assistant (stage 1, distilled from a stage-0 teacher)
that the space's grid points and baselines ask for goes into the teacher store; trials only load
them. A continuous axis that changes the teacher trains the rest on demand, once each (the store's
file lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
import torch

from distill_core import Config, TeacherStore, fit_epochs, required_teachers
from distill_core.teachers import store_key
from studies import cluster
from studies.plan import Plan
from studies.spaces import SearchSpace
from studies.trial import SharedData

Stage = dict[str, tuple[Config, list[int] | None]]  # store key -> (training config, epochs kept)


@ray.remote
def _train(
    root: str, spec: Config, save_epochs: list[int] | None, data: SharedData, threads: int
) -> str:
    torch.set_num_threads(threads)
    TeacherStore(root).ensure(
        spec, train=fit_epochs, save_epochs=save_epochs, data=data.splits(spec.data)
    )
    return store_key(spec)


def stages(space: SearchSpace, plan: Plan) -> list[Stage]:
    """Every distinct store entry the space's grid and baselines ask for, by training stage."""
    found: list[Stage] = []
    for point in space.grid_points():
        cfg = plan.config(point, plan.seeds[0])
        for stage, (spec, _epoch, save) in enumerate(required_teachers(cfg)):
            if len(found) <= stage:
                found.append({})
            found[stage].setdefault(store_key(spec), (spec, save))
    return found


def train_missing(
    space: SearchSpace,
    plan: Plan,
    store: TeacherStore,
    data: Any,
    resources: dict[str, float],
    say: Callable[[str], None],
) -> list[str]:
    """Train the missing store entries, stage by stage; returns the keys trained."""
    trained: list[str] = []
    found = stages(space, plan)
    for i, stage in enumerate(found):
        todo = {k: v for k, v in stage.items() if store.meta(v[0]) is None}
        if not todo:
            continue
        kind = "teacher assistant" if i > 0 else "teacher"
        say(f"training {len(todo)} {kind}(s) once, before the trials: {', '.join(todo)}")
        cpus = _cpus_each(len(todo), resources)
        task = _train.options(num_cpus=cpus, num_gpus=resources["gpu"])
        started = time.perf_counter()
        trained += ray.get(
            [task.remote(str(store.root), s, e, data, max(1, int(cpus))) for s, e in todo.values()]
        )
        say(f"trained {len(todo)} {kind}(s) in {time.perf_counter() - started:.1f} s")
    return trained


def _cpus_each(tasks: int, resources: dict[str, float]) -> float:
    """CPUs (and torch threads) per teacher task: no trial runs yet, so fewer teachers than the
    cluster has CPUs share them all (each within one node); on GPUs, a trial's share."""
    if resources["gpu"] > 0:
        return resources["cpu"]
    nodes = [n.get("CPU", 0) for n in cluster.node_resources()]
    share = min(max(nodes, default=1), sum(nodes) // tasks)
    return max(resources["cpu"], share)
