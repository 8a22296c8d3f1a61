"""``lame``: Laplacian-regularised output adjustment of a frozen model (no backpropagation).

Boudiaf, Mueller, Ben Ayed and Bertinetto, "Parameter-free Online Test-time Adaptation", CVPR 2022
(official code: fiveai/LAME).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from testtime.methods.base import Method, MethodConfig, Requirements, register_method
from testtime.models.split import split_classifier

AFFINITIES = ("knn", "rbf", "linear")


@dataclass(frozen=True)
class LAMEConfig(MethodConfig):
    """LAME's defaults (fiveai/LAME; the same values in mariodoebler/test-time-adaptation).

    - ``affinity``: the affinity W between the L2-normalised features of a batch: ``"knn"`` (w_ij = 1
      when j is one of the ``knn`` nearest neighbours of i, the paper's choice for its main results),
      ``"rbf"`` or ``"linear"`` (w_ij = <z_i, z_j>).
    - ``knn``: k = 5 neighbours (for ``"rbf"``: the bandwidth is the mean distance to the k-th
      nearest point, the point itself included, as the official code does; ``sigma`` is unused there too).
    - ``force_symmetry``: use (W + W^T) / 2 (off).
    - ``bound_lambda``: the weight of the Laplacian term (1).
    - ``max_steps``: at most 100 fixed-point iterations, stopping when the energy changes by at most
      1e-8 of its value.
    - ``steps`` is 0: nothing is trained.
    """

    steps: int = 0
    affinity: str = "knn"
    knn: int = 5
    sigma: float = 1.0
    force_symmetry: bool = False
    bound_lambda: float = 1.0
    max_steps: int = 100


def knn_affinity(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D) features -> (N, N) with w_ij = 1 when j is among the k nearest neighbours of i (j != i)."""
    dist = torch.cdist(z, z)  # (N, N)
    n_neighbors = min(k + 1, z.shape[0])
    idx = dist.topk(n_neighbors, dim=-1, largest=False).indices[:, 1:]  # (N, k): the first is i itself
    return torch.zeros_like(dist).scatter_(-1, idx, 1.0)


def rbf_affinity(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D) -> (N, N) ``exp(-d_ij^2 / (2 s^2))``, s the mean distance to the k-th nearest point (self included)."""
    dist = torch.cdist(z, z)  # (N, N)
    s = dist.topk(min(k, z.shape[0]), dim=-1, largest=False).values[:, -1].mean()
    return torch.exp(-(dist**2) / (2 * s**2))


def laplacian_optimization(
    unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float = 1.0, max_steps: int = 100
) -> torch.Tensor:
    """LAME's concave-convex fixed point: ``z_i <- softmax(-u_i + lambda sum_j w_ij z_j)``.

    Minimises ``E(Z) = sum_i [u_i^T z_i - lambda sum_j w_ij z_i^T z_j + z_i^T log z_i]`` with
    ``u_i = -log p_i`` over the simplex (the Laplacian-regularised objective of the paper; each
    iteration linearises the concave Laplacian term and solves the convex rest in closed form, so
    ``z_i`` is proportional to ``p_i exp(lambda sum_j w_ij z_j)``). Starts at ``z = p`` and stops after
    ``max_steps`` or once ``|E - E_old| <= 1e-8 |E_old|`` (from the third iteration, as the code does).

    Args:
        unary: (N, K) ``-log p``.
        kernel: (N, N) affinities W.
    Returns:
        (N, K) the adjusted assignments Z (rows on the simplex).
    """
    y = (-unary).softmax(-1)  # (N, K)
    old = float("inf")
    for i in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(y)  # (N, K)
        y = (-unary + pairwise).softmax(-1)
        energy = float((unary * y - pairwise * y + y * torch.log(y.clamp_min(1e-20))).sum())
        if i > 1 and abs(energy - old) <= 1e-8 * abs(old):
            break
        old = energy
    return y


@register_method("lame")
class LAME(Method):
    """LAME (Boudiaf et al., CVPR 2022): the model is frozen (eval mode, source BN statistics) and only
    its outputs are adjusted. For a batch with softmax predictions p_i and L2-normalised features z_i
    (the input of the classifier), LAME finds assignments Y close to p (a KL term) that agree between
    neighbours (a Laplacian term over a kNN affinity, k = 5), by the concave-convex fixed-point
    iteration of :func:`laplacian_optimization`. The returned logits are ``log Y`` (so their softmax is
    Y). As in the official code: unary ``-log(p + 1e-10)``, kNN without self-loops, energy-based
    stopping, at most 100 iterations. No parameter or statistic changes, so predicting before or
    after "the update" gives the same result; batch size 1 is accepted and returns p unchanged (W = 0).

    Example::

        m = create_method("lame", model)
        logits = m(x)      # (B, K) log of the Laplacian-adjusted assignments
    """

    paper = 'Boudiaf et al., "Parameter-free Online Test-time Adaptation", CVPR 2022'
    Config = LAMEConfig
    requirements = Requirements(adapts="nothing: output assignments only (Laplacian-regularised, kNN k=5)")
    default_order = "before"

    def check_model(self, model: nn.Module) -> None:
        c = self.config
        if c.affinity not in AFFINITIES:
            raise ValueError(f"lame: affinity must be one of {', '.join(AFFINITIES)}; got {c.affinity!r}")
        if c.knn < 1 or c.max_steps < 1 or c.bound_lambda < 0:
            raise ValueError(f"lame: need knn >= 1, max_steps >= 1, bound_lambda >= 0; got knn={c.knn}, "
                             f"max_steps={c.max_steps}, bound_lambda={c.bound_lambda}")
        split_classifier(model)  # fails in one line when the model has no recognisable linear head

    def configure(self) -> None:
        super().configure()
        self._split = split_classifier(self.model)  # (encoder, head), a tuple: not registered twice

    def kernel(self, z: torch.Tensor) -> torch.Tensor:
        """(N, N) affinity of the L2-normalised features ``z`` (N, D)."""
        c = self.config
        if c.affinity == "knn":
            w = knn_affinity(z, c.knn)
        elif c.affinity == "rbf":
            w = rbf_affinity(z, c.knn)
        else:
            w = z @ z.T
        return (w + w.T) / 2 if c.force_symmetry else w

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        encoder, head = self._split
        feats = encoder(x)  # (B, D)
        probs = head(feats).float().softmax(1)  # (B, K)
        unary = -torch.log(probs + 1e-10)
        z = F.normalize(feats.float().flatten(1), p=2, dim=-1)
        y = laplacian_optimization(unary, self.kernel(z), self.config.bound_lambda, self.config.max_steps)
        return torch.log(y.clamp_min(1e-20))
