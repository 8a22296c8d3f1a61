"""The config system of every command: typed frozen dataclasses, YAML, ``--set`` overrides.

``core``: :func:`config_from_dict` (unknown keys name the closest valid one), :func:`apply_overrides`,
:func:`read_yaml`; ``pipeline``: CTA's :class:`PipelineConfig` (the source presets); the bench grid's
config is :class:`testtime.bench.spec.BenchConfig`.
"""

from testtime.config.core import (
    LATER_FIELDS,
    apply_overrides,
    closest,
    config_from_dict,
    config_to_dict,
    identity_dict,
    read_yaml,
    strip_later_fields,
)
from testtime.config.pipeline import (
    EVAL_ROWS,
    HELDOUT_4,
    NAME_RE,
    PEER_INITS,
    STAGES,
    AlignStageConfig,
    DataConfig,
    EvalConfig,
    JointStageConfig,
    ModelConfig,
    PeerTrainConfig,
    PipelineConfig,
    ProbeStageConfig,
    SSLStageConfig,
    TTTConfig,
    check_device,
    check_range,
    check_runnable,
)

__all__ = [
    "EVAL_ROWS", "NAME_RE", "check_device", "check_range", "check_runnable",
    "HELDOUT_4", "STAGES", "AlignStageConfig", "DataConfig", "EvalConfig", "JointStageConfig", "ModelConfig",
    "PEER_INITS", "PeerTrainConfig", "PipelineConfig", "ProbeStageConfig", "SSLStageConfig", "TTTConfig",
    "apply_overrides", "closest",
    "config_from_dict", "config_to_dict", "identity_dict", "read_yaml", "strip_later_fields", "LATER_FIELDS",
]  # fmt: skip
