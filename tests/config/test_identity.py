"""A config's identity (checkpoint reuse, bench cell keys) leaves later fields out at their old value."""

from __future__ import annotations

from testtime.config import LATER_FIELDS, identity_dict, strip_later_fields
from testtime.train.pipeline import PipelineConfig
from testtime.train.trainer import TrainConfig


def test_later_fields_at_their_old_value_are_left_out_at_any_depth():
    assert LATER_FIELDS["cutout"] == TrainConfig().cutout == 0
    assert "cutout" not in identity_dict(TrainConfig())
    assert identity_dict(TrainConfig(cutout=8))["cutout"] == 8
    pipe = identity_dict(PipelineConfig())
    assert "cutout" not in pipe["supervised"] and "cutout" not in pipe["ssl"]["train"]
    nested = {"a": [{"cutout": 0, "b": 1}], "cutout": 3, "c": ({"cutout": 0},)}
    assert strip_later_fields(nested) == {"a": [{"b": 1}], "cutout": 3, "c": ({},)}


def test_identity_is_the_plain_dict_otherwise():
    plain = TrainConfig(epochs=3, lr=0.1).__dict__
    assert identity_dict(TrainConfig(epochs=3, lr=0.1)) == {k: v for k, v in plain.items() if k not in LATER_FIELDS}


def test_lookahead_fields_are_later_fields_and_settable_from_the_cli():
    """A default TrainConfig identifies as before the Lookahead option (checkpoints and cells still match);
    ``--set supervised.lookahead_every=5`` reaches the supervised stage and its identity."""
    from testtime.config import apply_overrides, config_from_dict

    default = identity_dict(TrainConfig())
    assert "lookahead_every" not in default and "lookahead_decay" not in default
    assert LATER_FIELDS["lookahead_every"] == TrainConfig().lookahead_every == 0
    assert LATER_FIELDS["lookahead_decay"] == TrainConfig().lookahead_decay == 0.95**5
    cfg = config_from_dict(PipelineConfig, apply_overrides({}, ["supervised.lookahead_every=5"]))
    assert cfg.supervised.lookahead_every == 5 and cfg.ssl.train.lookahead_every == 0
    ident = identity_dict(cfg)
    assert ident["supervised"]["lookahead_every"] == 5 and "lookahead_decay" not in ident["supervised"]
    assert "lookahead_every" not in ident["ssl"]["train"]
    tuned = config_from_dict(PipelineConfig, apply_overrides({}, ["supervised.lookahead_decay=0.5"]))
    assert identity_dict(tuned)["supervised"]["lookahead_decay"] == 0.5
