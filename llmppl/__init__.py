"""llmppl: language-model calls as Pyro distributions over strings.

>>> import pyro, llmppl
>>> lm = llmppl.models.ToyLM(alphabet="ab")
>>> with llmppl.use_model(lm):
...     isinstance(pyro.sample("s", llmppl.LM("a", max_tokens=2)), str)
True
"""

__version__ = "0.1.0"

import sys

from . import distributions, inference, models, ops
from . import inference as infer  # llmppl.infer.Importance(...), as in DESIGN.md
from .distributions import LM, Categorical, Delta, NextToken, get_default_model, set_default_model, use_model
from .inference import SMC, Importance, InferenceError, Marginal, Posterior, Rejection
from .models import (
    ByteTokenizer,
    HFCausalLM,
    LanguageModel,
    OpenAICompatibleLM,
    PerformerLM,
    RemoteModelError,
    load_pretrained,
    load_smollm2,
)
from .render import model_graph, model_relations, render_model

sys.modules[f"{__name__}.infer"] = infer  # and `from llmppl.infer import SMC`, as from pyro.infer

__all__ = [
    "LM",
    "SMC",
    "ByteTokenizer",
    "Categorical",
    "Delta",
    "HFCausalLM",
    "Importance",
    "InferenceError",
    "LanguageModel",
    "Marginal",
    "NextToken",
    "OpenAICompatibleLM",
    "PerformerLM",
    "Posterior",
    "Rejection",
    "RemoteModelError",
    "__version__",
    "distributions",
    "get_default_model",
    "infer",
    "inference",
    "load_pretrained",
    "load_smollm2",
    "model_graph",
    "model_relations",
    "models",
    "ops",
    "render_model",
    "set_default_model",
    "use_model",
]
