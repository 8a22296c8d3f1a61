"""Tampered or foreign checkpoint files fail in one line before anything is parsed or allocated (issue 9)."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch

from testtime.api import load_bundle
from testtime.models import create_model
from testtime.models.heads import ProjectedClassifier, projector
from testtime.train.checkpoint import load_checkpoint, read_meta, save_modules


def _bundle(tmp_path):
    m = create_model("resnet8", 4)
    b = ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc)
    meta = {"arch": "resnet8", "num_classes": 4, "in_chans": 3, "feature_dim": m.feature_dim}
    save_modules(tmp_path / "cta", {"encoder": b.encoder, "projector": b.projector, "head": b.head}, meta)
    return tmp_path / "cta"


def _reseal(path, data: bytes | None = None, **side_changes) -> None:
    """Rewrite the weights (optionally) and the sidecar with a matching sha256, as an attacker would."""
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if data is not None:
        st.write_bytes(data)
    side = json.loads(js.read_text())
    side["sha256"] = hashlib.sha256(st.read_bytes()).hexdigest()
    for k, v in side_changes.items():
        if v is None:
            side.pop(k, None)
        else:
            side[k] = v
    js.write_text(json.dumps(side))


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    path = _bundle(tmp_path)
    _reseal(path, pickle.dumps({"w": torch.zeros(2)}))
    with pytest.raises(ValueError, match="is a Python pickle or torch.save zip, not a valid safetensors file"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_bundle(path)


def test_sidecar_without_sha256_is_refused(tmp_path):
    path = _bundle(tmp_path)
    _reseal(path, sha256=None)
    with pytest.raises(ValueError, match="no valid sha256"):
        load_checkpoint(path)
    _reseal(path, sha256="abc")
    with pytest.raises(ValueError, match="no valid sha256"):
        read_meta(path)


@pytest.mark.parametrize("key,value", [("num_classes", 10**12), ("feature_dim", 2**40), ("in_chans", 7),
                                       ("num_classes", "4"), ("arch", "resnet9000")])
def test_absurd_sizes_in_the_sidecar_are_refused_before_allocating(tmp_path, key, value):
    path = _bundle(tmp_path)
    side = json.loads(path.with_suffix(".json").read_text())
    side["meta"][key] = value
    path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match=key if key != "arch" else "unknown arch"):
        load_bundle(path)
