"""A hand-made results store for the report tests (values chosen so every figure is easy by hand)."""

from __future__ import annotations

from testtime.store import ResultStore

PROTO = "protocol=episodic, reset=batch, batch_size=4, shuffle=True, seed=0"
# (label, method, hparams, corruption -> accuracy per seed)
ACC = [
    ("source", "source", {}, {"gaussian_noise": [20.0, 22.0], "fog": [50.0, 52.0]}),
    ("tent", "tent", {"lr": 0.001}, {"gaussian_noise": [30.0, 34.0], "fog": [60.0, 60.0]}),
    ("cta", "cta", {"lr": 1e-06, "steps": 20}, {"gaussian_noise": [40.0, 44.0], "fog": [70.0, 74.0]}),
]


def cell(label, method, hparams, corruption, seed, accuracy, severity=5, **kw):
    return {"label": label, "method": method, "hparams": hparams, "corruption": corruption, "seed": seed,
            "accuracy": accuracy, "severity": severity, "protocol": PROTO, "backbone": "resnet8",
            "dataset": "cifar10", **kw}


def hand_store() -> ResultStore:
    store = ResultStore.memory()
    for label, method, hp, by_corr in ACC:
        for corr in ("fog", "gaussian_noise"):  # stored out of benchmark order on purpose
            for seed, a in enumerate(by_corr[corr]):
                store.put(cell(label, method, hp, corr, seed, a, wall_s=2.0, images_per_s=50.0))
    # severity 3, one seed: two tent settings, cta lacks fog
    store.put(cell("tent", "tent", {"lr": 0.001}, "fog", 0, 80.0, severity=3))
    store.put(cell("tent", "tent", {"lr": 0.0001}, "fog", 0, 81.5, severity=3))
    store.put(cell("tent", "tent", {"lr": 0.001}, "gaussian_noise", 0, 70.0, severity=3))
    store.put(cell("tent", "tent", {"lr": 0.0001}, "gaussian_noise", 0, 69.25, severity=3))
    store.put(cell("cta", "cta", {}, "gaussian_noise", 0, 75.0, severity=3))
    return store
