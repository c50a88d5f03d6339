"""distill_core: the knowledge-distillation trainer library (pure PyTorch, no Ray/Optuna/MLflow)."""

from __future__ import annotations

from distill_core.config import Config
from distill_core.configure import load_config, make_config
from distill_core.data import DATASETS, Splits, load_data
from distill_core.errors import ConfigError, DataError, TeacherError, UserError
from distill_core.methods import METHODS, Method, dkel, dml, kd, pcl  # noqa: F401 (registers them)
from distill_core.models import MODELS, build_model
from distill_core.teachers import TeacherStore, required_teachers, uses_teacher
from distill_core.trainer import EpochReport, FitResult, fit, fit_epochs

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "Config",
    "ConfigError",
    "DataError",
    "EpochReport",
    "FitResult",
    "Method",
    "Splits",
    "TeacherError",
    "TeacherStore",
    "UserError",
    "build_model",
    "fit",
    "fit_epochs",
    "load_config",
    "load_data",
    "make_config",
    "required_teachers",
    "uses_teacher",
]
