"""CTA's pipeline config: data, model, the source-time stages, test time and evaluation.

Only what differs from these defaults is in the shipped presets (``testtime/configs/*.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from testtime.data.names import CORRUPTIONS_15, CORRUPTIONS_EXTRA
from testtime.train.objectives import AlignWeights
from testtime.train.trainer import TrainConfig

STAGES = ("supervised", "ssl", "align", "probe", "joint")
HELDOUT_4 = CORRUPTIONS_EXTRA  # the 4 held-out corruptions, for choosing hyperparameters


@dataclass(frozen=True)
class DataConfig:
    """Where the source and test images come from; every subset is seeded."""

    dataset: str = "imagefolder"  # a testtime.data dataset name
    root: str | None = None  # None: $<root_env> (image folders need a root)
    root_env: str | None = "TESTTIME_CIFAR10_JPEG"
    train_split: str = "train"
    test_split: str = "test"
    train_per_class: int | None = 1000  # None = the whole training split
    test_per_class: int = 50  # per corruption: the same seeded clean subset, corrupted
    heldout_per_class: int = 26  # a disjoint seeded subset for the held-out corruptions
    seed: int = 0  # the training subset and the first test subset (the trained models depend on it)
    # the test subset and the corruption draws (not training): None = seed; another value draws a new
    # test subset disjoint from the held-out one, so several eval seeds reuse one trained model
    eval_seed: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet8"
    norm: str = "batch"


@dataclass(frozen=True)
class SSLStageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    tau: float = 0.01  # Eq. 1 (Table 3)
    init: str = "supervised"  # "supervised": g = copy of f; "scratch": fresh weights
    pi_init: str = "identity"  # "identity" | "random"


@dataclass(frozen=True)
class AlignStageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    weights: AlignWeights = field(default_factory=AlignWeights)


@dataclass(frozen=True)
class ProbeStageConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, warmup_epochs=0, lr=1e-3))


@dataclass(frozen=True)
class JointStageConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    tau: float = 0.01
    ssl_weight: float = 1.0
    init: str = "supervised"  # "supervised": start from h(f) + identity pi; "scratch"


@dataclass(frozen=True)
class TTTConfig:
    """Test time (paper: Adam, lr 1e-6, batch 128, 20 iterations, tau 0.01, episodic)."""

    lr: float = 1e-6
    steps: int = 20
    batch_size: int = 128
    tau: float = 0.01
    bn: str = "batch"
    protocol: str = "episodic"
    select_on_heldout: bool = True  # choose lr and steps on the held-out corruptions
    lr_candidates: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    max_steps: int = 20  # the curve's length (Fig. 3)
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    corruptions: tuple[str, ...] = CORRUPTIONS_15
    heldout: tuple[str, ...] = HELDOUT_4
    severity: int = 5
    params: str | None = None  # corruption parameter set; None = by image size (32 px: "cifar")
    rows: tuple[str, ...] = (
        "supervised", "supervised+bn", "aligned", "aligned+bn", "cta", "cta-paper-settings",
        "ssl+probe", "ssl+probe+bn", "cta-c", "y-model-eval", "y-model+bn", "y-model",
    )  # fmt: skip


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "custom"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads when set
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    supervised: TrainConfig = field(default_factory=TrainConfig)
    ssl: SSLStageConfig = field(default_factory=SSLStageConfig)
    align: AlignStageConfig = field(default_factory=AlignStageConfig)
    probe: ProbeStageConfig = field(default_factory=ProbeStageConfig)
    joint: JointStageConfig = field(default_factory=JointStageConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # source-time heads of the CTA paper's peers, by method: fields of its HeadConfig that differ from
    # the paper's, e.g. {"nc-ttt": {"embed_dim": 64}} (``--set peer_heads.nc-ttt.embed_dim=64``)
    peer_heads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ssl.init not in ("supervised", "scratch"):
            raise ValueError(f"ssl.init must be 'supervised' or 'scratch', got {self.ssl.init!r}")
        if self.ssl.pi_init not in ("identity", "random"):
            raise ValueError(f"ssl.pi_init must be 'identity' or 'random', got {self.ssl.pi_init!r}")
        if self.joint.init not in ("supervised", "scratch"):
            raise ValueError(f"joint.init must be 'supervised' or 'scratch', got {self.joint.init!r}")
        if self.ttt.batch_size < 2:
            raise ValueError(f"ttt.batch_size must be >= 2 (NT-Xent needs negatives), got {self.ttt.batch_size}")
        if not 1 <= self.eval.severity <= 5:
            raise ValueError(f"eval.severity must be 1..5, got {self.eval.severity}")


