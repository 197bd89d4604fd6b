r"""A language model behind an OpenAI-compatible completions server (vLLM, llama.cpp, TGI).

:class:`OpenAICompatibleLM` implements only the **sequence tier** of
:class:`~llmppl.models.base.LanguageModel`: ``sample`` and ``score`` become HTTP requests
to ``/v1/completions``, many in flight at once (``max_concurrency``), so the inference
engine's batch over particles becomes concurrent requests. Token-level use (``prefill``,
``next_logprobs``, ``advance``, ``NextToken``, ``LM(..., potential=...)``) raises
``NotImplementedError`` saying that it needs a local model.

What is exact. ``score(prompt, value)`` is the log-probability that the server's sampler
returns ``value``: the sum over the paths that end it (end-of-sequence, each stop string,
the length limit), each path scored through the server's own tokenization of
``prompt + value + ending`` (``echo`` with ``logprobs``), so it is exact for the token
paths it scores, like the canonical tokenization of :class:`~llmppl.models.hf.HFCausalLM`.
Servers report the log-probabilities of the *untempered* model, so only
``temperature=1.0`` and ``top_k=None`` are exact; other settings raise ``ValueError``.
Sampling is sent with every other truncation switched off (``top_p=1``, ``top_k=0``,
``min_p=0``, no repetition penalties) and a seed per request drawn from the caller's
``torch.Generator``.

Servers differ in how they align echoed prompt log-probs. The first ``score`` probes
the server with a known case (a next token whose log-prob generation reports, then the
echo of prompt + token) and reads each token's log-prob from its own row (``"aligned"``:
the OpenAI semantics; vLLM) or from the previous row's ``top_logprobs`` (``"shifted"``:
llama-cpp-python 0.3.x when the prompt does not start with the model's BOS token, where
the row of token *i* holds the distribution of token *i + 1*). llama-cpp-python aligns
prompts that start with BOS, so prompts whose first echoed row is not their start (a
stripped BOS) are probed as a class of their own. A shifted server names special tokens
(end-of-sequence) ``''`` in ``top_logprobs``, so their log-probs cannot be read: that, a
server that matches neither reading, or a token missing from the alternatives, is a
:class:`RemoteModelError` naming the server and the missing feature, never a guess. With
SmolLM2 on llama-cpp-python, chat-formatted prompts (``"<|im_start|>user\n..."``) are
aligned and exact.

Every request is retried with exponential backoff on connection errors, timeouts, 429
and 5xx answers; when the retries run out, :class:`RemoteModelError` names the URL and
the last status. No request is dropped. A host name that does not resolve and a TLS
certificate that fails verification are not retried. ``timeout`` bounds each whole
request (connecting, sending, and reading the answer), however slowly a server trickles
it. An answer that is not the OpenAI completions layout is a :class:`RemoteModelError`
naming the URL. When one of several concurrent requests fails for good, its error is
raised at once: the others are abandoned (each ends within its own ``timeout``, and none
is retried or started).

>>> lm = OpenAICompatibleLM("http://127.0.0.1:8080/v1", "smollm2", eos_token="<|im_end|>")
>>> lm
OpenAICompatibleLM('http://127.0.0.1:8080', model='smollm2', max_concurrency=8)
>>> lm.prefill([[1, 2]])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
NotImplementedError: OpenAICompatibleLM.prefill: ... needs a local model such as PerformerLM or HFCausalLM
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import math
import socket
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import torch

from .base import Completion, LanguageModel, _check_prompts, check_decoding_args, find_stop, normalize_stop

__all__ = ["OpenAICompatibleLM", "RemoteModelError"]

_NEG_INF = float("-inf")
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: sent with every sampling request: the server samples from the model's full distribution
_PLAIN_SAMPLING = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
_PROBE_PROMPTS = ("The capital of France is", "1, 2, 3, 4, 5,", "Monday, Tuesday,")
#: the most seconds one socket operation is set to wait (a huge timeout overflows the platform's clock)
_MAX_SOCKET_TIMEOUT = 1e6
#: what an answer must look like, for errors about one that does not
_ANSWER_LAYOUT = (
    "{'choices': [{'text': str, 'finish_reason': str, 'logprobs': {'tokens': [str, ...], "
    "'token_logprobs': [number or null, ...], 'top_logprobs': [{str: number} or null, ...]}}, ...]}"
)


class RemoteModelError(RuntimeError):
    """A server request failed for good, or the server cannot give an exact answer.

    >>> str(RemoteModelError("POST http://127.0.0.1:9/v1/completions: HTTP 503"))
    'POST http://127.0.0.1:9/v1/completions: HTTP 503'
    """


def _reads_answers(method):
    """Make a method that reads server answers raise :class:`RemoteModelError` for one it cannot read.

    Any ``AttributeError``, ``IndexError``, ``KeyError``, ``TypeError`` or ``ValueError``
    raised after an answer came back (a choice that is not an object, tokens that are not
    strings, a null log-prob where a number belongs) becomes one error naming the URL, the
    layout expected and the answer got; errors before any answer pass unchanged.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        local = self._local
        outer = getattr(local, "answer", None)  # a caller's answer, restored for its own errors
        local.answer = None
        try:
            return method(self, *args, **kwargs)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            if local.answer is None:  # no answer read: not the server's doing
                raise
            raise RemoteModelError(
                f"POST {self.completions_url}: expected an OpenAI completions answer, got one that cannot be read "
                f"({type(err).__name__}: {err}): {local.answer!r:.300}; the layout expected: {_ANSWER_LAYOUT}"
            ) from err
        finally:
            local.answer = outer

    return wrapper


def _time_left(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"timed out: the whole request took longer than the timeout of {timeout:g} s")
    return min(left, _MAX_SOCKET_TIMEOUT)


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side (``raw``, from ``sock.makefile``) where every read waits only
    until the request's deadline."""

    def __init__(self, raw, sock, deadline: float, timeout: float):
        self._raw, self._sock, self._deadline, self._timeout = raw, sock, deadline, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        self._sock.settimeout(_time_left(self._deadline, self._timeout))
        try:
            return self._raw.readinto(buf)
        except TimeoutError:
            raise TimeoutError(
                f"timed out: the whole request took longer than the timeout of {self._timeout:g} s"
            ) from None

    def close(self) -> None:
        self._raw.close()  # lets the socket close for good
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response whose status line, headers and body must all arrive before one deadline."""

    def __init__(self, sock, *args, deadline: float, timeout: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        # the socket's own reader, unbuffered: each read of it alone would wait a whole timeout afresh
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline, timeout))


class OpenAICompatibleLM(LanguageModel):
    """A model served behind the OpenAI completions API, as a sequence-tier :class:`LanguageModel`.

    :param str base_url: the server, e.g. ``"http://127.0.0.1:8000/v1"`` (a trailing ``/v1``
        is optional).
    :param str model: the model name the server knows it by (``"model"`` in requests).
    :param api_key: sent as ``Authorization: Bearer ...`` when given.
    :param float timeout: seconds allowed for one whole request (connecting, sending, and
        reading the whole answer), each retry having its own; a finite number > 0.
    :param int max_concurrency: the most requests in flight at once.
    :param int max_retries: retries of one request after a connection error, timeout, 429 or 5xx.
    :param float backoff: seconds before the first retry; doubled for each further one.
    :param eos_token: the text of the model's end-of-generation token, or a list of them
        where the server stops at several (llama.cpp stops SmolLM2 at ``"<|im_end|>"`` and
        ``"<|endoftext|>"``); the server must parse each as that token in a prompt. Needed to
        score values that can end at end-of-sequence: all but those of exactly ``max_tokens``
        tokens.
    :param int top_logprobs: how many alternatives a ``"shifted"`` server is asked for per
        row (raised, up to ``max_top_logprobs``, when a token is not among them).
    :param dict extra_body: more fields for every completions request (e.g. a vLLM
        ``{"top_k": -1}`` for an older vLLM); they override the defaults.
    :param int score_cache_size: how many scored (prompt, value, ``max_tokens``, ``stop``)
        log-probabilities are remembered (least recently used dropped first; ``0``: none).
        A server does not reproduce its own log-probs bit for bit: llama.cpp's depend on
        how much of the prompt it still holds from the request before (on one CI machine
        a 3-token value scored -19.79 after one request and -19.82 after another). The
        memo makes a string's score one number for the life of this object, so a sampled
        value's ``log_prob`` and every later :meth:`score` of it agree exactly, and a
        repeated score costs no request. :meth:`clear_score_cache` forgets them (after the
        server loads other weights).

    >>> lm = OpenAICompatibleLM("http://127.0.0.1:8000", "m", max_concurrency=2)
    >>> lm.completions_url, lm.tokenizer is None
    ('http://127.0.0.1:8000/v1/completions', True)
    >>> lm.score("Q:", [" a"], temperature=0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: OpenAICompatibleLM.score: temperature: ... only 1.0 is exact, got 0.5; ... with a local model
    """

    tokenizer = None  # no token tier

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_concurrency: int = 8,
        max_retries: int = 5,
        backoff: float = 0.25,
        eos_token: str | None = None,
        top_logprobs: int = 20,
        max_top_logprobs: int = 1000,
        extra_body: dict | None = None,
        score_cache_size: int = 4096,
    ):
        if not isinstance(base_url, str):
            raise TypeError(f"base_url: expected a str like 'http://127.0.0.1:8000/v1', got {type(base_url).__name__}")
        parts = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url: expected an http(s) URL like 'http://127.0.0.1:8000/v1', got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise TypeError(f"model: expected the served model's name as a non-empty str, got {model!r}")
        for name, value in (("max_concurrency", max_concurrency), ("top_logprobs", top_logprobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if isinstance(score_cache_size, bool) or not isinstance(score_cache_size, int) or score_cache_size < 0:
            raise ValueError(f"score_cache_size: expected an int >= 0 (0: no memo), got {score_cache_size!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries: expected an int >= 0, got {max_retries!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout: expected a finite number > 0 (seconds for one whole request), got {timeout!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff < math.inf:
            raise ValueError(f"backoff: expected a finite number >= 0 (seconds), got {backoff!r}")
        eos_tokens = normalize_stop(eos_token, where="eos_token")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise TypeError(f"extra_body: expected None or a dict, got {type(extra_body).__name__}")
        path = parts.path[:-3] if parts.path.endswith("/v1") else parts.path
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.root = f"{parts.scheme}://{parts.netloc}{path}"
        self.path_prefix = path
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.eos_tokens = eos_tokens
        self.top_logprobs = top_logprobs
        self.max_top_logprobs = max(top_logprobs, int(max_top_logprobs))
        self.extra_body = dict(extra_body or {})
        # "aligned"/"shifted" per class of prompt (see _alignment_for), probed on first use
        self.alignments: dict[str, str] = {}
        self.num_requests = 0  # successful requests, for benchmarks
        self._lock = threading.Lock()
        # per thread: the answer being read (for errors about it) and the abort event of the _map batch
        self._local = threading.local()
        self.score_cache_size = score_cache_size
        self._scores: OrderedDict[tuple, float] = OrderedDict()  # see score_cache_size

    def clear_score_cache(self) -> None:
        """Forget every remembered score (see ``score_cache_size``).

        >>> lm = OpenAICompatibleLM("http://127.0.0.1:8000", "m")
        >>> lm.clear_score_cache(); len(lm._scores)
        0
        """
        with self._lock:
            self._scores.clear()

    def __repr__(self) -> str:
        return f"OpenAICompatibleLM({self.root!r}, model={self.model!r}, max_concurrency={self.max_concurrency})"

    @property
    def completions_url(self) -> str:
        """The URL every sampling and scoring request goes to."""
        return self.root + "/v1/completions"

    # ---------------------------------------------------------------- transport

    def _send(self, path: str, body: bytes) -> tuple[int, bytes, str | None]:
        # one connection per request, closed here: no socket outlives its request
        headers = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "close"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        # one deadline for the whole request: every socket operation waits only for the time left
        deadline = time.monotonic() + self.timeout
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=min(self.timeout, _MAX_SOCKET_TIMEOUT))
        conn.response_class = functools.partial(_DeadlineResponse, deadline=deadline, timeout=self.timeout)
        try:
            conn.connect()
            conn.sock.settimeout(_time_left(deadline, self.timeout))
            conn.request("POST", self.path_prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Retry-After")
        finally:
            conn.close()

    def _post(self, path: str, payload: dict) -> dict:
        """POST ``payload`` as JSON; retry connection errors, timeouts, 429 and 5xx with backoff."""
        url = self.root + path
        body = json.dumps(payload).encode()
        abort = getattr(self._local, "abort", None)  # set when another request of this _map batch failed
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self._delay(attempt, last)
                if abort is not None:
                    abort.wait(delay)
                else:
                    time.sleep(delay)
            if abort is not None and abort.is_set():
                raise RemoteModelError(f"POST {url}: not sent: another request of the same batch failed")
            try:
                status, data, retry_after = self._send(path, body)
            except (ssl.SSLCertVerificationError, socket.gaierror) as err:  # retrying cannot help
                if isinstance(err, socket.gaierror):
                    what, expected = "the host name does not resolve", f"a host name that resolves, got {self.host!r}"
                else:
                    what, expected = "the server's TLS certificate failed verification", "one this machine trusts"
                raise RemoteModelError(
                    f"POST {url}: {what} ({type(err).__name__}: {err}); expected {expected}; not retried"
                ) from err
            except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, closed early
                last = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            if status == 200:
                try:
                    out = json.loads(data)
                except ValueError:
                    raise RemoteModelError(
                        f"POST {url}: expected a JSON answer, got {data[:200]!r} (is this an OpenAI-compatible server?)"
                    ) from None
                with self._lock:
                    self.num_requests += 1
                return out
            text = data[:300].decode("utf-8", "replace")
            if status in _RETRY_STATUS:
                last = f"HTTP {status}: {text}" + (f" (Retry-After: {retry_after})" if retry_after else "")
                continue
            raise RemoteModelError(f"POST {url}: the server answered HTTP {status}: {text}")
        raise RemoteModelError(
            f"POST {url}: gave up after {self.max_retries + 1} attempts "
            f"(timeout {self.timeout:g} s each, backoff from {self.backoff:g} s); last error: {last}"
        )

    def _delay(self, attempt: int, last: str) -> float:
        delay = self.backoff * 2 ** (attempt - 1)
        if "Retry-After: " in last:  # honour the server's hint, within reason
            try:
                delay = max(delay, min(float(last.rsplit("Retry-After: ", 1)[1].rstrip(")")), 30.0))
            except ValueError:
                pass
        return delay

    def _map(self, fn: Callable, jobs: Sequence) -> list:
        """``[fn(j) for j in jobs]`` with at most ``max_concurrency`` in flight.

        The first job to fail has its error raised at once, without waiting for the others:
        those not started are cancelled, and those running send no further request (each
        ends within its request's ``timeout``).

        >>> OpenAICompatibleLM("http://127.0.0.1:8000", "m")._map(lambda j: 2 * j, [3, 1, 2])
        [6, 2, 4]
        """
        if len(jobs) <= 1 or self.max_concurrency == 1:
            return [fn(j) for j in jobs]
        abort = threading.Event()

        def run(job):
            outer = getattr(self._local, "abort", None)
            self._local.abort = abort  # read by _post in this thread
            try:
                return fn(job)
            finally:
                self._local.abort = outer

        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs)))
        ok = False
        try:
            futures = [pool.submit(run, j) for j in jobs]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:  # the failed one first in job order, among those finished
                if f in done and f.exception() is not None:
                    f.result()
            out = [f.result() for f in futures]  # all finished, none failed
            ok = True
            return out
        finally:
            if not ok:
                abort.set()
            pool.shutdown(wait=ok, cancel_futures=not ok)

    def _complete(self, payload: dict) -> dict:
        body = {"model": self.model, **payload}
        out = self._post("/v1/completions", body)
        self._local.answer = out  # for _reads_answers' errors
        choices = out.get("choices") if isinstance(out, dict) else None
        if not isinstance(choices, list) or not choices:
            raise RemoteModelError(f"POST {self.completions_url}: expected 'choices' in the answer, got {out!r:.300}")
        return out

    # ---------------------------------------------------------------- checks

    def _check_exact(self, temperature, top_k, where: str) -> None:
        if temperature != 1.0:
            raise ValueError(
                f"OpenAICompatibleLM.{where}: temperature: the server reports untempered log-probabilities, "
                f"so only 1.0 is exact, got {temperature}; sample tempered strings with a local model"
            )
        if top_k is not None:
            raise ValueError(
                f"OpenAICompatibleLM.{where}: top_k: the server reports untruncated log-probabilities, "
                f"so only None is exact, got {top_k}; sample truncated strings with a local model"
            )

    # ---------------------------------------------------------------- sequence tier

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
        """One completion per prompt, as concurrent ``/v1/completions`` requests.

        Repeats of a prompt are asked for together with ``n`` (a server that returns fewer
        choices, like llama-cpp-python, is asked again for the rest). Each request carries a
        seed drawn from ``generator`` (or torch's global RNG). Every completion's ``log_prob``
        is :meth:`score` of its text, computed in one more batch of requests; ``tokens`` is
        empty (the server returns strings), and ``finish_reason`` is ``"length"`` or
        ``"stop"`` (which covers end-of-sequence: servers do not tell them apart).

        :returns: a list of :class:`~llmppl.models.base.Completion`.

        >>> OpenAICompatibleLM("http://127.0.0.1:8000", "m").sample([])
        []
        """
        prompts = _check_prompts(prompts)
        check_decoding_args(max_tokens, temperature, top_k, where="sample")
        stops = normalize_stop(stop)
        self._check_exact(temperature, top_k, "sample")
        n = len(prompts)
        if n == 0:
            return []
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
        slots: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            slots.setdefault(p, []).append(i)
        results: list[tuple[str, str] | None] = [None] * n
        pending = [(p, idx, seeds[idx[0]]) for p, idx in slots.items()]
        extra_seed = 0
        while pending:
            answers = self._map(lambda job: self._sample_one(job[0], len(job[1]), job[2], max_tokens, stops), pending)
            retry = []
            for (p, idx, _), got in zip(pending, answers, strict=True):
                for i, value in zip(idx, got, strict=False):
                    results[i] = value
                if len(got) < len(idx):
                    # the server ignored n (llama-cpp-python): one request per draw, concurrently
                    extra_seed += 1
                    retry.extend(([p, [i], (seeds[i] + 7919 * extra_seed) % (2**31 - 1)]) for i in idx[len(got) :])
            pending = retry
        texts = [r[0] for r in results]  # type: ignore[index]
        log_probs = self.score(prompts, texts, max_tokens=max_tokens, stop=stop).tolist()
        return [
            Completion(text, float(lp), [], reason)
            for (text, reason), lp in zip(results, log_probs, strict=True)  # type: ignore[misc]
        ]

    @_reads_answers
    def _sample_one(self, prompt: str, n: int, seed: int, max_tokens: int, stops: tuple[str, ...]):
        payload = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "n": n,
            "seed": seed,
            **_PLAIN_SAMPLING,
            **self.extra_body,
        }
        if stops:
            payload["stop"] = list(stops)
        out = self._complete(payload)
        got = []
        for choice in out["choices"][:n]:
            text = choice.get("text")
            if not isinstance(text, str):
                raise RemoteModelError(
                    f"POST {self.completions_url}: expected a text in each choice, got {choice!r:.300}"
                )
            reason = choice.get("finish_reason")
            cut = find_stop(text, stops) if stops else None
            if cut is not None:  # some servers cut at the first stop *listed*, not the earliest one
                text, reason = text[:cut], "stop"
            got.append((text, "length" if reason == "length" else "stop"))
        return got

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
        """Exact log-probabilities that the server's sampler returns each continuation.

        For each distinct (prompt, value), one ``echo`` request per way it can end: the
        value then ``eos_token``, and the value then each stop string that would end it
        there (a value containing a stop string is ``-inf``). A value of exactly
        ``max_tokens`` tokens ends by the length limit; one of more is ``-inf``. The
        prompt must end at a token boundary of ``prompt + value`` (no trailing space,
        for BPE models), since the server tokenizes the text it is sent. Scores are
        remembered (``score_cache_size``): asked again, a pair costs no request and gets
        the same number.

        :returns: ``Tensor[N]`` (default float dtype).

        >>> OpenAICompatibleLM("http://127.0.0.1:8000", "m").score("Q:", [], stop="\\n").shape
        torch.Size([0])
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
        self._check_exact(temperature, top_k, "score")
        out_dtype = torch.get_default_dtype()
        if not prompts:
            return torch.zeros(0, dtype=out_dtype)
        memo_key = (max_tokens, stops)
        unique = list(dict.fromkeys(zip(prompts, continuations, strict=True)))
        lps = {}
        with self._lock:
            for pv in unique:
                if (pv, memo_key) in self._scores:
                    self._scores.move_to_end((pv, memo_key))
                    lps[pv] = self._scores[(pv, memo_key)]
        items = [pv for pv in unique if pv not in lps]
        jobs = []  # (item index, prompt, value, kind, ending text)
        for k, (p, v) in enumerate(items):
            if stops and find_stop(v, stops) is not None:
                continue
            jobs.append((k, p, v, "eos", self.eos_tokens[0]) if self.eos_tokens else (k, p, v, "length", ""))
            jobs.extend((k, p, v, "stop", s) for s in stops if find_stop(v + s, stops) == len(v))
        per_item: list[dict[str, list]] = [{"eos": [], "length": [], "stop": []} for _ in items]
        for _ in range(2):  # the other end-of-sequence tokens only for values below the length limit
            paths = self._map(lambda job: self._score_path(*job[1:], stops, max_tokens), jobs)
            for (k, _, _, kind, _), got in zip(jobs, paths, strict=True):
                per_item[k][kind].append(got)
            jobs = [
                (k, p, v, "eos", e)
                for k, (p, v) in enumerate(items)
                if per_item[k]["eos"] and per_item[k]["eos"][0][0] < max_tokens
                for e in self.eos_tokens[1:]
            ]
        for (p, v), got in zip(items, per_item, strict=True):
            terms = [lp for n, lp in got["stop"] if n <= max_tokens]
            plain = got["eos"] or got["length"]  # (value tokens, value path log-prob, ending log-prob)
            if plain:
                n_value, path = plain[0][0], plain[0][1]
                if n_value == max_tokens:  # ends by the length limit
                    terms.append(path)
                elif n_value < max_tokens:
                    if not got["eos"]:
                        raise RemoteModelError(
                            f"OpenAICompatibleLM.score: eos_token: needed to score {v!r} (it can end at "
                            "end-of-sequence), got None; pass the model's end-of-sequence token text(s), e.g. "
                            "eos_token=['<|im_end|>', '<|endoftext|>']"
                        )
                    terms.append(path + _logsumexp([end for _, _, end in got["eos"]]))
            lps[(p, v)] = _logsumexp(terms)
        if self.score_cache_size:
            with self._lock:
                for pv in items:
                    self._scores[(pv, memo_key)] = lps[pv]
                while len(self._scores) > self.score_cache_size:
                    self._scores.popitem(last=False)
        return torch.tensor([lps[pv] for pv in zip(prompts, continuations, strict=True)], dtype=torch.float64).to(
            out_dtype
        )

    # ---------------------------------------------------------------- echo scoring

    def _echo(self, text: str, top: int, seed: int | None = None) -> tuple[dict, dict]:
        """Prompt log-probs of ``text`` (``tokens``, ``token_logprobs``, ``top_logprobs``) and the choice.

        The server also generates one token (greedy, or drawn with ``seed``); its row, if
        any, is told apart from the prompt's by :func:`_prompt_rows`.
        """
        settings = {"temperature": 0.0} if seed is None else {"temperature": 1.0, "seed": seed, **_PLAIN_SAMPLING}
        out = self._complete(
            {"prompt": text, "max_tokens": 1, "echo": True, "logprobs": top, **settings, **self.extra_body}
        )
        choice = out["choices"][0]
        lp = choice.get("logprobs")
        if not isinstance(lp, dict) or not all(isinstance(lp.get(k), list) for k in ("tokens", "token_logprobs")):
            raise RemoteModelError(
                f"POST {self.completions_url}: scoring needs prompt log-probs (echo=true with logprobs), "
                f"which this server does not return (got logprobs={lp!r:.200}); use a server that does (vLLM, "
                "llama-cpp-python with logits_all) or a local model"
            )
        return lp, {"choice": choice, "usage": out.get("usage") or {}, "text": text}

    @_reads_answers
    def _score_path(self, prompt: str, value: str, kind: str, ending: str, stops, max_tokens: int):
        """``kind`` "eos"/"length": (value tokens, value log-prob, ending log-prob); "stop": (tokens, log-prob)."""
        top, widened, seed = 1, False, None
        while True:
            lp, meta = self._echo(prompt + value + ending, top, seed)
            alignment = self._alignment_for(lp, meta, prompt)
            if alignment == "shifted" and not widened:  # the previous rows' alternatives are needed
                top, widened = self.top_logprobs, True
                if top > 1:
                    continue
            try:
                return self._read_path(lp, meta, alignment, prompt, value, kind, ending, stops, max_tokens)
            except _AmbiguousTail as err:
                # the generated token is invisible (EOS, BOS, ...): draw another one
                seed = 1 if seed is None else seed + 1
                if seed > 8:
                    raise RemoteModelError(f"POST {self.completions_url}: {err}, in 9 tries") from None
            except _NeedMoreAlternatives as err:
                if top >= self.max_top_logprobs:
                    raise RemoteModelError(
                        f"POST {self.completions_url}: scoring {value!r} after {_short(prompt)}: {err}, even among "
                        f"the top {top} alternatives; the server reports echoed log-probs shifted by one row, so "
                        "llmppl reads them from the previous row's top_logprobs. Raise max_top_logprobs, or use a "
                        "server whose echo log-probs are aligned (vLLM) or a local model"
                    ) from None
                top = min(self.max_top_logprobs, top * 10)

    def _read_path(self, lp, meta, alignment, prompt, value, kind, ending, stops, max_tokens):
        tokens = lp["tokens"]
        r2 = _prompt_rows(lp, meta, alignment)
        if kind == "eos":
            r1 = r2 - 1  # the end-of-sequence token is one row, whatever the server calls it
            if r1 < 0 or tokens[r1] not in ("", ending):
                raise RemoteModelError(
                    f"POST {self.completions_url}: expected eos_token {ending!r} to be one special token at the end "
                    f"of the echoed prompt, got the rows {tokens[max(0, r1 - 3) : r2]!r}; check eos_token"
                )
            r0 = self._value_start(tokens, r1, value, prompt)
            if r1 - r0 > max_tokens:  # impossible: no need to read anything
                return r1 - r0, _NEG_INF, _NEG_INF
            # the end-of-sequence row only counts below the length limit: read it only then
            end = self._row_logprob(lp, alignment, r1) if r1 - r0 < max_tokens else _NEG_INF
            return r1 - r0, self._sum_rows(lp, alignment, r0, r1), end
        text = value + ending
        r0 = self._value_start(tokens, r2, text, prompt)
        if r2 - r0 > max_tokens:
            return (r2 - r0, _NEG_INF) if kind == "stop" else (r2 - r0, _NEG_INF, 0.0)
        if kind == "length":
            return r2 - r0, self._sum_rows(lp, alignment, r0, r2), 0.0
        # a stop path: generation must first see a stop at its last token, cutting at the value
        so_far = ""
        for r in range(r0, r2 - 1):
            so_far += tokens[r]
            if find_stop(so_far, stops) is not None:
                return r2 - r0, _NEG_INF
        return r2 - r0, self._sum_rows(lp, alignment, r0, r2)

    def _value_start(self, tokens, r_end: int, text: str, prompt: str) -> int:
        """The row where ``text`` (ending at row ``r_end``) starts: walk back over the rows' strings."""
        r, got = r_end, 0
        while got < len(text) and r > 0:
            r -= 1
            got += len(tokens[r])
        if got != len(text) or "".join(tokens[r:r_end]) != text:
            raise RemoteModelError(
                f"POST {self.completions_url}: expected the echoed tokens to end with {text!r}, got "
                f"{''.join(tokens[r:r_end])!r}: the server tokenizes {_short(prompt + text)} across the end of the "
                f"prompt {_short(prompt)}, so the tokens it would generate after that prompt cannot be scored as "
                "text (the feature missing is token-id prompts); end the prompt at a token boundary (for BPE "
                "models: no trailing space)"
            )
        if r == 0:
            raise RemoteModelError(
                f"POST {self.completions_url}: the first echoed token has no log-prob; expected a prompt with "
                f"at least one token before the value, got {prompt!r}"
            )
        return r

    def _sum_rows(self, lp, alignment: str, r0: int, r2: int) -> float:
        return math.fsum(self._row_logprob(lp, alignment, r) for r in range(r0, r2))

    def _row_logprob(self, lp, alignment: str, r: int) -> float:
        """The log-prob of token ``r`` given the tokens before it, under the probed alignment."""
        if alignment == "aligned":
            value = lp["token_logprobs"][r]
            if not isinstance(value, (int, float)):
                raise RemoteModelError(f"POST {self.completions_url}: expected a number for token {r}, got {value!r}")
            return float(value)
        token = lp["tokens"][r]
        top = (lp.get("top_logprobs") or [None] * r)[r - 1]
        if not isinstance(top, dict):
            raise RemoteModelError(
                f"POST {self.completions_url}: the server reports echoed log-probs shifted by one row, so token {r} "
                f"is read from row {r - 1}'s top_logprobs, and it has none (the first row never has): expected a "
                "prompt of at least two tokens"
            )
        if token == "":
            raise RemoteModelError(
                f"POST {self.completions_url}: the server reports echoed log-probs shifted by one row and names "
                f"token {r} (a special token such as end-of-sequence) with the empty string, so its log-prob cannot "
                "be read from the previous row's top_logprobs, where every special token is ''. The feature "
                "missing is aligned echo log-probs; llama-cpp-python aligns them when the prompt starts with the "
                "model's BOS token (e.g. a chat-formatted prompt starting with '<|im_start|>' for SmolLM2), and "
                "vLLM always does"
            )
        if token not in top:
            raise _NeedMoreAlternatives(f"token {token!r} is not among the alternatives of the row before it")
        return float(top[token])

    # ---------------------------------------------------------------- the probe

    def _alignment_for(self, lp, meta, prompt: str) -> str:
        """The alignment of this echo's class of prompt, probed with ``prompt`` the first time."""
        tokens = lp["tokens"]
        # llama-cpp-python aligns the echo only when it strips a leading BOS, which then is not
        # among the rows: prompts whose first row is not their start form a class of their own
        key = "plain" if tokens and meta["text"].startswith(tokens[0]) else "special"
        with self._lock:
            found = self.alignments.get(key)
        if found is None:
            found = self.probe([prompt])
            with self._lock:
                found = self.alignments.setdefault(key, found)
        return found

    @property
    def alignment(self) -> str | None:
        """The probed alignment of plain prompts (``None`` before the first ``score``)."""
        return self.alignments.get("plain", next(iter(self.alignments.values()), None))

    @_reads_answers
    def probe(self, prompts: Sequence[str] = ()) -> str:
        """Find how the server aligns echoed prompt log-probs: ``"aligned"`` or ``"shifted"``.

        Asks for a next token after a prompt (``prompts``, then a few English ones; the
        greedy token, or a seeded draw where that is EOS), whose log-prob generation reports
        correctly on every server seen, then echoes prompt + token and checks which reading
        of the echo gives the same log-prob. ``RemoteModelError`` if neither does (both
        agreeing is no evidence: the next case is tried), or if an answer is not in the
        completions layout.
        """
        seen = []
        # the greedy token first; seeded draws where that is EOS
        attempts = [(p, seed) for p in [*prompts, *_PROBE_PROMPTS] for seed in (None, 1, 2, 3)]
        refused: set[str] = set()
        for prompt, seed in attempts:
            if prompt in refused:
                continue
            settings = {"temperature": 0.0} if seed is None else {"temperature": 1.0, "seed": seed, **_PLAIN_SAMPLING}
            try:
                out = self._complete({"prompt": prompt, "max_tokens": 1, "logprobs": 1, **settings, **self.extra_body})
            except RemoteModelError as err:
                seen.append(f"{prompt!r}: {err}")
                refused.add(prompt)
                continue
            choice = out["choices"][0]
            lp = choice.get("logprobs") or {}
            if choice.get("text") == "" and choice.get("finish_reason") == "stop":
                continue  # EOS: nothing to compare
            if not lp.get("tokens") or not lp.get("token_logprobs"):
                raise RemoteModelError(
                    f"POST {self.completions_url}: expected token log-probs with logprobs=1, got {lp!r:.200}; "
                    "the server must return log-probs (llama-cpp-python: start it with --logits_all true)"
                )
            token, reference = lp["tokens"][0], float(lp["token_logprobs"][0])
            if not token or choice.get("text", "") != token:
                continue  # a special token or a partial character: not a clean case
            for echo_seed in (None, 1, 2, 3):  # redraw an invisible generated token (see _prompt_rows)
                echo, meta = self._echo(prompt + token, 5, echo_seed)
                try:
                    r_own = _prompt_rows(echo, meta, "aligned") - 1
                    break
                except _AmbiguousTail:
                    r_own = -1
            rows = echo["tokens"]
            r_prev = _prompt_rows(echo, meta, "shifted") - 1
            own = echo["token_logprobs"][r_own] if 0 < r_own < len(rows) and rows[r_own] == token else None
            prev = None
            if 1 < r_prev < len(rows) and rows[r_prev] == token:
                prev = ((echo.get("top_logprobs") or [None] * r_prev)[r_prev - 1] or {}).get(token)
            tol = 0.02 + 0.01 * abs(reference)
            own_ok = isinstance(own, (int, float)) and abs(own - reference) < tol
            prev_ok = isinstance(prev, (int, float)) and abs(prev - reference) < tol
            seen.append(f"{prompt!r} -> {token!r}: generation {reference:.4f}, own row {own}, previous row {prev}")
            if own_ok and not prev_ok:
                return "aligned"
            if prev_ok and not own_ok:
                return "shifted"
        raise RemoteModelError(
            f"POST {self.completions_url}: could not tell how the server aligns echoed prompt log-probs with its "
            f"tokens ({'; '.join(seen) or 'no clean probe case'}); scoring needs prompt log-probs that match "
            "generation; use a server that has them (vLLM) or a local model"
        )


class _NeedMoreAlternatives(Exception):
    pass


class _AmbiguousTail(Exception):
    pass


def _prompt_rows(lp, meta, alignment: str) -> int:
    """How many rows of an echo belong to the prompt (the rest are the generated token's)."""
    n = len(lp["tokens"])
    if alignment == "shifted":
        return n  # llama-cpp-python pairs rows with logits, and the generated token has none
    completion_tokens = meta["usage"].get("completion_tokens")
    if completion_tokens == 0:
        return n
    generated = meta["choice"].get("text", "")[len(meta["text"]) :]
    if generated and n and lp["tokens"][-1] == generated:
        return n - 1
    # an invisible generated token may have a row (vLLM's EOS) or not (llama-cpp-python's
    # BOS, which it skips), and a visible one whose row is missing is no layout we know
    raise _AmbiguousTail(
        f"cannot tell the generated token's row ({generated!r}, completion_tokens={completion_tokens}) "
        f"from the prompt's last rows {lp['tokens'][-3:]!r}"
    )


def _logsumexp(terms: list[float]) -> float:
    if not terms:
        return _NEG_INF
    m = max(terms)
    if m == _NEG_INF:
        return _NEG_INF
    return m + math.log(math.fsum(math.exp(t - m) for t in terms))


def _short(text: str, width: int = 40) -> str:
    return repr(text) if len(text) <= width else repr(text[: width // 2] + "…" + text[-width // 2 :])
