"""String distributions (layer L2): ``LM``, ``NextToken``, string ``Delta`` and ``Categorical``.

>>> import pyro
>>> from llmppl.distributions import LM, use_model
>>> from llmppl.models import ToyLM
>>> pyro.set_rng_seed(0)
>>> with use_model(ToyLM(alphabet="ab")):
...     isinstance(pyro.sample("s", LM("ab", max_tokens=3)), str)
True
"""

from .default_model import NoDefaultModelError, get_default_model, set_default_model, use_model
from .lm import LM, NextToken
from .strings import Categorical, Delta, IIDStrings, StringDistribution, string

__all__ = [
    "LM",
    "Categorical",
    "Delta",
    "IIDStrings",
    "NextToken",
    "NoDefaultModelError",
    "StringDistribution",
    "get_default_model",
    "set_default_model",
    "string",
    "use_model",
]
