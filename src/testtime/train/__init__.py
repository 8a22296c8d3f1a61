"""The one trainer for every source-time stage, its objectives and checkpoints.

Example::

    from testtime.train import SimCLRObjective, TrainConfig, fit
    fit(SimCLRObjective(g, pi, tau=0.01), split, TrainConfig(epochs=10), "runs/cta", "ssl")
"""

from testtime.train.checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    load_modules,
    read_meta,
    save_checkpoint,
    save_modules,
)
from testtime.train.objectives import (
    AlignObjective,
    AlignWeights,
    JointObjective,
    LinearProbeObjective,
    Objective,
    SimCLRObjective,
    SupervisedObjective,
)
from testtime.train.trainer import FitResult, StopTraining, TrainConfig, fit, lr_at, step_generator

__all__ = [
    "AlignObjective",
    "AlignWeights",
    "FitResult",
    "JointObjective",
    "LinearProbeObjective",
    "Objective",
    "SimCLRObjective",
    "StopTraining",
    "SupervisedObjective",
    "TrainConfig",
    "checkpoint_exists",
    "fit",
    "load_checkpoint",
    "load_modules",
    "lr_at",
    "read_meta",
    "save_checkpoint",
    "save_modules",
    "step_generator",
]
