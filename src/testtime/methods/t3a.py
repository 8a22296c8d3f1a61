"""``t3a``: test-time classifier adjustment with entropy-filtered class prototypes (no backpropagation).

Iwasawa and Matsuo, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain
Generalization", NeurIPS 2021 (official code: matsuolab/T3A, ``domainbed/adapt_algorithms.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from testtime.losses.entropy import softmax_entropy
from testtime.methods._state import GrowingState
from testtime.methods.base import Method, MethodConfig, Requirements, register_method
from testtime.models.split import split_classifier


@dataclass(frozen=True)
class T3AConfig(MethodConfig):
    """T3A's defaults (matsuolab/T3A ``hparams_registry.py``).

    - ``filter_k``: M, the number of lowest-entropy supports kept per class (100; the official search
      space is {1, 5, 20, 50, 100, -1}). Must be >= 1 here: the official ``-1`` ("keep all") is
      applied as ``[:-1]`` and so silently drops the highest-entropy support of every class.
    - ``steps``: 1 = each test batch joins the support set once (0: classify with the initial
      prototypes, the classifier's own weights). Nothing is trained.
    """

    steps: int = 1
    filter_k: int = 100


@register_method("t3a")
class T3A(Method):
    """T3A (Iwasawa and Matsuo, NeurIPS 2021): the feature extractor and classifier are frozen; the
    classifier is replaced by class prototypes computed from a support set. The support set of class
    k starts with the classifier's weight vector w_k (labelled by the classifier's own argmax on it);
    each test feature z = f(x) joins the set of its pseudo-label argmax h(z), with the entropy of h(z)
    as its score; each class keeps its M = 100 lowest-entropy supports (the entropy filter); the
    prototype of class k is the sum of its L2-normalised supports, and the logits are
    ``z . c_k / ||c_k||``. As in the official code, the batch is added before it is classified (its own
    features take part in its prediction), z itself is not normalised, and the classifier's bias is not
    used by the prototype classifier. The support set is declared state (``reset()`` empties it back
    to the classifier's weights). Any batch size, no BN needed.

    Example::

        m = create_method("t3a", model)
        logits = m(x)     # (B, K): x's features join the supports, then prototype logits
    """

    paper = ('Iwasawa and Matsuo, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain '
             'Generalization", NeurIPS 2021')
    Config = T3AConfig
    requirements = Requirements(adapts="class prototypes from entropy-filtered test features (no parameters)")
    default_order = "before"

    def check_model(self, model: nn.Module) -> None:
        c = self.config
        if c.filter_k < 1 or c.steps not in (0, 1):
            raise ValueError(f"t3a: need filter_k >= 1 and steps 0 or 1; got filter_k={c.filter_k}, steps={c.steps}")
        _, head = split_classifier(model)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"t3a: the classifier must be an nn.Linear (its weights start the support set); "
                             f"got {type(head).__name__}")

    def configure(self) -> None:
        super().configure()
        self._split = split_classifier(self.model)  # (encoder, head), a tuple: not registered twice
        head = self._split[1]
        with torch.no_grad():
            w = head.weight.detach().clone()  # (K, D): the initial supports
            logits = head(w)
        self.num_classes = int(head.out_features)
        # Declared state: the supports (N, D), their pseudo-labels (N,) and entropies (N,).
        self.support = GrowingState(z=w, labels=logits.argmax(1), ent=softmax_entropy(logits))
        self.last_selected = 0  # diagnostic: supports kept after the last filter

    @torch.no_grad()
    def select(self) -> None:
        """Keep the M lowest-entropy supports of each class (in class order, as the official code)."""
        s = self.support
        keep = []
        for k in range(self.num_classes):
            idx = (s.labels == k).nonzero().flatten()
            keep.append(idx[s.ent[idx].argsort()[: self.config.filter_k]])
        keep = torch.cat(keep)
        s.z, s.labels, s.ent = s.z[keep], s.labels[keep], s.ent[keep]
        self.last_selected = int(keep.numel())

    @torch.no_grad()
    def prototype_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, K) ``z . c_k / ||c_k||`` with c_k the sum of the normalised supports of class k."""
        s = self.support
        onehot = F.one_hot(s.labels, self.num_classes).to(s.z.dtype)  # (N, K)
        weights = F.normalize(s.z, dim=1).T @ onehot  # (D, K)
        return z @ F.normalize(weights, dim=0)

    @torch.no_grad()
    def loss(self, x: torch.Tensor) -> tuple[None, torch.Tensor]:
        """Add the batch's features to the supports, filter, and classify the batch (no loss)."""
        encoder, head = self._split
        z = encoder(x).float().flatten(1)  # (B, D)
        p = head(z)  # (B, K)
        s = self.support
        s.z = torch.cat([s.z, z])
        s.labels = torch.cat([s.labels, p.argmax(1)])
        s.ent = torch.cat([s.ent, softmax_entropy(p)])
        self.select()
        return None, self.prototype_logits(z)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype logits with the current supports, without adding ``x`` to them."""
        return self.prototype_logits(self._split[0](x).float().flatten(1))
