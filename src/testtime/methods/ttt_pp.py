"""``ttt++``: TTT++ (Liu, Kothari, van Delft, Bellot-Gurlet, Mordan, Alahi, NeurIPS 2021).

"TTT++: When Does Self-Supervised Test-Time Training Fail or Thrive?". At source time the encoder
is trained jointly with a classifier and a SimCLR projector; afterwards the mean and covariance of
the source features (encoder output and projector output) are summarised offline. At test time
the encoder is updated with SGD on the SimCLR loss (tau 0.5) of two augmented views of the test
batch plus feature alignment of the (un-augmented) test batch to the stored source statistics:
CORAL on the covariances and a squared distance on the means (Eq. 5-6 of the paper), for both
feature spaces, each term divided by its typical value between source batches. Classifier and
projector stay frozen.

Settings of the official code (vita-epfl/ttt-plus-plus, ``cifar/ttt++.py``,
``cifar/scripts/run_ttt++_cifar10.sh``): SGD lr 0.01, momentum 0.9, ``--fix_ssh`` (only the
encoder is updated, in train mode; projector and classifier in eval mode), SupCon loss with
temperature 0.5 and base temperature 0.07 (so the SimCLR term is scaled by 0.5 / 0.07),
``scale_ext`` 0.05, ``scale_ssh`` 0.2, the mean term further scaled by 0.5 (``MMD_SCALE_FACTOR``),
a queue of past test features (1,536 including the current batch of 256, here ``queue_size`` past
features) for the statistics.

What matches the official loop (``cifar/ttt++.py``, ``--method both``), and how closely:

- BN: each step runs the encoder in train mode three times, as the official loop does (the SSL
  pass on the two views, the encoder-feature alignment pass ``ext(x)`` and the projector-feature
  alignment pass ``head(ext(x))``), so BN running statistics move three times per step (momentum
  0.1) and the eval-mode predictions follow them as the official ones do. The gradient is the same
  as from one alignment pass (train-mode BN normalises with the batch's own statistics).
- Queue: used only once full, as the official ``FeatureQueue.get`` (``None`` until its last row is
  filled). The official ``get`` returns the buffer itself and ``update`` then writes the current
  batch into it before the concatenation, so the current batch counts twice and the oldest past
  batch is dropped: a bug. Here the statistics use the current batch once plus ``queue_size`` past
  features; ``queue_holds_current=True`` reproduces the official variant.
- Source statistics (:func:`compute_source_statistics`): as the official ``offline``: the first
  batch gives the reference discrepancies, the other batches the mean and covariance.
- Not reproduced: the official code adapts offline over many epochs of the whole test set, and its
  first ``--bnepoch`` (2) epochs only move BN statistics (SSL forward passes, no step). Here the
  method adapts per batch under the chosen protocol (``steps`` updates per batch): batches arrive
  once, so epochs over the test set before any update cannot be reproduced without changing the
  evaluation protocol itself. ``predict_bn="batch"`` is the nearest end state.

The source statistics live in the model (``AuxHeadModel.stats_encoder`` / ``stats_aux`` buffers,
see :func:`compute_source_statistics`), the queue in declared state of the method, so ``reset()``
empties it.

Example::

    model = ...  # AuxHeadModel(task="simclr") trained jointly, then compute_source_statistics(model, source_images)
    method = create_method("ttt++", model)
    logits = method(x)  # x: (B, C, H, W), B >= 2
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from testtime.losses.coral import coral, coral_loss, covariance, mean_alignment, mean_alignment_loss
from testtime.losses.nt_xent import nt_xent
from testtime.methods.base import Method, MethodConfig, Requirements, register_method
from testtime.methods.ttt import check_aux_model
from testtime.models.heads import AuxHeadModel, FeatureStats
from testtime.transforms.views import SimCLRViewsConfig, simclr_views


@dataclass(frozen=True)
class TTTPPConfig(MethodConfig):
    """TTT++'s test-time settings (official CIFAR-10 script's values)."""

    steps: int = 1
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    tau: float = 0.5  # SimCLR temperature
    ssl_weight: float = 0.5 / 0.07  # SupConLoss's temperature / base_temperature factor in the official code
    scale_ext: float = 0.05  # weight of the encoder-feature alignment (SCALE_EXT)
    scale_aux: float = 0.2  # weight of the projector-feature alignment (SCALE_SSH)
    mean_factor: float = 0.5  # extra factor of the mean term (MMD_SCALE_FACTOR)
    queue_size: int = 1280  # past test features used with the batch for the statistics (QS 1536 - batch 256)
    # True: the official FeatureQueue's variant (the current batch is written into the queue before
    # it is read, so it counts twice and the oldest batch is dropped); False: the batch once + past features
    queue_holds_current: bool = False
    views: SimCLRViewsConfig = field(default_factory=SimCLRViewsConfig)
    # BN statistics used to predict: "running" (official: eval mode, running statistics that the
    # train-mode adaptation passes moved with momentum 0.1) or "batch" (the test batch's own
    # statistics, as PTBN; closer to the official end state after its BN-only warm-up epochs)
    predict_bn: str = "running"

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        for name in ("ssl_weight", "scale_ext", "scale_aux", "mean_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        if self.predict_bn not in ("running", "batch"):
            raise ValueError(f"predict_bn must be 'running' or 'batch', got {self.predict_bn!r}")


def alignment_terms(feats: torch.Tensor, stats: FeatureStats) -> tuple[torch.Tensor, torch.Tensor]:
    """(CORAL / coral_ref, mean alignment / mean_ref) of features (N, D) against source ``stats``."""
    c = coral_loss(feats, stats.cov) / stats.coral_ref.clamp_min(1e-12)
    m = mean_alignment_loss(feats, stats.mean) / stats.mean_ref.clamp_min(1e-12)
    return c, m


@register_method("ttt++", aliases=("tttpp",))
class TTTPlusPlus(Method):
    """TTT++ (Liu et al., NeurIPS 2021): SimCLR + CORAL + mean alignment to source feature statistics."""

    paper = 'Liu et al., "TTT++: When Does Self-Supervised Test-Time Training Fail or Thrive?", NeurIPS 2021'

    Config = TTTPPConfig
    requirements = Requirements(
        adapts="encoder (SimCLR + feature alignment)", needs_source_data=True, needs_aux_head=True,
        min_batch_size=2, views="simclr",
    )
    default_order = "after"
    config: TTTPPConfig

    def __init__(self, model: nn.Module, config: TTTPPConfig | None = None) -> None:
        config = config if config is not None else TTTPPConfig()
        if isinstance(model, AuxHeadModel) and model.task == "simclr":
            d = model.stats_encoder.mean.shape[0]
            p = model.stats_aux.mean.shape[0]
        else:
            d = p = 1  # check_model (in super().__init__) raises before any work
        q = int(getattr(config, "queue_size", 0))
        super().__init__(model, config)
        self.register_state("queue_encoder", torch.zeros(q, d))
        self.register_state("queue_aux", torch.zeros(q, p))
        self.register_state("queue_len", torch.zeros((), dtype=torch.int64))
        self.register_state("queue_ptr", torch.zeros((), dtype=torch.int64))
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.snapshot()

    @classmethod
    def example_model(cls, num_classes: int = 4, in_chans: int = 3) -> nn.Module:
        """A tiny ResNet-8 with a SimCLR projector and statistics of 64 seeded random images."""
        from testtime.models import create_model
        from testtime.models.heads import with_aux_head

        model = with_aux_head(create_model("resnet8", num_classes=num_classes, in_chans=in_chans), "simclr",
                              proj_dim=16, in_chans=in_chans)
        g = torch.Generator().manual_seed(0)
        images = (torch.rand(64, 32, 32, in_chans, generator=g) * 255).to(torch.uint8).numpy()
        # BN running statistics of these images (cumulative average), so that eval-mode features
        # are normalised as after training and their statistics are not degenerate
        bns = [mod for mod in model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            model.encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        for bn in bns:
            bn.momentum = 0.1
        compute_source_statistics(model, images, batch_size=16)
        return model.eval()

    def check_model(self, model: nn.Module) -> None:
        m = check_aux_model(self.name, model, "simclr", "a SimCLR projector")
        if not m.has_source_stats:
            raise ValueError(
                f"method {self.name!r} needs source feature statistics in the model: run "
                "testtime.methods.ttt_pp.compute_source_statistics(model, source_images) after source training "
                "(`testtime train ttt++` does it)"
            )
        super().check_model(model)

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        self.model.encoder.requires_grad_(True)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) in eval mode; with ``predict_bn="batch"`` BN normalises with the batch's statistics."""
        if self.config.predict_bn == "running":
            return self.model(x)
        bns = [mod for mod in self.model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
        saved = [(bn.training, bn.momentum) for bn in bns]
        for bn in bns:
            bn.train()
            bn.momentum = 0.0  # batch statistics, running statistics left unchanged
        try:
            return self.model(x)
        finally:
            for bn, (mode, mom) in zip(bns, saved):
                bn.train(mode)
                bn.momentum = mom

    def _ring(self, n: int) -> torch.Tensor:
        """The queue rows (n,) that the next ``n`` features are written to (oldest first)."""
        q = self.queue_encoder.shape[0]
        return (int(self.queue_ptr) + torch.arange(n)) % q

    def _with_queue(self, feats: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """``feats`` (B, D) and, once the queue is full (as the official code), its q rows -> (B + q, D)."""
        q = queue.shape[0]
        if q == 0 or int(self.queue_len) < q:
            return feats
        past = queue.to(feats.dtype)
        if self.config.queue_holds_current:  # the official get-then-update order
            cur = feats.detach()[-q:]
            past = past.clone()
            past[self._ring(cur.shape[0]).to(past.device)] = cur
        return torch.cat([feats, past])

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SSL (NT-Xent on two views) + scaled CORAL and mean alignment of both feature spaces."""
        c = self.config
        m: AuxHeadModel = self.model
        logits = self.predict(x)  # (B, K), eval mode, before this update
        b = x.shape[0]
        v1, v2 = simclr_views(x, self.generator, c.views)
        m.encoder.train()  # official: ext.train(); head and classifier in eval mode (--fix_ssh)
        try:  # three train-mode encoder passes, as the official loop (BN statistics move three times)
            z = m.aux(m.encoder(torch.cat([v1, v2])))  # (2B, P) the SSL pass
            ssl = nt_xent(z[:b], z[b:], c.tau)
            f = m.encoder(x)  # (B, D) the un-augmented test batch: encoder-feature alignment pass
            a = m.aux(m.encoder(x))  # (B, P) projector-feature alignment pass
        finally:
            m.eval()
        self._last = (f.detach(), a.detach())
        ce, me = alignment_terms(self._with_queue(f, self.queue_encoder), m.stats_encoder)
        ca, ma = alignment_terms(self._with_queue(a, self.queue_aux), m.stats_aux)
        align = c.scale_ext * (ce + c.mean_factor * me) + c.scale_aux * (ca + c.mean_factor * ma)
        return c.ssl_weight * ssl + align, logits

    @torch.no_grad()
    def _enqueue(self, f: torch.Tensor, a: torch.Tensor) -> None:
        q = self.queue_encoder.shape[0]
        if q == 0:
            return
        f, a = f[-q:], a[-q:]  # a batch larger than the queue keeps its last q rows
        n = f.shape[0]
        idx = self._ring(n)  # (n,) ring positions
        self.queue_encoder[idx.to(self.queue_encoder.device)] = f.to(self.queue_encoder.dtype)
        self.queue_aux[idx.to(self.queue_aux.device)] = a.to(self.queue_aux.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % q)
        self.queue_len.fill_(min(q, int(self.queue_len) + n))

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """``steps`` updates on ``x``; the batch's features enter the queue once, after the last step."""
        self._last = None
        first = super().adapt(x)
        if self._last is not None:
            self._enqueue(*self._last)
        self._last = None
        return first


@torch.no_grad()
def compute_source_statistics(
    model: AuxHeadModel,
    images: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """TTT++'s offline summary: mean and covariance of the source features, stored in ``model``.

    As the official ``offline`` (vita-epfl/ttt-plus-plus ``cifar/offline.py``): features of the
    encoder (D) and of the projector (P) are computed in eval mode on ``images`` (uint8 (N, H, W, C)
    or float (N, C, H, W) in [0, 1], N >= 2 * batch_size), in batches of ``batch_size`` in the
    given order. The first batch is the reference: ``coral_ref`` / ``mean_ref`` are the average
    CORAL / mean-alignment distance between its statistics and those of each later batch (batches
    of at least 2 images); the stored mean and covariance are those of all images but the first
    batch. The official run uses batches of 1,536, the number of features its test-time statistics
    use (queue + batch); the reference values depend on that size. The model's dtype is used
    (float64 models work). Returns the reference values and the number of images summarised.
    """
    if not isinstance(model, AuxHeadModel) or model.task != "simclr":
        raise ValueError("compute_source_statistics: model must be an AuxHeadModel with task='simclr'")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (a covariance needs two samples), got {batch_size}")
    x_all = torch.as_tensor(images)
    if x_all.dtype == torch.uint8:
        if x_all.ndim != 4:
            raise ValueError(f"images: expected uint8 (N, H, W, C), got shape {tuple(x_all.shape)}")
        x_all = x_all.permute(0, 3, 1, 2)  # (N, C, H, W)
    n = x_all.shape[0]
    if n < 2 * batch_size:
        raise ValueError(f"images: {n} source images; need at least 2 * batch_size = {2 * batch_size}")
    was = model.training
    model.eval()
    model.to(device)
    dtype = next(model.parameters()).dtype
    feats, auxs = [], []
    for s in range(0, n, batch_size):
        xb = x_all[s : s + batch_size].to(device)
        xb = xb.to(dtype).div(255.0) if xb.dtype == torch.uint8 else xb.to(dtype)
        f = model.encoder(xb)  # (b, D)
        feats.append(f.double().cpu())
        auxs.append(model.aux(f).double().cpu())
    out: dict[str, float] = {"n": float(n - batch_size)}
    for key, stats, batches in (("encoder", model.stats_encoder, feats), ("aux", model.stats_aux, auxs)):
        first, rest = batches[0], torch.cat(batches[1:])  # (batch_size, D), (N - batch_size, D)
        cov_ref, mean_ref = covariance(first), first.mean(0)
        later = [fb for fb in batches[1:] if fb.shape[0] >= 2]
        corals = [float(coral(cov_ref, covariance(fb))) for fb in later]
        means = [float(mean_alignment(mean_ref, fb.mean(0))) for fb in later]
        stats.mean.copy_(rest.mean(0).to(stats.mean))
        stats.cov.copy_(covariance(rest).to(stats.cov))
        stats.coral_ref.fill_(max(float(np.mean(corals)), 1e-12))
        stats.mean_ref.fill_(max(float(np.mean(means)), 1e-12))
        stats.count.fill_(rest.shape[0])
        out[f"{key}_coral_ref"] = float(stats.coral_ref)
        out[f"{key}_mean_ref"] = float(stats.mean_ref)
    model.train(was)
    return out
