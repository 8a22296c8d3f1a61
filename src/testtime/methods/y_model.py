"""``y-model``: the multi-task "Y" architecture of the CTA paper's section 5.3.

One shared encoder e with a classifier head h and a projector head pi, trained jointly with
CE + SimCLR (:class:`testtime.train.JointObjective`). At test time the shared encoder (and the
projector, i.e. the self-supervised branch) is updated with Eq. 1 through the projector; the
prediction is ``h(e(x))``. Same code as CTA, a bundle with ``through_projector=False``.

Example::

    method = create_method("y-model", ProjectedClassifier(e, pi, h, through_projector=False))
"""

from __future__ import annotations

from testtime.methods.base import register_method
from testtime.methods.cta import ContrastiveTTT


@register_method("y-model", aliases=("y",))
class YModel(ContrastiveTTT):
    """Y model: TTT of the shared encoder (and projector) through the SimCLR branch; h frozen."""

    through_projector = False
