"""Every MLflow name a study writes or reads: tags, statuses, roles and run filters.

The layout is docs/tracking.md. The writer (``tracking.client``, the study tracker), resume,
``analysis`` and export all spell these names through this module and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum

# Tags of a study's experiment and parent run.
SPACE = "distill.space"
OBJECTIVE = "distill.objective"
MODE = "distill.mode"
OBJECTIVES = "distill.objectives"
SCIENTIFIC = "distill.scientific"
NUISANCE = "distill.nuisance"
AXES = "distill.axes"  # also on each trial run: the axes that trial sampled
COMMAND = "distill.command"
STUDY_STATUS = "distill.status"
CLAIMS = "distill.claims"  # a reproduction study: the seed paper whose claims it tests

# Tags of every run.
ROLE = "distill.role"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
EXPERIMENT_KIND = "mlflow.experimentKind"
METHOD = "method"
SEED = "seed"
STATUS = "status"
KIND = "kind"  # "train" for a single `distill-study train` run
SPACE_NAME = "space"

# Tags of trial and final runs.
TRIAL_ID = "distill.trial_id"
GROUP = "distill.group"  # the sampled config: its seeds share it
ARM = "distill.arm"  # a preset's arm (the label that picked the config), when it has arms
RANK = "distill.rank"  # final runs: the exported config's rank
RETRIES = "distill.retries"
NODE = (
    "distill.node"  # the Ray node id that ran the trial's latest epoch (a moved trial: its new one)
)
FAILURE_REASON = "distill.failure_reason"  # why a run failed, was cancelled or abandoned

#: Experiments are machine-learning experiments, so MLflow's UI opens on the runs table.
ML_EXPERIMENT = {EXPERIMENT_KIND: "custom_model_development"}


class Role(StrEnum):
    """What a run is (tag ``distill.role``)."""

    STUDY = "study"  # the parent run of a study
    TRIAL = "trial"  # one trial x seed
    ABANDONED = "abandoned"  # a trial run whose trial was sampled again on resume
    FINAL = "final"  # `export --final`: a best config retrained on train+val


class Status(StrEnum):
    """A run's outcome (tag ``status``); a study's is ``StudyStatus``."""

    RUNNING = "running"
    COMPLETED = "completed"
    CRASHED = "crashed"  # trained every epoch but ended collapsed (at chance, one class, ...)
    EARLY_STOPPED = "early-stopped"  # the scheduler stopped its trial
    CANCELLED = "cancelled"  # another seed of its trial diverged or failed, so it was stopped
    DIVERGED = "diverged"  # non-finite training loss
    FAILED = "failed"  # its config or training raised (reason in distill.failure_reason)
    INTERRUPTED = "interrupted"  # the study stopped; resume continues the run
    ABANDONED = "abandoned"  # see Role.ABANDONED


class StudyStatus(StrEnum):
    """A study's state (tag ``distill.status`` of its parent run)."""

    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"


#: Runs that trained every epoch: their objectives compare with each other.
FINISHED = frozenset({Status.COMPLETED, Status.CRASHED})
#: Runs whose config is not worth recommending, whatever its other seeds did.
BROKEN = frozenset({Status.DIVERGED, Status.FAILED})

#: MLflow's run status (``mlflow.entities.RunStatus`` names; this module imports no MLflow, so
#: that trial processes need not) for each final status (``interrupted`` runs continue on resume).
RUN_STATUS = {
    Status.COMPLETED: "FINISHED",
    Status.CRASHED: "FINISHED",
    Status.EARLY_STOPPED: "FINISHED",
    Status.CANCELLED: "FINISHED",
    Status.DIVERGED: "FAILED",
    Status.FAILED: "FAILED",
    Status.INTERRUPTED: "KILLED",
    Status.ABANDONED: "FAILED",
}
STUDY_RUN_STATUS = {
    StudyStatus.RUNNING: "RUNNING",
    StudyStatus.COMPLETED: "FINISHED",
    StudyStatus.INTERRUPTED: "KILLED",
}


def tag(name: str) -> str:
    """A tag in an MLflow search filter: ``tags.`distill.role```."""
    return f"tags.`{name}`"


#: Filter of study parent runs.
STUDIES = f"{tag(ROLE)} = '{Role.STUDY}'"


def children(parent_run_id: str, role: Role = Role.TRIAL) -> str:
    """Filter of a study's child runs of one role (trial runs by default)."""
    return f"{tag(PARENT)} = '{parent_run_id}' and {tag(ROLE)} = '{role}'"
