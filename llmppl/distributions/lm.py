r"""``LM``: a language-model call as a Pyro distribution over strings; ``NextToken``: one token.

.. math::
    \log p(v \mid \text{prompt})
    = \log \sum_{\text{token paths } t \to v} \prod_i q_{T,k}(t_i \mid \text{prompt}, t_{<i})

where :math:`q_{T,k}` is the model's next-token distribution at temperature :math:`T`
cut to the top :math:`k` tokens, and the paths are those that end with EOS, after
``max_tokens`` tokens, or at the first occurrence of a stop string (see
:mod:`llmppl.models.base`).

>>> import pyro
>>> from llmppl.models import ToyLM
>>> lm = ToyLM(alphabet="ab")
>>> pyro.set_rng_seed(0)
>>> value = pyro.sample("x", LM("a", model=lm, max_tokens=4, stop="bb"))
>>> bool(LM("a", model=lm, max_tokens=4, stop="bb").log_prob(value) > float("-inf"))
True
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from llmppl.models.base import LanguageModel, State, check_decoding_args, normalize_stop

from .default_model import check_model, get_default_model
from .strings import StringDistribution, _as_str, _short

__all__ = ["LM", "NextToken"]

_NEG_INF = float("-inf")
_MEMO_SIZE = 4096


def _memo(model) -> OrderedDict:
    """Per-model LRU of exact log-probs, keyed by (prompt, settings, value); cleared with the
    prefix cache, and when the weights change."""
    drop_stale = getattr(model, "_drop_stale_caches", None)
    if drop_stale is not None:
        drop_stale()
    memo = model.__dict__.get("_llmppl_score_memo")
    if memo is None:
        memo = model.__dict__["_llmppl_score_memo"] = OrderedDict()
    return memo


def _memo_put(memo: OrderedDict, key, value: float) -> None:
    memo[key] = value
    memo.move_to_end(key)
    while len(memo) > _MEMO_SIZE:
        memo.popitem(last=False)


class LM(StringDistribution):
    """The string a language model generates from ``prompt``.

    ``sample()`` returns a ``str``; ``log_prob(value)`` the **exact** log-probability that
    sampling returns ``value`` under the same stop strings, length limit, temperature and
    top-k (``-inf`` when impossible, e.g. a value containing a stop string). With a
    byte- or character-level tokenizer this is exact; with a BPE model (``HFCausalLM``)
    the value's canonical tokenization is scored.

    :param str prompt: the text the model continues.
    :param model: a :class:`~llmppl.models.base.LanguageModel`; default: the one from
        ``llmppl.use_model``/``llmppl.set_default_model`` (looked up now, or at first use).
    :param int max_tokens: the most tokens generated (EOS counts as one).
    :param stop: ``None``, a non-empty string or a list of them; the value is the text
        before the first occurrence.
    :param float temperature: divides the logits (> 0).
    :param top_k: ``None`` or keep only the ``k`` most likely tokens per step.
    :param potential: a function of the partial string returning a log-weight, used by
        the inference engine's token-level steering; ``log_prob`` ignores it, and plain
        ``sample()`` refuses it (only an inference engine can honour it).

    >>> from llmppl.models import ToyLM
    >>> d = LM("ab" * 40, model=ToyLM(), stop=["aa", "b"], max_tokens=3)
    >>> d
    LM('abababababababababab…bababababababababab', max_tokens=3, stop=('aa', 'b'))
    >>> d.log_prob("b")
    tensor(-inf)
    """

    def __init__(
        self,
        prompt: str,
        *,
        model: LanguageModel | None = None,
        max_tokens: int = 64,
        stop=None,
        temperature: float = 1.0,
        top_k: int | None = None,
        potential=None,
        validate_args=None,
    ):
        self.prompt = _as_str(prompt, "LM: prompt")
        self._model = check_model(model, "LM") if model is not None else get_default_model(required=False)
        check_decoding_args(max_tokens, temperature, top_k, where="LM")
        self.stop = normalize_stop(stop, where="LM: stop")
        self.max_tokens = max_tokens
        self.temperature = float(temperature)
        self.top_k = top_k
        if potential is not None and not callable(potential):
            raise TypeError(f"LM: potential: expected None or a callable, got {type(potential).__name__}")
        self.potential = potential
        super().__init__(validate_args=validate_args)

    @property
    def model(self) -> LanguageModel:
        """The model, resolved from the defaults if none was given."""
        if self._model is None:
            self._model = get_default_model()
        return self._model

    def decoding_kwargs(self) -> dict:
        """``max_tokens``, ``stop``, ``temperature``, ``top_k`` as keywords of ``LanguageModel.sample``/``score``.

        >>> from llmppl.models import ToyLM
        >>> LM("q", model=ToyLM(), stop="\\n").decoding_kwargs()["stop"]
        ('\\n',)
        """
        return {
            "max_tokens": self.max_tokens,
            "stop": self.stop or None,
            "temperature": self.temperature,
            "top_k": self.top_k,
        }

    def _key(self, value: str):
        return (self.prompt, self.max_tokens, self.stop, self.temperature, self.top_k, value)

    def sample(self, sample_shape=()):
        """One string (or a list of ``n`` for ``sample_shape=(n,)``, drawn in one batch)."""
        shape = self._check_sample_shape(sample_shape)
        out = self.sample_batch(shape[0] if shape else 1)
        return out if shape else out[0]

    def sample_batch(self, n: int) -> list[str]:
        """``n`` independent draws in one batched generation (one prefill of the prompt)."""
        if self.potential is not None:
            raise NotImplementedError(
                f"{self._describe()}: a potential needs token-level steering by an inference engine "
                "(llmppl.infer.SMC/Importance); plain sampling cannot honour it"
            )
        if n == 0:
            return []
        model = self.model
        completions = model.sample([self.prompt] * n, **self.decoding_kwargs())
        memo = _memo(model)
        for c in completions:
            _memo_put(memo, self._key(c.text), c.log_prob)
        return [c.text for c in completions]

    def log_prob(self, value) -> torch.Tensor:
        """0-dim tensor: the exact log-probability that ``sample()`` returns ``value``."""
        self._validate_sample(value)
        return self.log_prob_batch([value])[0]

    def log_prob_batch(self, values: Sequence[str]) -> torch.Tensor:
        """``Tensor[len(values)]``: every value scored in one batched pass (the prompt prefilled once).

        >>> from llmppl.models import ToyLM
        >>> LM("", model=ToyLM(), max_tokens=2).log_prob_batch(["a", "abc"])[1]
        tensor(-inf)
        """
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(
                f"{self._describe()}.log_prob_batch: values: expected a list of str, got {type(values).__name__}"
            )
        for v in values:
            self._validate_sample(v)
        model = self.model
        memo = _memo(model)
        out = [memo.get(self._key(v)) for v in values]
        missing = list(dict.fromkeys(v for v, lp in zip(values, out, strict=True) if lp is None))
        if missing:
            scores = model.score([self.prompt] * len(missing), missing, **self.decoding_kwargs()).tolist()
            got = dict(zip(missing, scores, strict=True))
            for v, lp in got.items():
                _memo_put(memo, self._key(v), lp)
            out = [got[v] if lp is None else lp for v, lp in zip(values, out, strict=True)]
        return torch.tensor(out, dtype=torch.get_default_dtype())

    def _describe(self) -> str:
        parts = [_short(self.prompt)]
        if self.max_tokens != 64:
            parts.append(f"max_tokens={self.max_tokens}")
        if self.stop:
            parts.append(f"stop={self.stop[0]!r}" if len(self.stop) == 1 else f"stop={self.stop!r}")
        if self.temperature != 1.0:
            parts.append(f"temperature={self.temperature:g}")
        if self.top_k is not None:
            parts.append(f"top_k={self.top_k}")
        if self.potential is not None:
            parts.append("potential=…")
        return f"LM({', '.join(parts)})"


class NextToken(StringDistribution):
    """The next token after a prompt (or a one-row model ``State``), as a string.

    The distribution is the model's next-token distribution without special tokens;
    EOS is the value ``""``. Values that several tokens decode to add up.

    :param prompt_or_state: a prompt ``str`` or a one-row ``State`` of ``model``.
    :param model: a local :class:`~llmppl.models.base.LanguageModel` (default: the default model).

    >>> from llmppl.models import ToyLM
    >>> d = NextToken("ab", ToyLM(alphabet="ab"))
    >>> round(float(sum(d.log_prob(v).exp() for v in ["a", "b", ""])), 4)
    1.0
    """

    def __init__(self, prompt_or_state, model: LanguageModel | None = None, *, validate_args=None):
        self.model = check_model(model, "NextToken") if model is not None else get_default_model()
        if isinstance(prompt_or_state, str):
            self.prompt = prompt_or_state
            state = self.model.prefill_prompts([prompt_or_state])
        elif isinstance(prompt_or_state, State):
            self.prompt = None
            state = prompt_or_state
        else:
            raise TypeError(
                f"NextToken: prompt_or_state: expected a str or a model State, got {type(prompt_or_state).__name__}"
            )
        logprobs = self.model.step_logprobs(state)
        if logprobs.shape[0] != 1:
            raise ValueError(f"NextToken: prompt_or_state: expected a one-row state, got {logprobs.shape[0]} rows")
        self.logprobs = logprobs[0].detach().to("cpu", torch.float32)  # Tensor[V]
        super().__init__(validate_args=validate_args)

    def _token_text(self, token: int) -> str:
        return "" if token == self.model.tokenizer.eos_id else self.model.tokenizer.decode([token])

    def _table(self) -> dict[str, list[int]]:
        """Text -> token ids, for the tokens that can be generated (cached on the model)."""
        key = ("_llmppl_token_table", self.logprobs.shape[0])
        table = self.model.__dict__.get(key)
        if table is None:
            banned = set(self.model.banned_token_ids())
            table = {}
            for t in range(self.logprobs.shape[0]):
                if t in banned:
                    continue
                try:
                    text = self._token_text(t)
                except ValueError:
                    continue
                table.setdefault(text, []).append(t)
            self.model.__dict__[key] = table
        return table

    def sample(self, sample_shape=()):
        shape = self._check_sample_shape(sample_shape)
        n = shape[0] if shape else 1
        tokens = torch.multinomial(self.logprobs.exp(), n, replacement=True).tolist()
        out = [self._token_text(t) for t in tokens]
        return out if shape else out[0]

    def sample_batch(self, n: int) -> list[str]:
        return self.sample((n,))

    def log_prob(self, value) -> torch.Tensor:
        self._validate_sample(value)
        ids = self._table().get(value)
        if not ids:
            return torch.tensor(_NEG_INF)
        return torch.logsumexp(self.logprobs[ids], dim=0)

    def _describe(self) -> str:
        return f"NextToken({_short(self.prompt) if self.prompt is not None else 'state'})"
