"""Fixtures for the cascade tests: a ToyLM over printable text and a scripted test model."""

import math
import string

import pyro
import pytest
import torch

from llmppl.models import LanguageModel, ToyLM
from llmppl.models.toy import CharTokenizer

ALPHABET = string.printable


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    pyro.set_rng_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared, loaded machine
    yield
    torch.set_num_threads(before)


@pytest.fixture
def lm():
    """A random-weight model that can write any printable text (competence irrelevant)."""
    return ToyLM(alphabet=ALPHABET, seed=0)


class _Rows:
    def __init__(self, rows):
        self.rows = [list(r) for r in rows]

    def select(self, index):
        return _Rows([self.rows[int(i)] for i in torch.as_tensor(index).reshape(-1)])


class ScriptedLM(LanguageModel):
    """Writes ``script[key]`` (then EOS) with probability ``p`` per token after text ending in ``key``.

    Where no key applies every token is equally likely. A test double with known,
    checkable behaviour: e.g. a verifier that says ``yes``, an answerer that knows the
    knowledge base.
    """

    def __init__(self, script: dict, *, p: float = 0.95):
        self.tokenizer = CharTokenizer(ALPHABET)
        self.script = dict(script)
        self.p = p

    def encode_prompt(self, text):
        return [self.tokenizer.bos_id, *self.tokenizer.encode(text)]

    def prefill(self, prompts):
        return _Rows(prompts)

    def advance(self, state, tokens):
        return _Rows([[*r, int(t)] for r, t in zip(state.rows, tokens.tolist(), strict=True)])

    def _next(self, text):
        best, best_len = None, -1
        for key, value in self.script.items():
            for i in range(len(value) + 1):
                if text.endswith(key + value[:i]) and len(key) + i > best_len:
                    nxt = value[i] if i < len(value) else None
                    best, best_len = ("eos", None) if nxt is None else ("char", nxt), len(key) + i
        return best

    def next_logprobs(self, state):
        vocab = self.tokenizer.vocab_size
        out = torch.full((len(state.rows), vocab), -math.log(vocab - 1))
        out[:, self.tokenizer.bos_id] = -math.inf
        for j, row in enumerate(state.rows):
            text = self.tokenizer.decode([t for t in row if t < len(ALPHABET)])
            move = self._next(text)
            if move is not None:
                target = self.tokenizer.eos_id if move[0] == "eos" else self.tokenizer.encode(move[1])[0]
                out[j] = math.log((1 - self.p) / (vocab - 2))
                out[j, self.tokenizer.bos_id] = -math.inf
                out[j, target] = math.log(self.p)
        return out


@pytest.fixture
def scripted():
    return ScriptedLM
