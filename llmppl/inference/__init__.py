"""Inference over cascades (layer L3): the batched replay engine and its algorithms.

``Importance``, ``SMC`` and ``Rejection`` take a Pyro program whose ``LM`` sites are
sampled and scored in batches across all particles (see :mod:`llmppl.inference.engine`)
and return a :class:`Posterior`.

>>> import pyro
>>> from llmppl.distributions import LM
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet="ab")
>>> def scratchpad(q):
...     work = pyro.sample("work", LM(q, model=lm, max_tokens=3, stop="b"))
...     return pyro.sample("answer", LM(q + work, model=lm, max_tokens=2))
>>> pyro.set_rng_seed(0)
>>> post = Importance(scratchpad, num_samples=32, progress=False).run("a")
>>> abs(sum(post.marginal("answer").probs.values()) - 1) < 1e-9
True
"""

from .engine import Engine, Particle
from .importance import Importance
from .messenger import ReplayError
from .posterior import InferenceError, Marginal, Posterior
from .rejection import Rejection
from .resampling import RESAMPLERS, get_resampler, resample
from .smc import SMC

__all__ = [
    "RESAMPLERS",
    "SMC",
    "Engine",
    "Importance",
    "InferenceError",
    "Marginal",
    "Particle",
    "Posterior",
    "Rejection",
    "ReplayError",
    "get_resampler",
    "resample",
]
