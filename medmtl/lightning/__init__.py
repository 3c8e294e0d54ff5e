"""The Lightning layer: ``MultitaskModule``, its callbacks, PNG panels and the ``medmtl fit|validate|test|predict`` CLI."""

from medmtl.lightning.callbacks import MetricsJSON, PredictionWriter, StepTimer, TimeBudget
from medmtl.lightning.csv_logger import CSVLogger
from medmtl.lightning.model_checkpoint import ModelCheckpoint
from medmtl.lightning.module import MultitaskModule

__all__ = [
    "CSVLogger",
    "MetricsJSON",
    "ModelCheckpoint",
    "MultitaskModule",
    "PredictionWriter",
    "StepTimer",
    "TimeBudget",
]
