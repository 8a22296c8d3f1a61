"""``cta-c``: the CTA-C ablation (Barbeau et al., CTA paper, section 5.5 and Table 2).

A self-supervised model ``pi(g(.))`` trained with Eq. 1 only (no alignment), frozen, and a linear
classifier trained on its features ``pi(g(x))`` (a linear probe). At test time the SSL model is
adapted with Eq. 1 exactly as in CTA; the probe is frozen. Same code as :mod:`testtime.methods.cta`,
a different bundle: ``ProjectedClassifier(g, pi, probe)``.

Example::

    method = create_method("cta-c", ProjectedClassifier(g_ssl, pi_ssl, probe), steps=20)
"""

from __future__ import annotations

from testtime.methods.base import register_method
from testtime.methods.cta import ContrastiveTTT


@register_method("cta-c")
class CTAC(ContrastiveTTT):
    """CTA-C: a linear probe on a (non-aligned) SimCLR model; TTT on g and pi with Eq. 1."""
