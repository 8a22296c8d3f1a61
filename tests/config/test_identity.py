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
    assert identity_dict(TrainConfig(epochs=3, lr=0.1)) == {k: v for k, v in plain.items() if k != "cutout"}
