"""``testtime methods``: lists every registered method; unknown names fail with the valid ones."""

from __future__ import annotations

import json

from testtime.cli import main
from testtime.methods import list_methods


def test_table_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:6] == ["name", "adapts", "needs", "bs=1", "order", "paper"]
    assert [line.split()[0] for line in out[1:]] == list_methods()
    tent = next(line for line in out if line.startswith("tent "))
    assert "BN layers" in tent and "ICLR 2021" in tent


def test_json_and_one_method(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["eata"]["needs"] == ["BN layers", "source data"]
    assert rows["memo"]["batch_size_1"] and rows["memo"]["default_order"] == "after"
    assert main(["methods", "cotta", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["mt"] == 0.999 and info["config"]["n_augmentations"] == 32
    assert main(["methods", "sar"]) == 0
    assert "rho = 0.05" in capsys.readouterr().out


def test_unknown_method_is_one_line_error(capsys):
    assert main(["methods", "tentt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("testtime methods: error: unknown method 'tentt'; valid: ") and "\n" not in err


def test_table_says_what_each_method_adapts_and_needs(capsys):
    assert main(["methods"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "batches >= 2" in rows["shot-im"] and "encoder" in rows["shot-im"]
    assert "BN layers, cotta-aug views" in rows["rotta"] and "memory bank" in rows["rotta"]
    assert "nothing: output assignments only" in rows["lame"] and "class prototypes" in rows["t3a"]
    assert "norm-layer affine" in rows["deyo"] and "reset to the source every N steps" in rows["rdumb"]
