"""Losses as pure functions, with the CTA paper's equation numbers.

- :func:`nt_xent` (Eq. 1): SimCLR contrastive loss, source SSL training and test-time training.
- :func:`cross_encoder_alignment` (Eq. 4): aligns ``pi(g(.))`` to the frozen supervised ``f(.)``.
- :func:`cross_entropy` (Eq. 3): the supervised loss.
"""

from testtime.losses.alignment import cross_encoder_alignment
from testtime.losses.coral import coral as coral
from testtime.losses.coral import coral_loss as coral_loss
from testtime.losses.coral import covariance as covariance
from testtime.losses.coral import mean_alignment as mean_alignment
from testtime.losses.coral import mean_alignment_loss as mean_alignment_loss
from testtime.losses.cross_entropy import cross_entropy
from testtime.losses.entropy import soft_cross_entropy as soft_cross_entropy
from testtime.losses.entropy import softmax_entropy as softmax_entropy
from testtime.losses.marginal_entropy import marginal_entropy as marginal_entropy
from testtime.losses.nt_xent import nt_xent
from testtime.losses.rotation import rotation_loss as rotation_loss

__all__ = ["cross_encoder_alignment", "cross_entropy", "nt_xent"]
