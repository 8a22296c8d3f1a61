"""Projector heads and the encoder / projector / classifier bundle used by CTA, CTA-C and the Y model.

- :func:`projector`: the CTA paper's ``pi``, ONE linear layer that keeps the feature dimension
  (section 3.1), optionally initialised to the identity so that ``h(pi(g(x))) = h(f(x))`` when ``g``
  starts as a copy of ``f``.
- :class:`ProjectedClassifier`: ``encoder`` (g), ``projector`` (pi), ``head`` (h). Its prediction is
  ``h(pi(g(x)))`` for CTA / CTA-C (``through_projector=True``) or ``h(g(x))`` for the Y model
  (shared encoder, classifier and projector side by side); its self-supervised embedding is always
  ``pi(g(x))``.

Example::

    >>> import torch
    >>> from testtime.models import create_model
    >>> from testtime.models.heads import ProjectedClassifier, projector
    >>> m = create_model("resnet8", num_classes=10)
    >>> cta = ProjectedClassifier(m.encoder, projector(m.feature_dim, identity=True), m.fc)
    >>> cta(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn


def projector(dim: int, *, identity: bool = False, out_dim: int | None = None) -> nn.Linear:
    """``pi``: a linear layer (dim -> out_dim, default dim); ``identity=True`` sets W = I, b = 0."""
    out_dim = dim if out_dim is None else out_dim
    if dim < 1 or out_dim < 1:
        raise ValueError(f"projector dimensions must be >= 1, got {dim} -> {out_dim}")
    lin = nn.Linear(dim, out_dim)
    if identity:
        if out_dim != dim:
            raise ValueError(f"an identity projector needs out_dim == dim, got {dim} -> {out_dim}")
        with torch.no_grad():
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
    return lin


def feature_dim(encoder: nn.Module, in_chans: int = 3, size: int = 32) -> int:
    """The encoder's output size: ``encoder.out_dim`` when declared, else one probe forward (eval mode)."""
    d = getattr(encoder, "out_dim", None)
    if isinstance(d, int):
        return d
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        d = int(encoder(torch.zeros(2, in_chans, size, size)).flatten(1).shape[1])
    encoder.train(was)
    return d


class ProjectedClassifier(nn.Module):
    """g, pi, h in one module: ``forward(x)`` = ``h(pi(g(x)))`` (or ``h(g(x))``), logits (B, K).

    Args:
        encoder: g, images in [0, 1] (B, C, H, W) -> (B, D).
        projector: pi, (B, D) -> (B, D') ; D' must be h's input size when ``through_projector``.
        head: h, the classifier.
        through_projector: ``True`` for CTA / CTA-C, ``False`` for the Y model.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, head: nn.Module, *, through_projector: bool = True):
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.head = head
        self.through_projector = through_projector
        in_head = getattr(head, "in_features", None)
        out_pi = getattr(projector, "out_features", None)
        if through_projector and in_head is not None and out_pi is not None and in_head != out_pi:
            raise ValueError(
                f"the projector outputs {out_pi} features but the classifier expects {in_head}: "
                "pi must keep the supervised encoder's feature size (CTA section 3.1)"
            )

    def ssl_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``pi(g(x))``: (B, C, H, W) -> (B, D')."""
        return self.projector(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: ``pi(g(x))`` or ``g(x)``, (B, D)."""
        z = self.encoder(x)
        return self.projector(z) if self.through_projector else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----- auxiliary heads of the test-time-training baselines (TTT, TTT++) --------------------------
#
# Design choice: the auxiliary head sits on the encoder's pooled features (B, D), i.e. the whole
# encoder is shared by the classifier and the self-supervised task. This is the ``--shared layer3``
# variant of the original TTT code (yueatsprograms/ttt_cifar_release) and exactly TTT++'s layout
# (vita-epfl/ttt-plus-plus: projector on the encoder output). The original TTT's main results
# branch after layer 2 and copy layer 3 into the head; that needs surgery specific to one ResNet,
# whereas the pooled-feature branch works with any encoder ``split_classifier`` can find (timm,
# torchvision, testtime's ResNets) and adapts the same encoder the classifier uses.

AUX_TASKS = ("rotation", "simclr")


def rotation_head(dim: int) -> nn.Linear:
    """TTT's rotation classifier: one linear layer D -> 4 (rotations 0/90/180/270; the ``layer3`` head)."""
    if dim < 1:
        raise ValueError(f"rotation_head: feature dimension must be >= 1, got {dim}")
    return nn.Linear(dim, 4)


def simclr_projector(dim: int, *, hidden: int | None = None, out_dim: int = 128) -> nn.Sequential:
    """TTT++'s SimCLR projector: Linear(D, hidden) - ReLU - Linear(hidden, out_dim).

    ``hidden`` defaults to D and ``out_dim`` to 128, as ``SupConResNet(head='mlp', feat_dim=128)`` of
    vita-epfl/ttt-plus-plus.
    """
    hidden = dim if hidden is None else hidden
    if min(dim, hidden, out_dim) < 1:
        raise ValueError(f"simclr_projector: dimensions must be >= 1, got {dim} -> {hidden} -> {out_dim}")
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class FeatureStats(nn.Module):
    """Source statistics of one feature space, as buffers (saved with the model): TTT++'s offline summary.

    Buffers: ``mean`` (D,), ``cov`` (D, D), ``coral_ref`` and ``mean_ref`` (scalars: the average CORAL
    and mean-alignment discrepancy between the first source batch and each later one, as TTT++'s
    ``offline``; TTT++ divides the test-time terms by them), ``count`` (number of source samples; 0 = not computed).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("cov", torch.zeros(dim, dim))
        self.register_buffer("coral_ref", torch.ones(()))
        self.register_buffer("mean_ref", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    @property
    def computed(self) -> bool:
        return int(self.count) > 0


class AuxHeadModel(nn.Module):
    """A classifier with an auxiliary self-supervised head on its encoder's features (TTT, TTT++).

    ``forward(x)`` = ``fc(encoder(x))``: logits (B, K), so the bundle is a drop-in classifier;
    ``aux_forward(x)`` = ``aux(encoder(x))``: rotation logits (B, 4) or SimCLR projections (B, P).
    For ``task="simclr"`` the model carries TTT++'s source statistics of the encoder features
    (``stats_encoder``, D) and of the projections (``stats_aux``, P) as :class:`FeatureStats`.

    Args:
        encoder: images in [0, 1] (B, C, H, W) -> features (B, D).
        fc: the classifier, (B, D) -> (B, K).
        aux: the auxiliary head, (B, D) -> (B, A).
        task: ``"rotation"`` (TTT) or ``"simclr"`` (TTT++).

    Example::

        >>> import torch
        >>> from testtime.models import create_model
        >>> m = with_aux_head(create_model("resnet8", num_classes=10), "rotation")
        >>> m(torch.rand(2, 3, 32, 32)).shape, m.aux_forward(torch.rand(2, 3, 32, 32)).shape
        (torch.Size([2, 10]), torch.Size([2, 4]))
    """

    def __init__(self, encoder: nn.Module, fc: nn.Module, aux: nn.Module, *, task: str) -> None:
        super().__init__()
        if task not in AUX_TASKS:
            raise ValueError(f"task must be one of {AUX_TASKS}, got {task!r}")
        self.encoder = encoder
        self.fc = fc
        self.aux = aux
        self.task = task
        if task == "simclr":
            d = feature_dim(encoder)
            p = _out_features(aux)
            self.stats_encoder = FeatureStats(d)
            self.stats_aux = FeatureStats(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))

    def aux_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(self.encoder(x))

    @property
    def has_source_stats(self) -> bool:
        return self.task == "simclr" and self.stats_encoder.computed and self.stats_aux.computed


def _out_features(aux: nn.Module) -> int:
    last = [m for m in aux.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("the auxiliary head must end with an nn.Linear layer")
    return int(last[-1].out_features)


def with_aux_head(
    model: nn.Module,
    task: str,
    *,
    proj_dim: int = 128,
    head_attr: str | None = None,
    in_chans: int = 3,
) -> AuxHeadModel:
    """Wrap a classifier into an :class:`AuxHeadModel` with a fresh auxiliary head (shares its modules).

    ``task="rotation"`` adds :func:`rotation_head`; ``task="simclr"`` adds :func:`simclr_projector`
    with ``proj_dim`` outputs and empty source statistics. The encoder / classifier split follows
    :func:`testtime.models.split_classifier` (``head_attr`` as there).
    """
    from testtime.models.split import split_classifier

    if task not in AUX_TASKS:
        raise ValueError(f"task must be one of {AUX_TASKS}, got {task!r}")
    encoder, fc = split_classifier(model, head_attr=head_attr)
    d = feature_dim(encoder, in_chans=in_chans)
    aux = rotation_head(d) if task == "rotation" else simclr_projector(d, out_dim=proj_dim)
    return AuxHeadModel(encoder, fc, aux, task=task)
