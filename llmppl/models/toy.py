"""A tiny deterministic language model for exact tests: every string can be enumerated.

:class:`ToyLM` is a seeded random-weight recurrent network over a small alphabet with
its own :class:`CharTokenizer` (one token per character, then EOS and BOS). Its state
depends on the whole prefix, so it exercises the same code paths as a real model, and
its vocabulary is small enough that every string up to a length bound can be listed
and scored. Tests of every layer above the models reuse it.

>>> lm = ToyLM(alphabet="ab", seed=0)
>>> lm.tokenizer.vocab_size, lm.tokenizer.eos_id
(4, 2)
>>> lp = lm.score("", ["", "a", "ab"], max_tokens=2)
>>> bool((lp < 0).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LanguageModel

__all__ = ["CharTokenizer", "ToyLM", "ToyState"]


class CharTokenizer:
    """One token per character of ``alphabet``, then ``eos_id`` and ``bos_id``.

    >>> tok = CharTokenizer("ab")
    >>> tok.encode("ba"), tok.decode([1, 0]), tok.eos_id, tok.bos_id
    ([1, 0], 'ba', 2, 3)
    """

    def __init__(self, alphabet: str = "ab"):
        if not isinstance(alphabet, str):
            raise TypeError(f"alphabet: expected a str, got {type(alphabet).__name__}")
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet: expected distinct characters, got {alphabet!r}")
        self.alphabet = alphabet
        self._index = {c: i for i, c in enumerate(alphabet)}
        self.eos_id = len(alphabet)
        self.bos_id = len(alphabet) + 1
        self.vocab_size = len(alphabet) + 2

    def encode(self, text: str) -> list[int]:
        """The token of each character; ``ValueError`` for one outside the alphabet."""
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer.encode: expected a str, got {type(text).__name__}")
        try:
            return [self._index[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"CharTokenizer.encode: {err.args[0]!r} is not in the alphabet {self.alphabet!r}"
            ) from None

    def decode(self, ids) -> str:
        """The characters of ``ids``; ``ValueError`` for EOS, BOS or an unknown id."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.alphabet):
                raise ValueError(f"CharTokenizer.decode: {i} is not a character id of {self.alphabet!r}")
            out.append(self.alphabet[i])
        return "".join(out)

    def __repr__(self) -> str:
        return f"CharTokenizer({self.alphabet!r})"


@dataclass
class ToyState:
    """The hidden vectors of a batch, ``Tensor[N, H]``.

    >>> ToyState(torch.zeros(2, 3)).select(torch.tensor([1, 1, 0])).hidden.shape
    torch.Size([3, 3])
    """

    hidden: torch.Tensor

    def select(self, index: torch.Tensor) -> ToyState:
        """Rows ``index`` (copies)."""
        return ToyState(self.hidden[torch.as_tensor(index, dtype=torch.long)].clone())

    def __len__(self) -> int:
        return self.hidden.shape[0]


class ToyLM(LanguageModel):
    r"""A seeded random-weight RNN language model over ``alphabet``.

    .. math:: h_t = \tanh(W h_{t-1} + E x_t + b), \quad
              p(x_{t+1} \mid x_{\le t}) = \mathrm{softmax}(s \, (U h_t + c))

    Prompts start with BOS, so an empty prompt decodes from BOS. Deterministic for a
    given ``seed``; ``logit_scale`` (``s``) makes the distributions sharper or flatter.

    :param str alphabet: the characters it can generate.
    :param int hidden_size: size of ``h``.
    :param int seed: seeds the weights.
    :param float logit_scale: multiplies the logits.
    :param float eos_bias: added to the EOS logit (negative: longer strings).

    >>> lm = ToyLM("abc", seed=1)
    >>> lm.next_logprobs(lm.prefill([lm.encode_prompt("ab"), lm.encode_prompt("")])).shape
    torch.Size([2, 5])
    """

    continuation_cache_rows = 1024

    def __init__(
        self,
        alphabet: str = "ab",
        *,
        hidden_size: int = 8,
        seed: int = 0,
        logit_scale: float = 0.5,
        eos_bias: float = -1.0,
    ):
        self.tokenizer = CharTokenizer(alphabet)
        vocab = self.tokenizer.vocab_size
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(vocab, hidden_size, generator=g)
        self.recur = torch.randn(hidden_size, hidden_size, generator=g) / hidden_size**0.5
        self.bias = 0.1 * torch.randn(hidden_size, generator=g)
        self.out = 2 * torch.randn(hidden_size, vocab, generator=g) / hidden_size**0.5
        self.out_bias = 0.5 * torch.randn(vocab, generator=g)
        self.out_bias[self.tokenizer.eos_id] += eos_bias  # longer strings: more to enumerate
        self.logit_scale = float(logit_scale)
        self.hidden_size = hidden_size
        self.seed = seed

    def encode_prompt(self, text: str) -> list[int]:
        """BOS, then the characters of ``text``."""
        return [self.tokenizer.bos_id, *self.tokenizer.encode(text)]

    def _step(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(hidden @ self.recur + self.embed[tokens] + self.bias)

    def prefill(self, prompts: list[list[int]]) -> ToyState:
        """Run every prompt (any lengths) in one batched loop."""
        n = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        width = int(lengths.max()) if n else 0
        tokens = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
        hidden = torch.zeros(n, self.hidden_size)
        for t in range(width):
            hidden = torch.where((lengths > t).unsqueeze(1), self._step(hidden, tokens[:, t]), hidden)
        return ToyState(hidden)

    def next_logprobs(self, state: ToyState) -> torch.Tensor:
        """``Tensor[N, vocab]`` log-softmax."""
        return (self.logit_scale * (state.hidden @ self.out + self.out_bias)).log_softmax(-1)

    def advance(self, state: ToyState, tokens: torch.Tensor) -> ToyState:
        """Feed one token per row."""
        return ToyState(self._step(state.hidden, torch.as_tensor(tokens, dtype=torch.long)))

    def __repr__(self) -> str:
        return f"ToyLM(alphabet={self.tokenizer.alphabet!r}, seed={self.seed})"
