"""TTT layers as sequence-modelling primitives (Sun et al., 2024), with attention baselines.

* :mod:`testtime.layers.inner` -- the inner model (linear / MLP) and its reconstruction loss;
* :mod:`testtime.layers.forms` -- the sequential, mini-batch primal and dual forms of the inner loop;
* :mod:`testtime.layers.ttt` -- the ``TTTLinear`` / ``TTTMLP`` modules and their decoding cache;
* :mod:`testtime.layers.attention` -- linear and softmax attention of the same size;
* :mod:`testtime.layers.lm` -- a pre-norm block, a tiny LM and the mixer registry;
* :mod:`testtime.layers.train_lm` -- the small character-level task (``python -m testtime.layers.train_lm``).
"""

from testtime.layers.attention import LinearAttention, SoftmaxAttention
from testtime.layers.forms import FORMS, InnerState, ttt_scan, ttt_sequential
from testtime.layers.lm import MIXERS, Block, LMConfig, TinyLM, list_mixers
from testtime.layers.ttt import TTTMLP, TTTCache, TTTConfig, TTTLayer, TTTLinear

__all__ = [
    "FORMS", "MIXERS", "Block", "InnerState", "LMConfig", "LinearAttention", "SoftmaxAttention", "TTTCache",
    "TTTConfig", "TTTLayer", "TTTLinear", "TTTMLP", "TinyLM", "list_mixers", "ttt_scan", "ttt_sequential",
]
