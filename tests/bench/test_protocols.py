import numpy as np
import pytest

from testtime.bench import Domain, get_protocol, list_protocols


def _domains(n=10, k=3):
    rng = np.random.default_rng(0)
    return [Domain(f"d{i}", rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), rng.integers(0, 4, n))
            for i in range(k)]


def test_listing():
    assert set(list_protocols()) >= {"episodic", "reset-per-domain", "continual", "mixed", "single-sample",
                                     "label-shift"}


@pytest.mark.parametrize("name,expected", [("episodic", [True] * 12), ("continual", [True] + [False] * 11),
                                           ("reset-per-domain", [True, False, False, False] * 3)])
def test_reset_points(name, expected):
    p = get_protocol(name, batch_size=3)
    assert [b.reset_before for b in p.stream(_domains())] == expected


def test_stream_covers_every_sample_once_and_is_seeded():
    for name in list_protocols():
        p = get_protocol(name, batch_size=get_protocol(name).fixed_batch_size or 4)
        seen = [(b.domain, i) for b in p.stream(_domains()) for i in b.index]
        assert len(seen) == len(set(seen)) == 30
        again = [(b.domain, i) for b in p.stream(_domains()) for i in b.index]
        assert seen == again


def test_mixed_batches_mix_domains():
    p = get_protocol("mixed", batch_size=15)
    batches = list(p.stream(_domains()))
    assert any(len(set(b.domains)) > 1 for b in batches)


def test_dirichlet_concentrates_classes():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 100)
    d = [Domain("d", np.zeros((1000, 2, 2, 3), np.uint8), labels)]
    def mean_classes(conc):
        p = get_protocol("label-shift", batch_size=50, dirichlet=conc, seed=3)
        return np.mean([len(np.unique(b.labels)) for b in p.stream(d)])
    assert mean_classes(0.01) < mean_classes(100.0)
    assert mean_classes(100.0) > 8
    del rng


def test_bad_protocol_arguments():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        get_protocol("episodic", batch_size=0)
    with pytest.raises(ValueError, match="order must be"):
        get_protocol("episodic", order="during")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['batchsize'\]"):
        get_protocol("episodic", batchsize=3)
    with pytest.raises(KeyError, match="unknown protocol"):
        get_protocol("sometimes")
    with pytest.raises(ValueError, match="dirichlet"):
        get_protocol("label-shift", dirichlet=0)


def test_describe_states_order():
    assert "predict=after update" in get_protocol("episodic", order="after").describe()
    assert "method default (before)" in get_protocol("episodic").describe("before")
