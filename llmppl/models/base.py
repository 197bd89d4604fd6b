r"""The :class:`LanguageModel` interface: a token tier and a sequence tier.

A *local* backend (:class:`~llmppl.models.toy.ToyLM`, ``PerformerLM``,
:class:`~llmppl.models.hf.HFCausalLM`) implements only the **token tier**::

    tokenizer                                   # encode / decode / eos_id / vocab_size
    encode_prompt(text) -> list[int]            # default: tokenizer.encode(text)
    prefill(prompts: list[list[int]]) -> State  # one state row per prompt, any lengths
    next_logprobs(state) -> Tensor[N, V]        # float32 log-softmax
    advance(state, tokens: LongTensor[N]) -> State
    State.select(index) -> State                # a copy: fan out, resample, fork

and inherits the **sequence tier** (:meth:`LanguageModel.sample`,
:meth:`LanguageModel.score`), batched over all prompts, with a bounded LRU prefix
cache. A *remote* backend overrides only the sequence tier; its token tier raises
``NotImplementedError`` saying that a local model is needed.

``advance`` may consume (mutate) the state it is given; callers that still need the
old state ``select`` a copy first. Cached prefix states are only ever used through
``select``.

Backends whose states join row-wise (``concat_states``; the Performer and ``ToyLM``)
also keep a bounded LRU **continuation cache**: after ``sample``, each sequence's state
is remembered under the tokens it consumed, and a later prompt that extends one (a
cascade's next site: ``f"{prompt}{work}\nA:"``) resumes from it, advancing only the new
tokens instead of prefilling the whole prompt. Set ``continuation_cache_rows = 0`` to
turn it off.

Decoding semantics (shared, exactly, by ``sample`` and ``score``):

* each step's distribution is the model's next-token distribution with the
  tokenizer's non-EOS special tokens removed, divided by ``temperature`` and cut to the
  ``top_k`` most likely tokens (every token tied with the ``k``-th is kept), renormalised;
* after each generated token the text generated so far is decoded; generation stops
  at the first step at which it contains a ``stop`` string, and the value is the text
  before the earliest occurrence (``finish_reason="stop"``); it stops at EOS
  (``"eos"``; EOS is not part of the text) or after ``max_tokens`` tokens
  (``"length"``; the text may end with an incomplete stop string).

The probability of a value is the sum over every token path that returns it: the
EOS path, the path that ends after exactly ``max_tokens`` tokens, and one path per stop
string that could end it. With a tokenizer that is a bijection between strings and
token sequences (bytes, characters) this is exact; with a BPE tokenizer the value's
*canonical* tokenization is scored.

>>> from llmppl.models.toy import ToyLM
>>> lm = ToyLM(alphabet="ab", seed=0)
>>> [c] = lm.sample([""], max_tokens=3, stop="b", generator=torch.Generator().manual_seed(0))
>>> bool(abs(lm.score([""], [c.text], max_tokens=3, stop="b")[0].item() - c.log_prob) < 1e-5)
True
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "Completion",
    "LanguageModel",
    "State",
    "check_decoding_args",
    "concat_dataclass_states",
    "find_stop",
    "normalize_stop",
]

_NEG_INF = float("-inf")


@runtime_checkable
class State(Protocol):
    """A batch of decoding states, one row per sequence.

    ``select(index)`` returns a *new* state whose row ``i`` is a copy of row
    ``index[i]`` (rows may repeat): fan-out of a cached prompt, resampling, forking.

    >>> from llmppl.models import State, ToyLM
    >>> lm = ToyLM()
    >>> s = lm.prefill([lm.encode_prompt("ab")])
    >>> isinstance(s, State), lm.next_logprobs(s.select(torch.tensor([0, 0]))).shape[0]
    (True, 2)
    """

    def select(self, index: torch.Tensor) -> State: ...


@dataclass
class Completion:
    """One sampled string.

    :param str text: the value (stop string and EOS excluded).
    :param float log_prob: the exact log-probability that sampling returns ``text``
        (summed over every token path that returns it), as :meth:`LanguageModel.score`.
    :param list tokens: the generated token ids, including a final EOS or stop string.
    :param str finish_reason: ``"stop"``, ``"eos"`` or ``"length"``.

    >>> Completion("ab", -1.5, [0, 1, 2], "eos").text
    'ab'
    """

    text: str
    log_prob: float
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "eos"


# ---------------------------------------------------------------- argument checks


def normalize_stop(stop, *, where: str = "stop") -> tuple[str, ...]:
    """``stop`` as a tuple of distinct non-empty strings (``()`` for ``None``).

    >>> normalize_stop(None), normalize_stop("\\n"), normalize_stop(["aa", "b", "aa"])
    ((), ('\\n',), ('aa', 'b'))
    >>> normalize_stop("")
    Traceback (most recent call last):
    ...
    ValueError: stop: expected a non-empty string, got ''
    """
    if stop is None:
        return ()
    if isinstance(stop, str):
        items = [stop]
    elif isinstance(stop, (list, tuple)):
        items = list(stop)
        if not items:
            raise ValueError(f"{where}: expected a string or a non-empty list of strings, got an empty list")
    else:
        raise TypeError(f"{where}: expected None, a str or a list of str, got {type(stop).__name__}")
    for s in items:
        if not isinstance(s, str):
            raise TypeError(f"{where}: expected str stop strings, got {type(s).__name__} ({s!r})")
        if not s:
            raise ValueError(f"{where}: expected a non-empty string, got ''")
    return tuple(dict.fromkeys(items))


def check_decoding_args(max_tokens, temperature, top_k, *, where: str = "") -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument for a bad decoding setting.

    >>> check_decoding_args(8, 1.0, None)
    >>> check_decoding_args(0, 1.0, None)
    Traceback (most recent call last):
    ...
    ValueError: max_tokens: expected an int >= 1, got 0
    """
    pre = f"{where}: " if where else ""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise TypeError(f"{pre}max_tokens: expected an int >= 1, got {type(max_tokens).__name__} ({max_tokens!r})")
    if max_tokens < 1:
        raise ValueError(f"{pre}max_tokens: expected an int >= 1, got {max_tokens}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{pre}temperature: expected a float > 0, got {type(temperature).__name__} ({temperature!r})")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{pre}temperature: expected a finite float > 0, got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"{pre}top_k: expected None or an int >= 1, got {type(top_k).__name__} ({top_k!r})")
        if top_k < 1:
            raise ValueError(f"{pre}top_k: expected None or an int >= 1, got {top_k}")


def _check_prompts(prompts, name: str = "prompts") -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"{name}: expected a list of str, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{name}[{i}]: expected a str, got {type(p).__name__} ({p!r})")
    return list(prompts)


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """The index of the earliest occurrence of any stop string in ``text``, or ``None``.

    >>> find_stop("xaab", ("aa", "b")), find_stop("xy", ("aa",))
    (1, None)
    """
    cut = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (cut is None or i < cut):
            cut = i
    return cut


def stop_window(stops: tuple[str, ...]) -> int:
    """Tokens at the end of a sequence enough to hold a stop string that ends there.

    A character is at most four bytes, a token at least one byte: a stop of ``c``
    characters spans at most ``4c`` tokens; four more keep a character that the window's
    first token cuts in half away from it.

    >>> stop_window(("\\n",))
    8
    """
    return 4 * max((len(s) for s in stops), default=0) + 4


def stop_in_prefix(decode, ids: list[int], j: int, stops: tuple[str, ...], window: int) -> str | None:
    """The text of ``ids[:j]`` if a stop string occurs in it, else ``None``, checked every step.

    Called after each token, so a stop that is new at ``j`` ends in its last tokens: only
    they are decoded, and the whole prefix only when they hold a stop. The result is that
    of ``find_stop(decode(ids[:j]), stops)``, at a cost that does not grow with ``j``.

    >>> stop_in_prefix(lambda t: "".join(map(chr, t)), [97, 98, 10, 99], 3, ("\\n",), 8)
    'ab\\n'
    """
    if j > window and find_stop(decode(ids[j - window : j]), stops) is None:
        return None
    text = decode(ids[:j])
    return text if find_stop(text, stops) is not None else None


def concat_dataclass_states(states: list) -> Any:
    """Join decoding states row-wise: dataclasses whose fields are tensors with the rows
    first, lists of such states, or non-tensor constants equal in every part.

    >>> from llmppl.models.toy import ToyState
    >>> concat_dataclass_states([ToyState(torch.zeros(2, 3)), ToyState(torch.ones(1, 3))]).hidden.shape
    torch.Size([3, 3])
    """
    if not states:
        raise ValueError("concat_dataclass_states: expected at least one state, got none")
    first = states[0]
    if len(states) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim=0)
    if isinstance(first, (list, tuple)):
        if any(len(s) != len(first) for s in states):
            raise ValueError("concat_dataclass_states: expected lists of equal length in every state")
        return type(first)(concat_dataclass_states(list(parts)) for parts in zip(*states, strict=True))
    if dataclasses.is_dataclass(first):
        return type(first)(
            **{f.name: concat_dataclass_states([getattr(s, f.name) for s in states]) for f in dataclasses.fields(first)}
        )
    if all(s == first for s in states[1:]):
        return first
    raise TypeError(f"concat_dataclass_states: cannot join values of type {type(first).__name__}")


# ---------------------------------------------------------------- the interface


class LanguageModel:
    """Base class of every language model; see the module docstring for the contract.

    Subclasses set ``tokenizer`` and implement ``prefill``, ``next_logprobs`` and
    ``advance`` (local), or override ``sample`` and ``score`` (remote). There is no
    required ``__init__`` argument, so ``class M(nn.Module, LanguageModel)`` works.

    ``prefix_cache_size`` bounds the LRU prefix cache (entries; ``0`` disables it).

    >>> from llmppl.models import LanguageModel, ToyLM
    >>> lm = ToyLM(alphabet="ab")
    >>> isinstance(lm, LanguageModel), lm.tokenizer.decode(lm.tokenizer.encode("ab"))
    (True, 'ab')
    """

    tokenizer: Any = None
    prefix_cache_size: int = 16
    #: groups of more distinct prompts than this are prefilled but not cached
    prefix_cache_max_prompts: int = 32
    #: state rows kept after ``sample`` (LRU), so that a later prompt which extends a
    #: sampled sequence (a cascade's next site) resumes from its state; ``0`` disables it.
    #: Backends whose states :meth:`concat_states` can join set it.
    continuation_cache_rows: int = 0
    #: a continuation is resumed only when the new prompt adds at most this many tokens
    continuation_max_suffix: int = 32

    # ---------------------------------------------------------- token tier

    def _local_only(self, what: str):
        return NotImplementedError(
            f"{type(self).__name__}.{what}: this backend implements only the sequence tier (sample/score); "
            "token-level use (prefill/next_logprobs/advance, NextToken, token-level steering) needs a local "
            "model such as PerformerLM or HFCausalLM"
        )

    def encode_prompt(self, text: str) -> list[int]:
        """The token ids a prompt is prefilled with (default: ``tokenizer.encode``)."""
        if self.tokenizer is None:
            raise self._local_only("encode_prompt")
        return list(self.tokenizer.encode(text))

    def prefill(self, prompts: list[list[int]]) -> State:
        """Run the prompts (token lists, any lengths) and return one state row per prompt."""
        raise self._local_only("prefill")

    def next_logprobs(self, state: State) -> torch.Tensor:
        """``Tensor[N, vocab]``, float32 log-softmax of the next token for every row."""
        raise self._local_only("next_logprobs")

    def advance(self, state: State, tokens: torch.Tensor) -> State:
        """Append ``tokens`` (``LongTensor[N]``) to every row; may consume ``state``."""
        raise self._local_only("advance")

    # ---------------------------------------------------------- helpers

    def banned_token_ids(self) -> list[int]:
        """Token ids never generated: the tokenizer's special tokens other than EOS.

        Backends with extra padding rows in the output layer extend this.

        >>> from llmppl.models.toy import ToyLM
        >>> ToyLM(alphabet="ab").banned_token_ids()  # BOS
        [3]
        """
        tok = self.tokenizer
        eos = tok.eos_id
        ids = {getattr(tok, name, None) for name in ("bos_id", "pad_id")}
        return sorted(i for i in ids if i is not None and i != eos)

    def _banned_tensor(self, vocab: int, device) -> torch.Tensor | None:
        key = (vocab, str(device))
        cached = self.__dict__.get("_llmppl_banned")
        if cached is None or cached[0] != key:
            ids = [i for i in self.banned_token_ids() if 0 <= i < vocab]
            t = torch.tensor(ids, dtype=torch.long, device=device) if ids else None
            self.__dict__["_llmppl_banned"] = cached = (key, t)
        return cached[1]

    def step_logprobs(self, state: State, *, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
        """The sampling distribution of the next token: ``Tensor[N, V]`` log-probs.

        Special tokens other than EOS removed, ``temperature`` and ``top_k`` applied
        (ties with the ``k``-th largest kept), renormalised. ``sample`` and ``score`` both
        use exactly this function.

        >>> from llmppl.models.toy import ToyLM
        >>> lm = ToyLM(alphabet="ab")
        >>> lp = lm.step_logprobs(lm.prefill([lm.encode_prompt("")]), top_k=1)
        >>> int(torch.isfinite(lp).sum())
        1
        """
        lp = self.next_logprobs(state).float()
        banned = self._banned_tensor(lp.shape[-1], lp.device)
        if banned is not None:
            lp = lp.index_fill(-1, banned, _NEG_INF)
        if temperature != 1.0:
            # in float64 and from the maximum: no finite temperature > 0 overflows every entry
            # (or underflows to 0/0); the maximum stays at 0
            lp = ((lp.double() - lp.amax(-1, keepdim=True).double()) / temperature).float()
        if top_k is not None and top_k < lp.shape[-1]:
            kth = lp.topk(top_k, dim=-1).values[..., -1:]
            lp = lp.masked_fill(lp < kth, _NEG_INF)
        return lp.log_softmax(-1)

    def _weights_signature(self) -> tuple | None:
        """What changes with the weights: each tensor's storage, in-place version, dtype and
        device (an optimiser step, ``load_state_dict``, ``.to(...)``); ``None`` for a model
        without torch weights here (a remote server)."""
        holder = self if isinstance(self, torch.nn.Module) else getattr(self, "model", None)
        if not isinstance(holder, torch.nn.Module):
            return None
        tensors = itertools.chain(holder.parameters(), holder.buffers())
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def _drop_stale_caches(self) -> None:
        """Forget cached states and scores made with other weights (see :meth:`clear_prefix_cache`).

        >>> from llmppl.models.performer import PerformerConfig, PerformerLM
        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> _ = lm.sample(["ab"], max_tokens=2)
        >>> len(lm._prefix_cache())
        1
        >>> with torch.no_grad():
        ...     _ = next(lm.parameters()).add_(1.0)  # the weights change in place
        >>> lm._drop_stale_caches(); len(lm._prefix_cache())
        0
        """
        signature = self._weights_signature()
        if self.__dict__.get("_llmppl_weights_signature") != signature:
            self.clear_prefix_cache()
            self.__dict__["_llmppl_weights_signature"] = signature

    def _prefix_cache(self) -> OrderedDict:
        cache = self.__dict__.get("_llmppl_prefix_cache")
        if cache is None:
            cache = self.__dict__["_llmppl_prefix_cache"] = OrderedDict()
        return cache

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix and continuation state and memoised score (call after
        changing the weights).

        >>> from llmppl.models.toy import ToyLM
        >>> ToyLM().clear_prefix_cache()
        """
        self._prefix_cache().clear()
        self.__dict__.pop("_llmppl_continuations", None)
        self.__dict__.pop("_llmppl_score_memo", None)

    def concat_states(self, states: list[State]) -> State:
        """Join states row-wise (rows of ``states[0]`` first). The default joins dataclass
        states field by field (:func:`concat_dataclass_states`).

        >>> from llmppl.models.toy import ToyLM
        >>> lm = ToyLM()
        >>> len(lm.concat_states([lm.prefill([[3]]), lm.prefill([[3, 0], [3]])]))
        3
        """
        return concat_dataclass_states(list(states))

    def _continuations(self) -> _ContinuationCache:
        cache = self.__dict__.get("_llmppl_continuations")
        if cache is None:
            cache = self.__dict__["_llmppl_continuations"] = _ContinuationCache()
        return cache

    def _remember_continuations(self, state: State, rows: list[int], keys: list[tuple]) -> None:
        """Keep ``state``'s ``rows`` (copies) as the states after the token sequences ``keys``."""
        cap = self.continuation_cache_rows
        if cap <= 0 or not rows:
            return
        snap = state.select(torch.tensor(rows, dtype=torch.long))
        self._continuations().add(snap, keys, cap)

    def _resume_continuations(self, unique: list[tuple]) -> tuple[State, list[tuple]] | None:
        """State rows for the prompts ``unique`` that extend a remembered continuation.

        Returns ``(state, order)`` with one row per prompt of ``order`` (the prompts found,
        advanced through their extra tokens), or ``None`` when none is found.
        """
        if self.continuation_cache_rows <= 0:
            return None
        cache = self.__dict__.get("_llmppl_continuations")
        if cache is None or not cache.index:
            return None
        hits = {}
        for u in unique:
            found = cache.lookup(u, self.continuation_max_suffix)
            if found is not None:
                hits[u] = found
        if not hits:
            return None
        by_suffix: dict[int, list[tuple]] = {}
        for u, (_, _, length) in hits.items():
            by_suffix.setdefault(len(u) - length, []).append(u)
        parts, order = [], []
        for suffix, group in sorted(by_suffix.items()):
            by_entry: dict[int, list[tuple]] = {}
            for u in group:
                by_entry.setdefault(hits[u][0], []).append(u)
            pieces, members = [], []
            for entry_id, us in by_entry.items():
                pieces.append(cache.take(entry_id, [hits[u][1] for u in us]))
                members.extend(us)
            st = pieces[0] if len(pieces) == 1 else self.concat_states(pieces)
            for j in range(suffix):
                st = self.advance(st, torch.tensor([u[hits[u][2] + j] for u in members], dtype=torch.long))
            parts.append(st)
            order.extend(members)
        return (parts[0] if len(parts) == 1 else self.concat_states(parts)), order

    def prefill_prompts(self, prompts: list[str]) -> State:
        """One state row per prompt string, each distinct prompt prefilled once.

        The prefill of a group of distinct prompts is kept in a bounded LRU cache keyed
        by their tokens, so N samples or scores of one prompt prefill it once; rows are
        always handed out through ``State.select`` (copies).

        >>> from llmppl.models.toy import ToyLM
        >>> lm = ToyLM()
        >>> lm.next_logprobs(lm.prefill_prompts(["a", "a", "b"])).shape
        torch.Size([3, 4])
        """
        token_lists = [tuple(self.encode_prompt(p)) for p in prompts]
        return self._prefill_tokens(token_lists)

    def _prefill_tokens(self, token_lists: list[tuple]) -> State:
        position: dict[tuple, int] = {}
        for t in token_lists:
            position.setdefault(t, len(position))
        unique = list(position)
        key = tuple(unique)
        self._drop_stale_caches()
        cache = self._prefix_cache()
        base = cache.get(key)
        resumed = None if base is not None else self._resume_continuations(unique)
        if base is not None:
            cache.move_to_end(key)
        elif resumed is not None:
            # prompts that extend sampled sequences resume from their states; the rest are prefilled
            base, order = resumed
            found = set(order)
            rest = [u for u in unique if u not in found]
            if rest:
                base = self.concat_states([base, self.prefill([list(u) for u in rest])])
                order = order + rest
            row_of = {u: r for r, u in enumerate(order)}
            index = torch.tensor([row_of[t] for t in token_lists], dtype=torch.long)
            return base.select(index)
        else:
            base = self.prefill([list(u) for u in unique])
            if self.prefix_cache_size > 0 and len(unique) <= self.prefix_cache_max_prompts:
                cache[key] = base
                while len(cache) > self.prefix_cache_size:
                    cache.popitem(last=False)
        index = torch.tensor([position[t] for t in token_lists], dtype=torch.long)
        return base.select(index)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _encode_value(self, text: str) -> list[int] | None:
        """Canonical tokens of a generated value, or ``None`` when no path produces it."""
        try:
            ids = list(self.tokenizer.encode(text))
        except (ValueError, KeyError):
            return None
        if self._decode(ids) != text:
            return None
        return ids

    def _stop_starters(self, stops: tuple[str, ...]) -> dict[int, str]:
        """Tokens whose text starts with a stop string: token id -> its text (cached per ``stops``).

        Any of them ends generation right where it begins (a BPE token ``" the"`` under
        ``stop=" "``), so the probability that a value is returned sums over all of them.
        """
        cache = self.__dict__.setdefault("_llmppl_stop_starters", {})
        if stops not in cache:
            banned = set(self.banned_token_ids())
            eos = self.tokenizer.eos_id
            out = {}
            for t in range(self.tokenizer.vocab_size):
                if t == eos or t in banned:
                    continue
                try:
                    text = self._decode([t])
                except (ValueError, KeyError, IndexError):
                    continue
                if any(text.startswith(s) for s in stops):
                    out[t] = text
            if len(cache) >= 16:
                cache.pop(next(iter(cache)))
            cache[stops] = out
        return cache[stops]

    def _stop_reads(self, value: str, stops: tuple[str, ...]) -> list[int]:
        """The one-token ends of ``value``: tokens that start with a stop, where no stop
        begins earlier across the value's end (``"a" + "ab"`` under ``stop="aa"``)."""
        starters = self._stop_starters(stops)
        spans = any(value.endswith(st[:j]) for st in stops for j in range(1, len(st)))
        if not spans:
            return list(starters)
        tail = value[-max(len(st) for st in stops) :]
        return [t for t, text in starters.items() if find_stop(tail + text, stops) == len(tail)]

    # ---------------------------------------------------------- sequence tier

    def sample(
        self,
        prompts: list[str],
        *,
        max_tokens: int = 64,
        stop=None,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Completion]:
        """Draw one completion per prompt, all prompts in one decoding loop.

        :param list prompts: prompt strings (repeats share one prefill).
        :param int max_tokens: the most tokens generated (EOS counts as one).
        :param stop: ``None``, a string or a list of strings ending generation.
        :param float temperature: divides the logits.
        :param top_k: keep only the ``k`` most likely tokens (ties kept).
        :param generator: a ``torch.Generator`` for reproducible draws.
        :returns: a list of :class:`Completion`, whose ``log_prob`` is
            :meth:`score` of its text (exact, every path). It is computed during sampling
            where the sampled tokens are the value's canonical tokens and every stop string
            is one token; otherwise by one batched ``score`` call afterwards.

        >>> from llmppl.models.toy import ToyLM
        >>> lm = ToyLM(alphabet="ab")
        >>> cs = lm.sample(["", "ab"], max_tokens=4, generator=torch.Generator().manual_seed(1))
        >>> [len(c.tokens) <= 4 for c in cs]
        [True, True]
        """
        prompts = _check_prompts(prompts)
        check_decoding_args(max_tokens, temperature, top_k, where="sample")
        stops = normalize_stop(stop)
        if self.tokenizer is None:
            raise self._local_only("sample")
        n = len(prompts)
        if n == 0:
            return []
        eos = self.tokenizer.eos_id
        # Exact log-probs come from the sampling pass itself where the sampled path is the
        # value's canonical path and every stop string is one token: keep, per sequence, the
        # running path log-prob and the log-probs of EOS and of every token that starts with
        # a stop (" the" under " ") at every step, when those tokens are few.
        window = stop_window(stops)
        starters = self._stop_starters(stops) if stops else {}
        one_token = all(ids is None or len(ids) == 1 for ids in map(self._encode_value, stops))
        fast = one_token and len(starters) <= 512
        read_ids = [eos, *sorted(starters)] if fast else [eos]
        read_pos = {t: k for k, t in enumerate(read_ids)}
        read_t = torch.tensor(read_ids, dtype=torch.long)
        cum: list[list[float]] = [[0.0] for _ in range(n)]
        reads: list[list[list[float]]] = [[] for _ in range(n)]
        prompt_tokens = [tuple(self.encode_prompt(p)) for p in prompts]
        state = self._prefill_tokens(prompt_tokens)
        remember = 0 < n <= self.continuation_cache_rows
        generated: list[list[int]] = [[] for _ in range(n)]
        results: list[tuple[str, str]] = [("", "")] * n
        rows = list(range(n))  # batch row -> sequence index
        alive = [True] * n  # per batch row; finished rows ride along until compaction
        for _ in range(max_tokens):
            lp = self.step_logprobs(state, temperature=temperature, top_k=top_k)
            probs = lp.exp()
            if generator is not None:
                probs = probs.to(generator.device)
            sampled = torch.multinomial(probs, 1, generator=generator).to(lp.device)
            token_list = sampled.squeeze(-1).tolist()
            if fast:
                picked = lp.gather(1, sampled).squeeze(-1).to("cpu", torch.float64).tolist()
                step_reads = lp[:, read_t.to(lp.device)].to("cpu", torch.float64).tolist()
            done_rows: list[int] = []
            for r, i in enumerate(rows):
                if not alive[r]:
                    continue
                t = token_list[r]
                generated[i].append(t)
                if fast:
                    reads[i].append(step_reads[r])
                    cum[i].append(cum[i][-1] + picked[r])
                if t == eos:
                    results[i] = (self._decode(generated[i][:-1]), "eos")
                    alive[r] = False
                    done_rows.append(r)
                    continue
                seq = generated[i]
                text = stop_in_prefix(self._decode, seq, len(seq), stops, window) if stops else None
                if text is not None:
                    results[i] = (text[: find_stop(text, stops)], "stop")
                    alive[r] = False
                    done_rows.append(r)
                elif len(seq) >= max_tokens:
                    results[i] = (self._decode(seq), "length")
                    alive[r] = False
                    done_rows.append(r)
            if remember and done_rows:  # the state before the last token: prompt + all but it
                keys = [prompt_tokens[rows[r]] + tuple(generated[rows[r]][:-1]) for r in done_rows]
                self._remember_continuations(state, done_rows, keys)
            live = [r for r, a in enumerate(alive) if a]
            if not live:
                break
            tokens = torch.tensor(token_list, dtype=torch.long)
            if 2 * len(live) <= len(rows):  # compact: stop computing finished rows
                keep = torch.tensor(live, dtype=torch.long)
                state = state.select(keep)
                tokens = tokens[keep]
                rows = [rows[r] for r in live]
                alive = [True] * len(rows)
            state = self.advance(state, tokens)
        log_probs: list[float | None] = [None] * n
        if fast:
            for i, (text, reason) in enumerate(results):
                log_probs[i] = self._sampled_log_prob(
                    text, reason, generated[i], cum[i], reads[i], read_pos, stops, max_tokens
                )
        rest = [i for i in range(n) if log_probs[i] is None]
        if rest:  # BPE paths that are not canonical, multi-token stops: score them
            scored = self.score(
                [prompts[i] for i in rest],
                [results[i][0] for i in rest],
                max_tokens=max_tokens,
                stop=stop,
                temperature=temperature,
                top_k=top_k,
            )
            for i, lp_i in zip(rest, scored.tolist(), strict=True):
                log_probs[i] = lp_i
        return [
            Completion(text, float(lp_i), generated[i], reason)  # type: ignore[arg-type]
            for i, ((text, reason), lp_i) in enumerate(zip(results, log_probs, strict=True))
        ]

    def _sampled_log_prob(self, text, reason, generated, cum, reads, read_pos, stops, max_tokens):
        """``score`` of ``text`` from the sampling pass, or ``None`` when the sampled path is not canonical."""
        ids = self._encode_value(text)
        if ids is None:
            return None
        j = len(ids)
        if reason == "length":
            return cum[j] if ids == generated else None
        if generated[:j] != ids or j >= len(generated):
            return None
        # the path through the value's tokens is clear of stops (the sampler checked every
        # prefix); it ends by EOS, or by any token that starts with a stop right there
        terms = [reads[j][0]]
        if j + 1 <= max_tokens and stops:
            terms += [reads[j][read_pos[t]] for t in self._stop_reads(text, stops)]
        return cum[j] + float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0))

    def score(
        self,
        prompts: list[str] | str,
        continuations: list[str],
        *,
        max_tokens: int = 64,
        stop=None,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Exact log-probabilities that :meth:`sample` returns each continuation.

        One batched pass over all (prompt, continuation) pairs; a single ``str`` prompt
        is shared by every continuation. A value that contains a stop string, that could
        not be the text before the *first* stop, or that needs more than ``max_tokens``
        tokens gets ``-inf``.

        :returns: ``Tensor[N]`` (default float dtype).

        >>> from llmppl.models.toy import ToyLM
        >>> lm = ToyLM(alphabet="ab")
        >>> lm.score("", ["ab", "ba"], stop="b").tolist()[1]
        -inf
        """
        if isinstance(prompts, str):
            prompts = [prompts] * (len(continuations) if isinstance(continuations, Sequence) else 0)
        prompts = _check_prompts(prompts)
        continuations = _check_prompts(continuations, "continuations")
        if len(prompts) != len(continuations):
            raise ValueError(
                f"score: expected as many prompts as continuations, got {len(prompts)} and {len(continuations)}"
            )
        check_decoding_args(max_tokens, temperature, top_k, where="score")
        stops = normalize_stop(stop)
        if self.tokenizer is None:
            raise self._local_only("score")
        n = len(prompts)
        out_dtype = torch.get_default_dtype()
        if n == 0:
            return torch.zeros(0, dtype=out_dtype)
        eos = self.tokenizer.eos_id
        stop_tokens = {s: self._encode_value(s) for s in stops}

        # Each row walks a token path from its prompt, then reads the log-probs of a few
        # final tokens (EOS, one-token stops); a value's log-prob is the logsumexp of its rows.
        row_item: list[int] = []
        row_seq: list[list[int]] = []
        row_reads: list[list[int]] = []
        row_plain: list[bool] = []  # the path itself ends generation (length limit)

        for i, value in enumerate(continuations):
            ids = self._encode_value(value)
            if ids is None or len(ids) > max_tokens:
                continue
            if stops and not self._path_clear(ids, stops):
                continue
            reads: list[int] = []
            plain = False
            if len(ids) == max_tokens:
                plain = True
            else:
                reads.append(eos)
                if stops:  # every token that starts with a stop (one-token stops among them)
                    reads += self._stop_reads(value, stops)
                for s_ids in stop_tokens.values():
                    if not s_ids or len(s_ids) == 1 or len(ids) + len(s_ids) > max_tokens:
                        continue
                    if self._stop_path_valid(ids, s_ids, value, stops):  # a stop of several tokens
                        row_item.append(i)
                        row_seq.append(ids + s_ids[:-1])
                        row_reads.append([s_ids[-1]])
                        row_plain.append(False)
            row_item.append(i)
            row_seq.append(ids)
            row_reads.append(sorted(set(reads)))
            row_plain.append(plain)

        result = torch.full((n,), _NEG_INF, dtype=torch.float64)
        if not row_item:
            return result.to(out_dtype)
        row_lp = self._walk_rows([prompts[i] for i in row_item], row_seq, row_reads, row_plain, temperature, top_k)
        item = torch.tensor(row_item, dtype=torch.long)
        per_item = torch.full((n, len(row_item)), _NEG_INF, dtype=torch.float64)
        per_item[item, torch.arange(len(row_item))] = row_lp
        result = torch.logsumexp(per_item, dim=1)
        return result.to(out_dtype)

    def _prefix_texts_clear(self, ids: list[int], stops: tuple[str, ...], upto: int) -> bool:
        """No stop is detected after any of the first ``upto`` tokens of ``ids``."""
        window = stop_window(stops)
        return all(stop_in_prefix(self._decode, ids, j, stops, window) is None for j in range(1, upto + 1))

    def _path_clear(self, ids: list[int], stops: tuple[str, ...]) -> bool:
        full = self._decode(ids)
        if find_stop(full, stops) is not None:
            return False
        return self._prefix_texts_clear(ids, stops, len(ids) - 1)

    def _stop_path_valid(self, ids: list[int], s_ids: list[int], value: str, stops: tuple[str, ...]) -> bool:
        """Generating ``s_ids`` after ``ids`` first detects a stop at its last token, cutting at ``value``."""
        seq = ids + s_ids
        for j in range(len(ids) + 1, len(seq) + 1):
            cut = find_stop(self._decode(seq[:j]), stops)
            if cut is not None:
                return j == len(seq) and self._decode(seq[:j])[:cut] == value
        return False

    def _walk_rows(self, prompts, seqs, reads, plain, temperature, top_k) -> torch.Tensor:
        """Log-prob of each row's path plus logsumexp of its final reads; float64 ``[R]``."""
        r_total = len(seqs)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        width = int(lengths.max())
        tokens = torch.zeros((r_total, width + 1), dtype=torch.long)
        for r, s in enumerate(seqs):
            if s:
                tokens[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        k = max(1, max(len(x) for x in reads))
        read_ids = torch.zeros((r_total, k), dtype=torch.long)
        read_ok = torch.zeros((r_total, k), dtype=torch.bool)
        for r, x in enumerate(reads):
            if x:
                read_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
                read_ok[r, : len(x)] = True
        needs_final = read_ok.any(1)

        path_lp = torch.zeros(r_total, dtype=torch.float64)
        final = torch.full((r_total,), _NEG_INF, dtype=torch.float64)
        rows = torch.arange(r_total)  # batch row -> path row
        state = self.prefill_prompts(prompts)
        for j in range(width + 1):
            row_len = lengths[rows]
            ending = (row_len == j) & needs_final[rows]
            going = row_len > j
            if not bool(ending.any() or going.any()):
                break
            lp = self.step_logprobs(state, temperature=temperature, top_k=top_k)
            # gather on the model's device in float32; accumulate in float64 on the CPU
            if bool(ending.any()):
                er = rows[ending]
                got = lp[ending.to(lp.device)].gather(1, read_ids[er].to(lp.device)).to("cpu", torch.float64)
                final[er] = torch.logsumexp(got.masked_fill(~read_ok[er], _NEG_INF), dim=1)
            if not bool(going.any()):
                break
            step_tokens = tokens[rows, j]
            picked = lp.gather(1, step_tokens.to(lp.device).unsqueeze(1)).squeeze(1).to("cpu", torch.float64)
            path_lp[rows[going]] += picked[going]
            if 2 * int(going.sum()) <= len(rows):  # compact: drop finished rows
                keep = going.nonzero().squeeze(1)
                state = state.select(keep)
                rows = rows[keep]
                step_tokens = step_tokens[keep]
            state = self.advance(state, step_tokens)
        # a length-limited path ends by itself (log 1); the others end by a final read
        tail = torch.where(torch.tensor(plain, dtype=torch.bool), torch.zeros_like(final), final)
        return path_lp + tail


class _ContinuationCache:
    """Bounded LRU store of decoding-state rows keyed by the token sequence they consumed."""

    def __init__(self):
        self.entries: OrderedDict[int, tuple[Any, list[tuple]]] = OrderedDict()  # id -> (state, keys)
        self.index: dict[tuple, tuple[int, int]] = {}  # tokens -> (entry id, row)
        self.lengths: dict[int, int] = {}  # key length -> number of keys
        self.rows = 0
        self._next = 0

    def add(self, state, keys: list[tuple], cap: int) -> None:
        eid, self._next = self._next, self._next + 1
        self.entries[eid] = (state, keys)
        for r, k in enumerate(keys):
            old = self.index.get(k)
            if old is None:
                self.lengths[len(k)] = self.lengths.get(len(k), 0) + 1
            self.index[k] = (eid, r)
        self.rows += len(keys)
        while self.rows > cap and self.entries:
            old_id, (_, old_keys) = self.entries.popitem(last=False)
            self.rows -= len(old_keys)
            for k in old_keys:
                if self.index.get(k, (None,))[0] == old_id:
                    del self.index[k]
                    self.lengths[len(k)] -= 1
                    if not self.lengths[len(k)]:
                        del self.lengths[len(k)]

    def lookup(self, tokens: tuple, max_suffix: int) -> tuple[int, int, int] | None:
        """``(entry id, row, key length)`` of the longest remembered prefix of ``tokens``."""
        n = len(tokens)
        for length in range(n, max(-1, n - max_suffix - 1), -1):  # longest first, no sort of all lengths
            if length not in self.lengths:
                continue
            hit = self.index.get(tokens[:length])
            if hit is not None:
                return (*hit, length)
        return None

    def take(self, entry_id: int, rows: list[int]):
        """Copies of rows of one entry (marked recently used)."""
        self.entries.move_to_end(entry_id)
        return self.entries[entry_id][0].select(torch.tensor(rows, dtype=torch.long))
