"""The run config schema: nested pydantic models, YAML in and out, dotted overrides.

Every key of DESIGN.md's **Names** lives here, with its range and the checks that need no
registry. This module imports no other part of distill_core but its errors: the registries
(data sets, models, methods) import it. Names are checked against them by
``distill_core.configure`` (``make_config``, ``load_config``), which is what users call.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distill_core.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    name: str = Field("mnist5k", description="data set (see Data sets below)")
    dir: str | None = Field(
        None, description="folder holding a data set that is not embedded (torchvision layout)"
    )
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=0.9,
        description="share of the training set held out for validation (0: train on train+val)",
    )
    split_seed: int = Field(
        0,
        ge=0,
        description="seed of the train/val split; fixed across run seeds so that trials compare on one val set",
    )
    subset: int | None = Field(
        None, ge=10, description="use only this many training examples (smoke tests)"
    )
    augment: bool | None = Field(
        None,
        description="random crop + flip on the device; default: the data set's own (see Data sets)",
    )


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="optimizer")
    lr: float = Field(
        0.05, gt=0.0, le=10.0, description="learning rate (base lr of every schedule)"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum")
    weight_decay: float = Field(
        5e-4, ge=0.0, lt=1.0, description="L2 (sgd, adam) or decoupled (adamw) weight decay"
    )

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError(
                "nesterov needs optim.name=sgd and optim.momentum > 0; set optim.nesterov=false"
            )
        return self


class ScheduleConfig(Section):
    name: Literal["constant", "step", "cosine", "onecycle", "linear"] = Field(
        "cosine", description="lr schedule; onecycle steps per batch, the others per epoch"
    )
    max_lr: float | None = Field(
        None, gt=0.0, le=10.0, description="one-cycle peak lr (default: optim.lr)"
    )
    pct_start: float = Field(
        0.3, gt=0.0, lt=1.0, description="one-cycle: share of training spent rising to max_lr"
    )
    milestones: list[int] = Field(
        default_factory=list, description="step: epochs at which lr is multiplied by gamma"
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: lr factor at each milestone")
    warmup_epochs: int = Field(0, ge=0, description="cosine/linear: epochs of linear warm-up")


class ModelConfig(Section):
    name: str = Field("cnn_small", description="the student architecture")
    pretrained: str | None = Field(
        None,
        description="initial weights of the student: a state-dict file (torch.save of a state_dict), or torchvision: its ImageNet weights (resnet18, resnet50) from the torch hub cache, never downloaded; tensors of another shape are skipped",
    )
    freeze: bool = Field(
        False,
        description="train only the classifier head; the frozen batch-norm layers keep their running statistics",
    )


class TeacherConfig(Section):
    model: str = Field(
        "resnet20",
        description="teacher architecture (for methods with a teacher, and init.interp_lambda)",
    )
    pretrained: str | None = Field(
        None, description="initial weights of the teacher, as model.pretrained"
    )
    freeze: bool = Field(
        False,
        description="teacher: train only the classifier head; the frozen batch-norm layers keep their running statistics",
    )
    epochs: int = Field(5, ge=1, le=10_000, description="epochs the teacher is trained for")
    epoch: int | None = Field(
        None,
        ge=1,
        description="the teacher's epoch to distil from (default: the last); see teacher.early_stop",
    )
    early_stop: Literal["snapshot", "shortened"] = Field(
        "snapshot",
        description="teacher.epoch < teacher.epochs means: snapshot = the checkpoint of that epoch of the full run; "
        "shortened = a teacher trained to completion in that many epochs (its schedule scaled)",
    )
    save_epochs: list[int] | None = Field(
        None, description="epochs to keep checkpoints of (default: every epoch)"
    )
    seed: int = Field(
        0, ge=0, description="teacher's own seed, so that student seeds share one teacher"
    )
    batch_size: int = Field(128, ge=1, description="teacher training batch size")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    def saved_epochs(self) -> list[int]:
        if self.save_epochs is None:
            return list(range(1, self.epochs + 1))
        return sorted(set(self.save_epochs) | {self.epochs})

    @property
    def resolved_epoch(self) -> int:
        return self.epochs if self.epoch is None else self.epoch

    @model_validator(mode="after")
    def _epochs_consistent(self) -> TeacherConfig:
        if self.save_epochs is not None:
            bad = [e for e in self.save_epochs if not 1 <= e <= self.epochs]
            if bad:
                raise ValueError(
                    f"teacher.save_epochs {bad} outside 1..teacher.epochs={self.epochs}; drop them or raise teacher.epochs"
                )
        if self.epoch is not None and self.early_stop == "shortened" and self.epoch > self.epochs:
            raise ValueError(
                f"teacher.epoch={self.epoch} is after teacher.epochs={self.epochs}; lower it"
            )
        if (
            self.epoch is not None
            and self.early_stop == "snapshot"
            and self.epoch not in self.saved_epochs()
        ):
            raise ValueError(
                f"teacher.epoch={self.epoch} is never saved (saved epochs: {_span(self.saved_epochs())}); "
                f"set teacher.epoch to one of them or add it to teacher.save_epochs"
            )
        late = [e for e in self.schedule.milestones if not 0 < e < self.epochs]
        if late:
            raise ValueError(
                f"teacher.schedule.milestones {late} outside 1..teacher.epochs-1={self.epochs - 1}; drop them"
            )
        if 0 < self.epochs <= self.schedule.warmup_epochs:
            raise ValueError(
                f"teacher.schedule.warmup_epochs={self.schedule.warmup_epochs} must be below teacher.epochs={self.epochs}"
            )
        return self


class MethodConfig(Section):
    name: str = Field("scratch", description="training method (docs/methods.md)")
    alpha: float = Field(
        0.9, ge=0.0, le=1.0, description="weight of the distillation term; CE gets 1 - alpha"
    )
    temperature: float = Field(
        4.0,
        gt=0.0,
        le=100.0,
        description="softening temperature tau; the KL term is scaled by tau^2",
    )
    loss: Literal["kl", "mse"] = Field(
        "kl", description="distillation term: KL on softened outputs, or MSE between logits"
    )
    weights: dict[str, float] | None = Field(
        None, description="explicit loss-term weights, e.g. {ce: 0.5, mse: 0.5}; overrides alpha"
    )
    peers: int = Field(2, ge=1, le=16, description="dml/pcl/dkel: number of peer networks")
    peer_models: list[str] | None = Field(
        None, description="dml: one architecture per peer (default: model.name for all)"
    )
    kd_stop_epoch: int | None = Field(
        None, ge=0, description="eskd: after this epoch the KD weight is 0"
    )
    ta_model: str | None = Field(None, description="takd: the teacher-assistant architecture")

    @model_validator(mode="after")
    def _weights_non_negative(self) -> MethodConfig:
        if self.weights is not None:
            if any(w < 0 for w in self.weights.values()):
                raise ValueError("method.weights must be >= 0")
        return self


class DKELConfig(Section):
    """PCL and DKEL (seed 002); defaults as the official DKEL code's CIFAR-10 config."""

    beta: float = Field(
        0.5,
        ge=0.0,
        le=100.0,
        description="dkel: rate of the ensemble weight w(e) = exp(-beta*e), 0 once <= 0.01; decay cos and linear ignore it",
    )
    decay: Literal["exp", "cos", "linear"] = Field(
        "exp",
        description="dkel: ensemble-weight schedule, exp(-beta*e), 0.5*(1+cos(pi*e/E)) or 1-e/E (E = run.epochs)",
    )
    ema_decay: float = Field(
        0.999,
        ge=0.0,
        lt=1.0,
        description="pcl/dkel: temporal-mean EMA decay d, used as min(1 - 1/(step+1), d) (mean-teacher warm-up)",
    )
    init_steps: int = Field(
        2,
        ge=0,
        le=10_000,
        description="dkel: CE steps of the temporal mean after copying the student (the code's init: 1 takes 2)",
    )
    init_lr: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="dkel: learning rate of those steps (default: optim.lr / 100, as the code)",
    )
    rampup: Literal["intended", "code", "none"] = Field(
        "intended",
        description="pcl/dkel: ramp-up of the distillation weight to 0.1: sigmoid over rampup_epochs, the official code's (about 0 until epoch rampup_epochs), or none",
    )
    rampup_epochs: int = Field(
        80,
        ge=1,
        le=10_000,
        description="pcl/dkel: epochs of the ramp-up (80 of 300 in the official code)",
    )


class InitConfig(Section):
    interp_lambda: float | None = Field(
        None, ge=0.0, le=1.0, description="theta_s = lambda*theta_teacher + (1-lambda)*theta_random"
    )
    bn_batches: int = Field(
        20,
        ge=1,
        description="training batches used to re-estimate batch-norm statistics after interpolation",
    )


class RunConfig(Section):
    epochs: int = Field(5, ge=1, le=10_000, description="training epochs of the student (or peers)")
    batch_size: int = Field(128, ge=1, description="training batch size")
    eval_batch_size: int = Field(1024, ge=1, description="batch size for evaluation")
    seed: int = Field(0, ge=0, description="seed of initialisation, batch order and augmentation")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:N")
    amp: bool = Field(
        False,
        description="bfloat16 autocast of training steps (CUDA; CPUs with native bf16, e.g. AVX512-BF16 or AMX)",
    )
    teacher_amp: bool = Field(
        False,
        description="bfloat16 autocast of the teacher's per-batch inference (KD with augmentation; logits kept float32)",
    )
    channels_last: bool = Field(
        True,
        description="channels-last memory format for conv nets (faster on CPU, and on CUDA with amp)",
    )
    compile: bool = Field(
        False,
        description="torch.compile the trained networks (compiling takes a while; off by default, it does not pay on CPU)",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch CPU threads (default: torch's); results depend on it, so studies record it",
    )
    teacher_store: str = Field(
        "runs/teachers",
        description="folder or s3://BUCKET/PREFIX of the teacher checkpoint store",
    )

    @model_validator(mode="after")
    def _device_known(self) -> RunConfig:
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ValueError(
                f"run.device={self.device!r} is not a device; use auto, cpu, cuda or cuda:N"
            )
        return self


class Config(Section):
    """A complete, validated run config."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    dkel: DKELConfig = Field(default_factory=DKELConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        m = self.method
        if m.kd_stop_epoch is not None and m.kd_stop_epoch > self.run.epochs:
            raise ValueError(
                f"method.kd_stop_epoch={m.kd_stop_epoch} is after run.epochs={self.run.epochs}; lower it"
            )
        if self.init.interp_lambda is not None and self.teacher.model != self.model.name:
            raise ValueError(
                f"init.interp_lambda needs student and teacher of one architecture, got model.name={self.model.name} "
                f"and teacher.model={self.teacher.model}; set both to the same model"
            )
        late = [e for e in self.schedule.milestones if not 0 < e < self.run.epochs]
        if late:
            raise ValueError(
                f"schedule.milestones {late} outside 1..run.epochs-1={self.run.epochs - 1}; drop them"
            )
        if self.schedule.warmup_epochs >= self.run.epochs and self.schedule.warmup_epochs > 0:
            raise ValueError(
                f"schedule.warmup_epochs={self.schedule.warmup_epochs} must be below run.epochs={self.run.epochs}"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """The resolved config as dotted keys (MLflow params, overrides)."""
        return flatten(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def digest(self) -> str:
        """A short content hash of the resolved config."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and ``method.weights`` stay whole."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "weights":
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML reads it: ``0.9`` -> float, ``[1, 2]`` -> list, ``null`` -> None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Set dotted keys (``{"method.alpha": 0.5}`` or ``["method.alpha=0.5"]``) in a nested dict."""
    if isinstance(overrides, list):
        pairs: dict[str, Any] = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"--set {item!r} is not key=value; write e.g. --set method.alpha=0.5"
                )
            pairs[key.strip()] = parse_value(value)
        overrides = pairs
    tree = json.loads(json.dumps(tree))
    for key, value in overrides.items():
        parts = key.split(".")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {key!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return tree


def from_tree(tree: dict[str, Any]) -> Config:
    """Validate a nested dict against the schema alone; errors become one-line ``ConfigError``.

    Registered names are not checked here: ``distill_core.make_config`` does both.
    """
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """The first validation error as one line naming the dotted key and the fix."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section = _section_at(loc[:-1])
        valid = ", ".join(section.model_fields) if section else ""
        where = f"in '{'.'.join(loc[:-1])}'" if len(loc) > 1 else "at the top level"
        return f"unknown config key '{key}'; valid keys {where}: {valid}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":
        return msg if not key or msg.startswith(loc[0]) else f"{key}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f"={value!r}"
    fix = f"set {key} to a valid value"
    bounds = field_range(loc)
    if bounds:
        fix = f"set {key} to a value {bounds}"
    return f"{key}{shown} is invalid: {msg[0].lower() + msg[1:]}; {fix}"


def field_range(loc: list[str]) -> str:
    """The allowed range of the numeric field at dotted path ``loc``, e.g. ``in [0, 1]`` or ``> 0``."""
    section = _section_at(loc[:-1])
    field = section.model_fields.get(loc[-1]) if section else None
    if field is None:
        return ""
    limits = {
        k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)
    }
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = (
        ("]", limits["le"]) if "le" in limits else (")", limits["lt"]) if "lt" in limits else None
    )
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return (">= " if low[0] == "[" else "> ") + str(low[1])
    if high:
        return ("<= " if high[0] == "]" else "< ") + str(high[1])
    return ""


def _section_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _span(epochs: list[int]) -> str:
    if len(epochs) > 6 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}..{epochs[-1]}"
    return ", ".join(map(str, epochs))
