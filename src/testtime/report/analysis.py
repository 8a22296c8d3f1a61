"""Feature analyses of the CTA paper, section 5.3 (Table 6, Fig. 2).

- :func:`davies_bouldin`: the Davies-Bouldin index of features with respect to the ground-truth
  labels ("semantic alignment with the supervised task", lower is better); scikit-learn's
  ``davies_bouldin_score`` (Davies & Bouldin 1979: mean over clusters of the largest
  (s_i + s_j) / d(c_i, c_j), with s the mean distance of a cluster's points to its mean centroid).
- :func:`median_centroids` and :func:`centroid_distance`: "the distance between the median class
  centroids before and after test-time training" (Table 6, lower is better). The paper does not say
  how the per-class distances are combined: here a class centroid is the coordinate-wise median of
  its features, the distance is Euclidean, and the result is the mean over the classes present in
  both sets (``reduction="none"`` gives each class's distance).
- :func:`tsne_plot`: t-SNE of features before and after adaptation, coloured by class, the DBI of
  each set in its panel's title (Fig. 2); scikit-learn ``TSNE`` with a fixed ``random_state``.

For CTA the features are the projector's output pi(g(x)); for the Y model the encoder's (section
5.3). These functions take the features as arrays; extracting them is the caller's business.

Example::

    dbi = davies_bouldin(feats, labels)
    drift = centroid_distance(feats_before, labels, feats_after, labels)
    tsne_plot(feats_before, feats_after, labels, "runs/x/report/tsne-fog", seed=0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _check(features: np.ndarray, labels: np.ndarray, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (N, D) array, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"labels: expected shape ({len(x)},) to match {name}, got {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains non-finite values")
    return x, y


def davies_bouldin(features: np.ndarray, labels: np.ndarray) -> float:
    """Davies-Bouldin index of ``features`` (N, D) with the classes ``labels`` (N,) as clusters.

    Computed in float64 (scikit-learn on a float32 array works in float32). Needs at least two
    classes and fewer classes than samples (scikit-learn's conditions).
    """
    from sklearn.metrics import davies_bouldin_score

    x, y = _check(features, labels)
    k = len(np.unique(y))
    if not 2 <= k < len(x):
        raise ValueError(f"labels: the Davies-Bouldin index needs 2 <= classes < samples, got {k} classes and "
                         f"{len(x)} samples")
    return float(davies_bouldin_score(x, y))


def median_centroids(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes (C,), centroids (C, D)): each class's coordinate-wise median feature, classes sorted."""
    x, y = _check(features, labels)
    classes = np.unique(y)
    return classes, np.stack([np.median(x[y == c], axis=0) for c in classes])  # (C, D)


def centroid_distance(before: np.ndarray, labels_before: np.ndarray, after: np.ndarray, labels_after: np.ndarray,
                      *, reduction: str = "mean") -> float | np.ndarray:
    """Euclidean distance between each class's median centroid before and after adaptation.

    ``reduction="mean"``: the mean over the classes found in both sets (Table 6's figure);
    ``"none"``: the (C,) distances of those classes, in sorted class order.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    cb, mb = median_centroids(before, labels_before)
    ca, ma = median_centroids(after, labels_after)
    if mb.shape[1] != ma.shape[1]:
        raise ValueError(f"after: feature dimension {ma.shape[1]} differs from before's {mb.shape[1]}")
    common = np.intersect1d(cb, ca)
    if len(common) == 0:
        raise ValueError("labels_after: no class in common with labels_before")
    d = np.linalg.norm(mb[np.searchsorted(cb, common)] - ma[np.searchsorted(ca, common)], axis=1)  # (C,)
    return float(d.mean()) if reduction == "mean" else d


def tsne_embed(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE embedding (N, 2), seeded (scikit-learn ``TSNE``, PCA initialisation)."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"features: t-SNE needs a (N, D) array with N >= 3, got shape {x.shape}")
    perplexity = min(perplexity, (len(x) - 1) / 3)  # TSNE requires perplexity < N
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_plot(before: np.ndarray, after: np.ndarray, labels: np.ndarray, stem: str | Path, *, seed: int = 0,
              titles: tuple[str, str] = ("before adaptation", "after adaptation"),
              labels_after: np.ndarray | None = None) -> list[Path]:
    """Two t-SNE panels (before / after), points coloured by class, the DBI in each title (Fig. 2).

    Writes ``<stem>.png`` and ``<stem>.svg``; returns both paths.
    """
    from testtime.report.plots import _figure, _save

    labels_after = labels if labels_after is None else labels_after
    sets = [(before, labels, titles[0]), (after, labels_after, titles[1])]
    classes = np.union1d(np.unique(labels), np.unique(labels_after))
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    color = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}  # one colour per class in both panels
    fig, axes = _figure(9.0, 4.2, ncols=2)
    for ax, (feats, y, title) in zip(axes, sets):
        x, y = _check(feats, y)
        dbi = davies_bouldin(x, y)
        emb = tsne_embed(x, seed=seed)  # (N, 2)
        for c in classes:
            ax.scatter(emb[y == c, 0], emb[y == c, 1], color=color[c], s=6, label=str(c))
        ax.set_title(f"{title}\nDBI = {dbi:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(classes) <= 20:
        axes[-1].legend(title="class", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, Path(stem))
