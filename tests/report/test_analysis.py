"""Table 6 / Fig. 2 analyses: DBI against scikit-learn and the plain formula, median-centroid drift, t-SNE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import davies_bouldin_score

from testtime.report.analysis import centroid_distance, davies_bouldin, median_centroids, tsne_embed, tsne_plot


def blobs(seed=0, n=90, d=6, k=3):
    x, y = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=1.5, random_state=seed)
    return x.astype(np.float32), y


def dbi_by_hand(x, y):
    """Davies & Bouldin (1979): s_i = mean distance to the (mean) centroid; R_ij = (s_i + s_j) / d_ij;
    DBI = mean_i max_{j != i} R_ij."""
    classes = np.unique(y)
    cent = np.stack([x[y == c].mean(0) for c in classes])
    s = np.array([np.linalg.norm(x[y == c] - cent[i], axis=1).mean() for i, c in enumerate(classes)])
    r = [max((s[i] + s[j]) / np.linalg.norm(cent[i] - cent[j]) for j in range(len(classes)) if j != i)
         for i in range(len(classes))]
    return float(np.mean(r))


@pytest.mark.parametrize("seed", [0, 1])
def test_dbi_equals_sklearn_and_the_formula(seed):
    x, y = blobs(seed)
    assert davies_bouldin(x, y) == davies_bouldin_score(x.astype(np.float64), y)  # the wrapper works in float64
    assert davies_bouldin(x, y) == pytest.approx(davies_bouldin_score(x, y), rel=1e-6)
    assert davies_bouldin(x, y) == pytest.approx(dbi_by_hand(x.astype(np.float64), y), rel=1e-9)
    # tighter clusters (same centres) have a lower index
    tight = x.copy()
    for c in np.unique(y):
        tight[y == c] = x[y == c].mean(0) + 0.5 * (x[y == c] - x[y == c].mean(0))
    assert davies_bouldin(tight, y) == pytest.approx(0.5 * davies_bouldin(x, y), rel=1e-5)


def test_median_centroids_and_distance_by_hand():
    before = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [10.0, 10.0], [10.0, 12.0], [11.0, 11.0]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    classes, cent = median_centroids(before, labels)
    np.testing.assert_array_equal(classes, [0, 1])
    np.testing.assert_array_equal(cent, [[1.0, 0.0], [10.0, 11.0]])  # coordinate-wise medians
    after = before + np.array([[3.0, 4.0]] * 3 + [[0.0, 1.0]] * 3)  # class 0 moves by 5, class 1 by 1
    np.testing.assert_allclose(centroid_distance(before, labels, after, labels, reduction="none"), [5.0, 1.0])
    assert centroid_distance(before, labels, after, labels) == pytest.approx(3.0)
    # the median ignores an outlier that would move a mean centroid
    outlier = after.copy()
    outlier[2] = [1e6, 1e6]
    assert centroid_distance(before, labels, outlier, labels) == pytest.approx(3.0)
    # only classes present in both sets are compared
    assert centroid_distance(before, labels, after[:3], labels[:3]) == pytest.approx(5.0)


@pytest.mark.parametrize("call, match", [
    (lambda: davies_bouldin(np.zeros(5), np.zeros(5)), r"\(N, D\)"),
    (lambda: davies_bouldin(np.zeros((5, 2)), np.zeros(4)), "labels"),
    (lambda: davies_bouldin(np.arange(10.0).reshape(5, 2), np.zeros(5)), "2 <= classes"),
    (lambda: davies_bouldin(np.full((4, 2), np.nan), np.array([0, 0, 1, 1])), "non-finite"),
    (lambda: centroid_distance(np.zeros((2, 2)), np.array([0, 1]), np.zeros((2, 3)), np.array([0, 1])), "dimension"),
    (lambda: centroid_distance(np.zeros((2, 2)), np.array([0, 1]), np.zeros((2, 2)), np.array([2, 3])), "common"),
    (lambda: centroid_distance(np.zeros((2, 2)), np.array([0, 1]), np.zeros((2, 2)), np.array([0, 1]),
                               reduction="sum"), "reduction"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tsne_is_seeded_and_plot_has_dbi_in_titles(tmp_path):
    x, y = blobs(n=60)
    e1, e2 = tsne_embed(x, seed=3), tsne_embed(x, seed=3)
    assert e1.shape == (60, 2)
    np.testing.assert_array_equal(e1, e2)
    after, _ = blobs(seed=5, n=60)
    files = tsne_plot(x, after, y, tmp_path / "tsne", seed=0)
    assert [f.name for f in files] == ["tsne.png", "tsne.svg"]
    assert files[0].read_bytes().startswith(b"\x89PNG")
    svg = files[1].read_text()
    assert f"DBI = {davies_bouldin(x, y):.2f}" in svg and f"DBI = {davies_bouldin(after, y):.2f}" in svg
