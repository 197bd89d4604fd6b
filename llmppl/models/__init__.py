"""Language models (layer L1): the :class:`LanguageModel` interface and its backends.

>>> from llmppl.models import ToyLM, LanguageModel
>>> isinstance(ToyLM(), LanguageModel)
True
"""

from .base import Completion, LanguageModel, State
from .hf import HFCausalLM, load_smollm2
from .performer import CheckpointError, PerformerConfig, PerformerLM, PerformerState
from .pretrained import load_pretrained
from .remote import OpenAICompatibleLM, RemoteModelError
from .tokenizer import ByteTokenizer
from .toy import CharTokenizer, ToyLM

__all__ = [
    "ByteTokenizer",
    "CharTokenizer",
    "CheckpointError",
    "Completion",
    "HFCausalLM",
    "LanguageModel",
    "OpenAICompatibleLM",
    "PerformerConfig",
    "PerformerLM",
    "PerformerState",
    "RemoteModelError",
    "State",
    "ToyLM",
    "load_pretrained",
    "load_smollm2",
]
