r"""A byte-level Performer language model: FAVOR+ causal attention, rotary positions, fixed-size state.

Token embedding, pre-norm blocks of FAVOR+ causal attention (:mod:`llmppl.ops`) and an
MLP, a final norm and an output head tied to the embedding. Positions are rotary,
applied to queries and keys *before* the feature map, so the recurrent form is exact
and there is no position table to overflow. Each layer holds one random projection,
fixed after training and shared by every sequence.

:meth:`PerformerLM.forward` runs whole sequences (training, prefill);
:meth:`PerformerLM.prefill` / :meth:`~PerformerLM.next_logprobs` /
:meth:`~PerformerLM.advance` are the token tier of the ``LanguageModel`` interface,
whose state per sequence is one :class:`~llmppl.ops.FavorState` per layer —
``H·M·(D+1)+H`` floats per layer whatever the context length.

>>> lm = PerformerLM(PerformerConfig.tiny())
>>> st = lm.prefill([lm.encode_prompt("Q: 1+1"), lm.encode_prompt("")])
>>> lm.next_logprobs(st).shape
torch.Size([2, 259])
"""

from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import FavorState, causal_linear_attention, favor_features, orthogonal_random_features
from .base import LanguageModel, normalize_stop
from .tokenizer import ByteTokenizer

__all__ = ["CheckpointError", "PerformerConfig", "PerformerLM", "PerformerState"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that does not match its config or holds non-finite weights.

    A ``ValueError``, raised e.g. by :meth:`PerformerConfig.from_dict` and
    :meth:`PerformerLM.from_pretrained`.

    >>> try:
    ...     PerformerConfig.from_dict({"d_model": 32, "width": 8})
    ... except CheckpointError as err:
    ...     print(isinstance(err, ValueError), str(err)[:56])
    True PerformerConfig: unknown config keys ['width']; expected
    """


@dataclass
class PerformerConfig:
    """Hyper-parameters of :class:`PerformerLM`.

    >>> PerformerConfig.tiny().d_model
    32
    """

    vocab_size: int = 259  # ByteTokenizer: 256 bytes + BOS, EOS, PAD
    d_model: int = 192  # residual width (the shipped size)
    n_layers: int = 4  # blocks
    n_heads: int = 6  # attention heads; head_dim = d_model // n_heads = 32
    num_features: int = 64  # M, FAVOR+ random features per head
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * d_model
    rotary_base: float = 10000.0  # RoPE base
    projection_seed: int = 0  # seeds the per-layer random projections
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "num_features", "mlp_ratio", "projection_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"PerformerConfig: expected {name} to be an int, got {value!r}")
            if value < 1 and name != "projection_seed":
                raise ValueError(f"PerformerConfig: expected {name} to be a positive int, got {value!r}")
        for name, low in (("rotary_base", 1.0), ("norm_eps", 0.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"PerformerConfig: expected {name} to be a float, got {value!r}")
            if not (math.isfinite(value) and value > low):
                raise ValueError(f"PerformerConfig: expected {name} to be a finite float > {low:g}, got {value!r}")
        if self.vocab_size < ByteTokenizer.vocab_size:  # every byte, BOS, EOS and PAD need a row
            raise ValueError(
                f"PerformerConfig: expected vocab_size >= {ByteTokenizer.vocab_size} (ByteTokenizer's ids), "
                f"got {self.vocab_size}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"PerformerConfig: expected d_model divisible by n_heads, got {self.d_model} and {self.n_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"PerformerConfig: expected an even head_dim for rotary, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def tiny(cls, **overrides) -> PerformerConfig:
        """A tiny config for tests and doctests."""
        return cls(**{"d_model": 32, "n_layers": 2, "n_heads": 2, "num_features": 16, "mlp_ratio": 2, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PerformerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(
                f"PerformerConfig: unknown config keys {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**data)


def rotary_tables(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``/``sin`` of shape ``positions.shape + (dim // 2,)`` for rotary embeddings.

    >>> cos, sin = rotary_tables(torch.arange(3), 8, 10000.0)
    >>> cos.shape
    torch.Size([3, 4])
    """
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq  # exact for long contexts
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(x[..., :d/2], x[..., d/2:])`` by the tabled angles.

    >>> x = torch.randn(1, 1, 3, 4)
    >>> cos, sin = rotary_tables(torch.arange(3), 4, 10000.0)
    >>> torch.allclose(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    True
    """
    x1, x2 = x.chunk(2, dim=-1)
    # float32 tables: rotate in float32, return x's dtype (half precision stays half)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain.

    >>> RMSNorm(4)(torch.ones(2, 4)).shape
    torch.Size([2, 4])
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class PerformerBlock(nn.Module):
    """Pre-norm block: FAVOR+ causal self-attention, then an MLP.

    >>> blk = PerformerBlock(PerformerConfig.tiny(), generator=torch.Generator().manual_seed(0))
    >>> cos, sin = rotary_tables(torch.arange(5), 16, 10000.0)
    >>> blk(torch.randn(1, 5, 32), cos, sin)[0].shape
    torch.Size([1, 5, 32])
    """

    def __init__(self, config: PerformerConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        c = config
        self.n_heads, self.head_dim = c.n_heads, c.head_dim
        self.norm1 = RMSNorm(c.d_model, c.norm_eps)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.out = nn.Linear(c.d_model, c.d_model, bias=False)
        self.norm2 = RMSNorm(c.d_model, c.norm_eps)
        self.fc1 = nn.Linear(c.d_model, c.mlp_ratio * c.d_model, bias=False)
        self.fc2 = nn.Linear(c.mlp_ratio * c.d_model, c.d_model, bias=False)
        # frozen: a buffer, saved with the weights, shared by every sequence
        self.register_buffer("projection", orthogonal_random_features(c.num_features, c.head_dim, generator=generator))

    def _qkv(self, x, cos, sin):
        B, L, _ = x.shape
        q, k, v = (
            self.qkv(self.norm1(x)).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # (B, H, L, Dh)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _mlp(self, h):
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))

    def forward(self, x, cos, sin, key_mask: torch.Tensor | None = None):
        """``x: Tensor[B, L, C]`` -> ``(Tensor[B, L, C], (k_feat, k_log_scale, v))``.

        ``key_mask`` (``Tensor[B, L]`` bool, ``True`` for real tokens) masks padding
        keys out of the returned log-scales (for building a decoding state); causal
        outputs at real positions never see right padding anyway.
        """
        B, L, C = x.shape
        q, k, v = self._qkv(x, cos, sin)
        q_feat = favor_features(q, self.projection, is_query=True)  # (B, H, L, M)
        k_feat, k_log_scale = favor_features(k, self.projection, is_query=False)  # (B, H, L, M), (B, H, L)
        att = causal_linear_attention(q_feat, k_feat, v, k_log_scale)  # (B, H, L, Dh)
        h = x + self.out(att.transpose(1, 2).reshape(B, L, C))
        if key_mask is not None:
            k_log_scale = k_log_scale.masked_fill(~key_mask[:, None, :], -math.inf)
        return self._mlp(h), (k_feat, k_log_scale, v)

    def step(self, x, cos, sin, state: FavorState) -> tuple[torch.Tensor, FavorState]:
        """One token per sequence: ``x: Tensor[N, C]``; returns a *new* state (the input is not modified)."""
        N, C = x.shape
        q, k, v = self._qkv(x.unsqueeze(1), cos, sin)  # (N, H, 1, Dh)
        q_feat = favor_features(q[:, :, 0], self.projection, is_query=True).float()  # (N, H, M)
        k_feat, ls = favor_features(k[:, :, 0], self.projection, is_query=False)
        new_top = torch.maximum(state.log_scale, ls.float())  # (N, H)
        rescale = torch.exp(state.log_scale - new_top).nan_to_num(0.0)  # empty state: -inf - -inf
        w = torch.exp(ls.float() - new_top).unsqueeze(-1) * k_feat.float()  # (N, H, M)
        S = torch.addcmul(state.S * rescale[..., None, None], w.unsqueeze(-1), v[:, :, 0].float().unsqueeze(-2))
        z = state.z * rescale.unsqueeze(-1) + w
        num = (q_feat.unsqueeze(-2) @ S).squeeze(-2)  # (N, H, Dh)
        den = (q_feat * z).sum(-1, keepdim=True).clamp_min(torch.finfo(num.dtype).tiny)
        att = (num / den).to(x.dtype).reshape(N, C)
        h = x + self.out(att)
        return self._mlp(h), FavorState(S, z, new_top)


@dataclass
class PerformerState:
    """Decoding state of ``N`` sequences: one :class:`~llmppl.ops.FavorState` per layer,
    the next position of each sequence and the last hidden state's log-probabilities.

    :ivar list layers: per-layer ``FavorState`` (S ``[N, H, M, Dh]``, z ``[N, H, M]``, log_scale ``[N, H]``).
    :ivar Tensor positions: ``LongTensor[N]``, the position the next token will take.
    :ivar Tensor logprobs: ``Tensor[N, vocab]``, log-softmax of the next token.

    >>> lm = PerformerLM(PerformerConfig.tiny())
    >>> st = lm.prefill([[256, 65], [256]])
    >>> st.select(torch.tensor([1, 1, 0])).positions.tolist()
    [1, 1, 2]
    """

    layers: list
    positions: torch.Tensor
    logprobs: torch.Tensor

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def select(self, index: torch.Tensor) -> PerformerState:
        """The states of sequences ``index`` (copies; for resampling and forking)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.positions.device)
        return PerformerState(
            [s.select(index) for s in self.layers],
            self.positions.index_select(0, index),
            self.logprobs.index_select(0, index),
        )

    def nbytes_per_sequence(self) -> int:
        """Bytes of attention state per sequence (constant in the context length)."""
        return sum(s.nbytes() for s in self.layers) // max(len(self), 1)


class PerformerLM(nn.Module, LanguageModel):
    """The Performer language model: network, token tier of ``LanguageModel``, checkpoints.

    :param PerformerConfig config: hyper-parameters (default: the shipped size).

    >>> lm = PerformerLM(PerformerConfig.tiny())
    >>> ids = torch.tensor([[256, 81, 58]])
    >>> lm(ids).shape  # logits
    torch.Size([1, 3, 259])
    """

    #: fixed-size states join cheaply: keep up to this many sampled sequences' states so a
    #: cascade's next prompt resumes from them (about 0.2 MB a row at the shipped size)
    continuation_cache_rows = 1024

    def __init__(self, config: PerformerConfig | None = None):
        nn.Module.__init__(self)
        self.config = config = config if config is not None else PerformerConfig()
        self.tokenizer = ByteTokenizer()
        g = torch.Generator().manual_seed(config.projection_seed)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(PerformerBlock(config, generator=g) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.apply(self._init_weights)
        for blk in self.blocks:  # scaled residual projections (GPT-2)
            for lin in (blk.out, blk.fc2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        """Trainable parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def banned_token_ids(self) -> list[int]:
        """BOS, PAD and every output row past the ByteTokenizer's ids (``vocab_size > 259``).

        >>> PerformerLM(PerformerConfig.tiny(vocab_size=261)).banned_token_ids()
        [256, 258, 259, 260]
        """
        return [*super().banned_token_ids(), *range(self.tokenizer.vocab_size, self.config.vocab_size)]

    # ------------------------------------------------------------------ network

    def _check_ids(self, ids: torch.Tensor, name: str = "ids") -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
            raise ValueError(f"PerformerLM: expected {name} in [0, {self.config.vocab_size}), got {bad[:5].tolist()}")

    def _logits(self, h):
        return F.linear(self.norm(h), self.embed.weight)  # tied head

    def forward(self, ids: torch.Tensor, *, key_mask: torch.Tensor | None = None, return_states: bool = False):
        """Logits of every next token: ``ids: LongTensor[B, L]`` -> ``Tensor[B, L, vocab]``.

        With ``return_states`` also returns per-layer ``(k_feat, k_log_scale, v)`` for
        building a decoding state (padding keys masked by ``key_mask``).
        """
        if not isinstance(ids, torch.Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise TypeError(
                f"PerformerLM.forward: expected ids as a LongTensor[B, L], got {getattr(ids, 'dtype', type(ids))}"
            )
        self._check_ids(ids)
        cos, sin = rotary_tables(
            torch.arange(ids.shape[1], device=ids.device), self.config.head_dim, self.config.rotary_base
        )
        x = self.embed(ids)  # (B, L, C)
        states = []
        for blk in self.blocks:
            x, kv = blk(x, cos, sin, key_mask)
            states.append(kv)
        logits = self._logits(x)
        return (logits, states) if return_states else logits

    def loss(self, ids: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy over positions where ``loss_mask[:, 1:]`` holds.

        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> lm.loss(torch.tensor([[256, 65, 66, 257]])).item() > 0
        True
        """
        logits = self(ids[:, :-1])
        target = ids[:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none")
        if loss_mask is None:
            return ce.mean()
        m = loss_mask[:, 1:].reshape(-1).float()
        return (ce * m).sum() / m.sum().clamp_min(1.0)

    # ------------------------------------------------------------------ LanguageModel token tier

    def encode_prompt(self, text: str) -> list[int]:
        """``[BOS] + bytes(text)``: the empty prompt decodes from ``BOS``. A prompt joined
        from sampled pieces that split a UTF-8 character is the bytes that were sampled.

        >>> PerformerLM(PerformerConfig.tiny()).encode_prompt("hi")
        [256, 104, 105]
        """
        return [self.tokenizer.bos_id, *self.tokenizer.encode(text, strict=False)]

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> PerformerState:
        """Run prompts of any (positive) lengths in one batched call; one state per prompt.

        :param list prompts: token lists (``encode_prompt`` adds ``BOS``); each non-empty.
        :returns: :class:`PerformerState`.

        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> len(lm.prefill([[256], [256, 1, 2, 3]]))
        2
        """
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"PerformerLM.prefill: expected a non-empty list of token lists, got {prompts!r:.80}")
        lengths = [len(p) for p in prompts]
        if min(lengths) < 1:
            raise ValueError(
                "PerformerLM.prefill: expected every prompt to hold at least one token (BOS), got an empty one"
            )
        device = self.embed.weight.device
        L = max(lengths)
        ids = torch.full((len(prompts), L), self.tokenizer.pad_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            try:  # operator.index: a float id (1.5) is an error, not truncated to 1
                ids[i, : len(p)] = torch.tensor([operator.index(t) for t in p], dtype=torch.long)
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"PerformerLM.prefill: expected prompts[{i}] to be a list of ints ({err})") from None
        self._check_ids(ids, "prompt token ids")
        ids = ids.to(device)
        lengths_t = torch.tensor(lengths, device=device)
        key_mask = torch.arange(L, device=device).unsqueeze(0) < lengths_t.unsqueeze(1)  # (N, L)
        logits, kv = self(ids, key_mask=key_mask, return_states=True)
        layers = [FavorState.from_sequence(kf, ls, v) for kf, ls, v in kv]
        last = logits[torch.arange(len(prompts), device=device), lengths_t - 1]  # (N, vocab)
        return PerformerState(layers, lengths_t.long(), torch.log_softmax(last.float(), -1))

    def next_logprobs(self, state: PerformerState) -> torch.Tensor:
        """``Tensor[N, vocab]`` float32 log-softmax of each sequence's next token.

        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> lm.next_logprobs(lm.prefill([[256]])).exp().sum().round().item()
        1.0
        """
        return state.logprobs

    @torch.no_grad()
    def advance(self, state: PerformerState, tokens: torch.Tensor) -> PerformerState:
        """Append one token per sequence (``tokens: LongTensor[N]``); returns a new state.

        One batched step whatever the sequences' lengths; cost independent of the context
        length. ``state`` itself is left unchanged.

        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> st = lm.advance(lm.prefill([[256], [256, 7]]), torch.tensor([65, 66]))
        >>> st.positions.tolist()
        [2, 3]
        """
        tokens = torch.as_tensor(tokens, device=state.positions.device)
        if tokens.dim() != 1 or tokens.shape[0] != len(state) or tokens.dtype != torch.long:
            raise ValueError(
                f"PerformerLM.advance: expected tokens as a LongTensor[{len(state)}], "
                f"got {tuple(tokens.shape)} {tokens.dtype}"
            )
        self._check_ids(tokens, "tokens")
        cos, sin = rotary_tables(state.positions, self.config.head_dim, self.config.rotary_base)  # (N, Dh/2)
        cos, sin = cos[:, None, None, :], sin[:, None, None, :]  # broadcast over (N, H, 1, Dh/2)
        x = self.embed(tokens)  # (N, C)
        layers = []
        for blk, st in zip(self.blocks, state.layers, strict=True):
            x, st = blk.step(x, cos, sin, st)
            layers.append(st)
        logprobs = torch.log_softmax(self._logits(x).float(), -1)
        return PerformerState(layers, state.positions + 1, logprobs)

    # ------------------------------------------------------------------ convenience

    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[str],
        *,
        max_tokens: int = 64,
        stop: str | list[str] | None = "\n",
        greedy: bool = True,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        """Greedy (default) or sampled continuations of one prompt or a batch, stopping at
        ``stop`` (a string or a list of them; excluded), EOS or ``max_tokens``.

        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> isinstance(lm.generate("Q: 1+1\\nA:", max_tokens=3), str)
        True
        >>> lm.generate(["Q: 1+1\\nA:"], max_tokens=3, stop=[" A:", "\\n"])[0].endswith(" A:")
        False
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"PerformerLM.generate: expected max_tokens >= 1, got {max_tokens!r}")
        if temperature <= 0:
            raise ValueError(f"PerformerLM.generate: expected temperature > 0, got {temperature!r}")
        state = self.prefill([self.encode_prompt(p) for p in prompts])
        out = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool)
        # longest first: of two stops ending at the same byte, the longer one starts earlier
        stops_b = sorted(
            (t.encode("utf-8", "surrogateescape") for t in normalize_stop(stop, where="generate: stop")),
            key=len,
            reverse=True,
        )
        for _ in range(max_tokens):
            lp = self.step_logprobs(state)  # BOS and PAD never generated
            if greedy:
                tok = lp.argmax(-1)
            else:
                tok = torch.multinomial(torch.softmax(lp / temperature, -1), 1, generator=generator).squeeze(-1)
            for i, t in enumerate(tok.tolist()):
                if done[i]:
                    continue
                if t >= 256:
                    done[i] = True
                    continue
                out[i].append(t)
                for stop_b in stops_b:
                    if bytes(out[i][-len(stop_b) :]) == stop_b:
                        del out[i][-len(stop_b) :]
                        done[i] = True
                        break
            if bool(done.all()):
                break
            tok = torch.where(tok >= 256, torch.zeros_like(tok), tok)  # finished rows: any token
            state = self.advance(state, tok)
        texts = [self.tokenizer.decode(o) for o in out]
        return texts[0] if single else texts

    @torch.no_grad()
    def score_text(self, prompt: str, continuation: str) -> float:
        """Log-probability of the bytes of ``continuation`` after ``prompt`` (no stop, no EOS).

        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> lm.score_text("a", "b") < 0
        True
        """
        ids = self.encode_prompt(prompt)
        cont = self.tokenizer.encode(continuation)
        device = self.embed.weight.device
        logits = self(torch.tensor([ids + cont], dtype=torch.long, device=device))[0, len(ids) - 1 : -1]
        lp = torch.log_softmax(logits.float(), -1)
        return float(lp[torch.arange(len(cont), device=device), torch.tensor(cont, device=device)].sum())

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, directory: str | os.PathLike, *, extra: dict | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (the tied head stored once).

        >>> import tempfile
        >>> lm = PerformerLM(PerformerConfig.tiny())
        >>> with tempfile.TemporaryDirectory() as d:
        ...     lm.save_pretrained(d)
        ...     PerformerLM.from_pretrained(d).config == lm.config
        True
        """
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": "pt"}
        save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata=meta)
        payload = {"model_type": "llmppl-performer", "config": self.config.to_dict(), **(extra or {})}
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> PerformerLM:
        """Load a checkpoint written by :meth:`save_pretrained`, checking every tensor.

        Raises :class:`CheckpointError` naming the tensor when a shape, name or dtype does
        not match the config, or when a tensor holds NaN or infinity.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     PerformerLM(PerformerConfig.tiny()).save_pretrained(d)
        ...     PerformerLM.from_pretrained(d).config.d_model
        32
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        cfg_path = os.path.join(directory, CONFIG_NAME)
        w_path = os.path.join(directory, WEIGHTS_NAME)
        for p in (cfg_path, w_path):
            if not os.path.exists(p):
                raise FileNotFoundError(f"PerformerLM.from_pretrained: expected {p} to exist")
        with open(cfg_path) as f:
            try:
                payload = json.load(f)
            except json.JSONDecodeError as err:
                raise CheckpointError(f"PerformerLM.from_pretrained: expected JSON in {cfg_path} ({err})") from None
        if not isinstance(payload, dict) or payload.get("model_type") != "llmppl-performer" or "config" not in payload:
            got = payload.get("model_type") if isinstance(payload, dict) else type(payload).__name__
            raise CheckpointError(
                f"PerformerLM.from_pretrained: expected {cfg_path} with model_type 'llmppl-performer' and a 'config', "
                f"got model_type={got!r}"
            )
        try:
            config = PerformerConfig.from_dict(payload["config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"PerformerLM.from_pretrained: bad config in {cfg_path}: {err}") from None
        model = cls(config)
        try:
            tensors = load_file(w_path, device=str(map_location))
        except SafetensorError as err:
            raise CheckpointError(f"PerformerLM.from_pretrained: expected safetensors at {w_path} ({err})") from None
        expected = model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"PerformerLM.from_pretrained: tensors do not match the config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        for name, want in expected.items():
            got = tensors[name]
            if got.shape != want.shape:
                raise CheckpointError(
                    f"PerformerLM.from_pretrained: tensor {name!r} has shape {tuple(got.shape)}, "
                    f"expected {tuple(want.shape)} from the config"
                )
            if not got.is_floating_point():
                raise CheckpointError(
                    f"PerformerLM.from_pretrained: tensor {name!r} expected floating, got {got.dtype}"
                )
            # checked after the cast: a float64 1e300 is finite but becomes inf in float32
            tensors[name] = got = got.to(want.dtype)
            if not bool(torch.isfinite(got).all()):
                raise CheckpointError(
                    f"PerformerLM.from_pretrained: tensor {name!r} holds NaN or infinity (as {want.dtype}); "
                    "refusing to load"
                )
        model.load_state_dict(tensors)
        model.eval()
        return model
