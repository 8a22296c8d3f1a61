"""The pipeline's ``peer_train`` section applied to a source stage with its own heads (peers, ttt, ttt++).

:func:`peer_train_settings` gives the section and the stage's TrainConfig (``peer_train.train``, else
``supervised``); :func:`stage_init` where a stage's model starts; :func:`supervised_source` the preset's
``supervised`` model (trained first when its checkpoint is missing); :func:`load_supervised_weights`
copies it into the stage model's encoder + classifier; :func:`check_init` refuses a checkpoint trained
from another init; :func:`peer_train_record` is what a checkpoint's ``peer_train`` meta holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from testtime.config.core import identity_dict
from testtime.train.checkpoint import checkpoint_exists, read_meta


def peer_train_settings(cfg: Any) -> tuple[Any, Any]:
    """``(cfg.peer_train or the default PeerTrainConfig, the TrainConfig the stage trains with)``."""
    from testtime.config import PeerTrainConfig
    from testtime.train.pipeline import _train_cfg

    peer = getattr(cfg, "peer_train", None) or PeerTrainConfig()
    return peer, _train_cfg(cfg, peer.train if peer.train is not None else cfg.supervised)


def stage_init(cfg: Any, stage: str) -> str:
    """Where the source model of a peer or TTT ``stage`` starts: ``"supervised"`` (the supervised
    checkpoint is loaded first, also when the stage's own checkpoint exists) or ``"scratch"``. A method
    with ``init_from_supervised`` (ReC-TTT) always starts from the supervised model; the others as
    ``peer_train.init`` says."""
    from testtime.methods import METHODS

    if getattr(METHODS.get(stage), "init_from_supervised", False):
        return "supervised"
    return peer_train_settings(cfg)[0].init


def peer_train_record(init: str, tcfg: Any) -> dict[str, Any]:
    """The ``peer_train`` entry of a checkpoint's meta: the effective init and TrainConfig."""
    return {"init": init, "train": identity_dict(tcfg)}


def supervised_source(cfg: Any, run_dir: str | Path, data: Any, *, log: Any = print) -> nn.Module:
    """The preset's ``supervised`` model of ``run_dir``: loaded, or trained first when its checkpoint is missing."""
    from testtime.train.pipeline import run_stages

    return run_stages(cfg, run_dir, data, stages=("supervised",), log=log).supervised


def load_supervised_weights(model: nn.Module, sup: nn.Module, stage: str) -> None:
    """Copy the supervised network's weights (``encoder.*``, ``fc.*``) into ``model``'s encoder + classifier.

    Every supervised key must land on a tensor of the same shape and every encoder/classifier tensor must
    be covered; otherwise a one-line ValueError names the keys.
    """
    target = nn.ModuleDict({"encoder": model.encoder, "fc": model.fc})
    src, dst = sup.state_dict(), target.state_dict()
    missing, extra = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
    shape = sorted(k for k in set(src) & set(dst) if src[k].shape != dst[k].shape)
    if missing or extra or shape:
        parts = [
            f"{what} {keys[:5]}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("shape mismatch", shape))
            if keys
        ]
        raise ValueError(
            f"peer_train.init=supervised: the supervised model does not fit {stage}'s encoder + "
            f"classifier ({'; '.join(parts)})"
        )
    target.load_state_dict(src, strict=True)


def check_init(run_dir: Path, names: Sequence[str], init: str, default: str) -> None:
    """Refuse to reuse ``<run_dir>/<name>`` or ``<name>.resume`` trained from another init (absent: ``default``)."""
    for name in names:
        for path in (run_dir / name, run_dir / f"{name}.resume"):
            if checkpoint_exists(path):
                old = read_meta(path).get("meta", {}).get("peer_train", {}).get("init", default)
                if old != init:
                    raise ValueError(
                        f"{path}.safetensors was trained with peer_train.init={old!r}, now {init!r}; "
                        "use another --run-dir or delete it to retrain"
                    )
