"""OpenAICompatibleLM against real HTTP servers on 127.0.0.1 that serve ToyLM (no llama.cpp needed).

``ToyServer`` speaks the OpenAI completions API over a real socket: sampling with ``n``,
``seed``, ``stop`` and ``max_tokens``; ``echo`` with ``logprobs`` either aligned (the
OpenAI semantics) or shifted by one row the way llama-cpp-python shifts them; and it can
answer 429/5xx a few times, be slow, or count how many requests are in flight. Since
ToyLM's tokenizer is one token per character, ``score`` through the server must equal
``ToyLM.score`` exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyro
import pytest
import torch

import llmppl
from llmppl.distributions import LM
from llmppl.models import OpenAICompatibleLM, RemoteModelError, ToyLM
from llmppl.models.base import find_stop, normalize_stop

EOS_TEXT = "<eos>"


class ToyServer:
    """An OpenAI-compatible completions server for a ToyLM, in a thread on a free loopback port."""

    def __init__(
        self,
        lm: ToyLM,
        *,
        alignment="aligned",
        honor_n=True,
        failures=(),
        delay=0.0,
        eos_string=EOS_TEXT,
        invisible_greedy=False,
        jitter=0.0,
    ):
        self.lm = lm
        # every log-prob of the k-th request moves by jitter * (k % 3): a server that does not
        # reproduce its own numbers across requests (llama.cpp, by the prefix it still holds)
        self.jitter = jitter
        self.alignment = alignment  # "aligned", "shifted" or "garbled"
        self.honor_n = honor_n
        self.failures = list(failures)  # statuses answered, in order, before serving normally
        self.delay = delay
        self.eos_string = eos_string  # how a shifted server names EOS in its rows
        # a greedy echo "generates" a token that has neither text nor row (llama-cpp-python's BOS)
        self.invisible_greedy = invisible_greedy
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    status = server.failures.pop(0) if server.failures else 200
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    if status != 200:
                        out, code = {"error": f"injected {status}"}, status
                    elif self.path != "/v1/completions":
                        out, code = {"error": f"no route {self.path}"}, 404
                    else:
                        try:
                            out, code = server.complete(body), 200
                        except ValueError as err:
                            out, code = {"error": str(err)}, 400
                finally:
                    with server.lock:
                        server.in_flight -= 1
                reply(self, out, code)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---------------------------------------------------------------- the model

    def tokens_of(self, text: str) -> list[int]:
        tok = self.lm.tokenizer
        out = []
        for k, part in enumerate(text.split(EOS_TEXT)):
            if k:
                out.append(tok.eos_id)
            out.extend(tok.encode(part))
        return out

    def text_of(self, t: int) -> str:
        return EOS_TEXT if t == self.lm.tokenizer.eos_id else self.lm.tokenizer.decode([t])

    def dist(self, ids: list[int]) -> torch.Tensor:
        """Next-token log-probs after BOS + ids (the distribution the server samples from)."""
        lm = self.lm
        lp = lm.step_logprobs(lm.prefill([[lm.tokenizer.bos_id, *ids]]))[0].double()
        return lp + self.jitter * (len(self.requests) % 3)

    def top(self, lp: torch.Tensor, k: int) -> dict:
        vals, idx = lp.topk(min(k, lp.shape[0]))
        return {self.text_of(int(i)): float(v) for v, i in zip(vals, idx, strict=True) if v > -math.inf}

    def complete(self, body: dict) -> dict:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise ValueError("prompt: expected a string")
        ids = self.tokens_of(prompt)
        n = int(body.get("n", 1)) if self.honor_n else 1
        stops = normalize_stop(body.get("stop"))
        max_tokens = int(body.get("max_tokens", 16))
        greedy = float(body.get("temperature", 1.0)) == 0.0
        gen = torch.Generator().manual_seed(int(body.get("seed", 0)))
        choices = []
        for c in range(n):
            generated, reason, text = [], "length", ""
            for _ in range(max_tokens):
                lp = self.dist(ids + generated)
                t = int(lp.argmax()) if greedy else int(torch.multinomial(lp.exp(), 1, generator=gen))
                if t == self.lm.tokenizer.eos_id:
                    reason = "stop"
                    break
                generated.append(t)
                text = self.lm.tokenizer.decode(generated)
                cut = find_stop(text, stops)
                if cut is not None:
                    text, reason = text[:cut], "stop"
                    break
            choice = {"index": c, "text": (prompt if body.get("echo") else "") + text, "finish_reason": reason}
            if body.get("logprobs") is not None:
                choice["logprobs"] = self.logprobs(ids, generated, int(body["logprobs"]), bool(body.get("echo")))
            choices.append(choice)
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(generated)}
        if self.invisible_greedy and greedy and body.get("echo"):
            choices[0]["text"] = prompt
            rows = choices[0].get("logprobs")
            if rows and len(rows["tokens"]) > len(ids):
                for key in rows:
                    rows[key] = rows[key][: len(ids)]
            usage["completion_tokens"] = 1
        return {"object": "text_completion", "model": body.get("model"), "choices": choices, "usage": usage}

    def logprobs(self, ids, generated, k, echo) -> dict:
        # llama-cpp-python pairs rows with logits: when it shifts them the generated token has no row
        rows = (ids if echo else []) + (generated if not (echo and self.alignment == "shifted") else [])
        first = 0 if echo else len(ids)
        out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
        offset = 0
        for r, t in enumerate(rows):
            pos = first + r  # index of this token in ids + generated
            before = (ids + generated)[:pos]
            if self.alignment == "shifted" and echo:
                lp = self.dist((ids + generated)[: pos + 1])  # the distribution *after* the token
            elif self.alignment == "garbled" and echo:
                lp = self.dist([*before, t, t])
            else:
                lp = self.dist(before)
            text = self.text_of(t)
            if self.alignment == "shifted" and t == self.lm.tokenizer.eos_id:
                text = self.eos_string
            top = self.top(lp, k)
            top[text] = float(lp[t])  # as llama-cpp-python does: the row's own token is always listed
            out["tokens"].append(text)
            out["text_offset"].append(offset)
            out["token_logprobs"].append(float(lp[t]))
            out["top_logprobs"].append(top)
            offset += len(self.text_of(t))
        if echo and rows:
            out["token_logprobs"][0] = None
            out["top_logprobs"][0] = None
        return out


@pytest.fixture
def toy():
    return ToyLM(alphabet="ab", seed=0)


@pytest.fixture
def make_server(toy):
    servers = []

    def make(**kwargs):
        s = ToyServer(toy, **kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def serve():
    """``serve(handle)``: the URL of a raw HTTP server on 127.0.0.1 that answers each POST with
    ``handle(handler, body)`` (``reply`` writes a JSON answer); ``.requests`` counts them."""
    servers = []

    def make(handle):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except OSError:  # the client gave up on this answer: expected here
                    self.close_connection = True

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    make.requests += 1
                handle(self, body)

        lock = threading.Lock()
        make.requests = 0
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1"

    yield make
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def reply(handler, obj, status=200):
    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def remote(server, **kwargs):
    kwargs.setdefault("eos_token", EOS_TEXT)
    kwargs.setdefault("backoff", 0.01)
    return OpenAICompatibleLM(server.url, "toy", **kwargs)


def strings(max_len):
    return ["".join(t) for n in range(max_len + 1) for t in itertools.product("ab", repeat=n)]


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("alignment", ["aligned", "shifted"])
def test_score_equals_the_local_model_exactly(make_server, toy, alignment):
    server = make_server(alignment=alignment)
    lm = remote(server, top_logprobs=1)  # a shifted server must widen its alternatives when a token is missing
    values = strings(3)
    for kwargs in ({"max_tokens": 3}, {"max_tokens": 3, "stop": "bb"}, {"max_tokens": 2, "stop": ["b", "aa"]}):
        got = lm.score(["ab"] * len(values), values, **kwargs)
        want = toy.score(["ab"] * len(values), values, **kwargs)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), (kwargs, got, want)
        finite = torch.isfinite(want)
        assert torch.allclose(got[finite].double(), want[finite].double(), atol=1e-5), (kwargs, got, want)
    assert lm.alignment == alignment


def test_scores_sum_to_one_over_every_value(make_server):
    lm = remote(make_server())
    values = strings(3)
    total = torch.logsumexp(lm.score("ba", values, max_tokens=3, stop="bb").double(), 0)
    assert abs(float(total)) < 1e-6


def test_sample_returns_exact_log_probs_and_honours_stop(make_server, toy):
    server = make_server(honor_n=False)  # like llama-cpp-python: one choice per request whatever n says
    lm = remote(server)
    completions = lm.sample(["ab"] * 6 + ["b"] * 3, max_tokens=4, stop="bb", generator=torch.Generator().manual_seed(0))
    assert len(completions) == 9
    for prompt, c in zip(["ab"] * 6 + ["b"] * 3, completions, strict=True):
        assert "bb" not in c.text and len(c.text) <= 4
        assert c.log_prob == pytest.approx(float(toy.score(prompt, [c.text], max_tokens=4, stop="bb")[0]), abs=1e-5)
    # distinct seeds per request: six draws of one prompt are not all the same string
    assert len({c.text for c in completions[:6]}) > 1
    assert len({r["seed"] for r in server.requests if "seed" in r and "logprobs" not in r}) == 9


def test_a_score_is_one_number_however_often_it_is_asked(make_server, toy):
    server = make_server(jitter=0.004)
    lm = remote(server)
    completions = lm.sample(["ab"] * 4, max_tokens=3, stop="bb", generator=torch.Generator().manual_seed(1))
    before = len(server.requests)
    again = lm.score("ab", [c.text for c in completions], max_tokens=3, stop="bb")
    assert [c.log_prob for c in completions] == again.tolist()  # exactly: remembered, not asked again
    assert len(server.requests) == before
    # another max_tokens or stop is another question
    lm.score("ab", [completions[0].text], max_tokens=4, stop="bb")
    assert len(server.requests) > before
    # without the memo the same question gets the server's jittered answers
    plain = remote(server, score_cache_size=0, max_concurrency=1)  # a fixed request order
    values = ["a", "ba", "aab"]
    first = plain.score("ab", values, max_tokens=3, stop="bb")
    n = len(server.requests)
    second = plain.score("ab", values, max_tokens=3, stop="bb")
    assert len(server.requests) > n and not torch.equal(first, second)
    want = toy.score("ab", values, max_tokens=3, stop="bb")
    assert torch.allclose(second.double(), want.double(), atol=0.05)
    # the memo is bounded, least recently used out first, and can be emptied
    small = remote(server, score_cache_size=2)
    small.score("ab", values, max_tokens=3, stop="bb")
    assert [k[0][1] for k in small._scores] == ["ba", "aab"]
    small.clear_score_cache()
    assert not small._scores


def test_sampling_requests_switch_off_server_side_truncation(make_server):
    server = make_server()
    remote(server).sample(["ab"] * 3, max_tokens=2, generator=torch.Generator().manual_seed(1))
    sampling = [r for r in server.requests if not r.get("echo") and r.get("temperature") == 1.0]
    assert sampling and all(r["top_p"] == 1.0 and r["top_k"] == 0 and r["min_p"] == 0.0 for r in sampling)
    assert sampling[0]["n"] == 3  # repeats of a prompt go as one request


def test_sampling_frequencies_match_the_model(make_server, toy):
    lm = remote(make_server())
    draws = lm.sample(["ab"] * 300, max_tokens=1, generator=torch.Generator().manual_seed(2))
    freq_a = sum(c.text == "a" for c in draws) / len(draws)
    p_a = float(toy.score("ab", ["a"], max_tokens=1)[0].exp())
    assert abs(freq_a - p_a) < 4 * math.sqrt(p_a * (1 - p_a) / len(draws))


def test_importance_through_the_server_matches_enumeration(make_server, toy):
    lm = remote(make_server(), max_concurrency=4)

    def cascade():
        work = pyro.sample("work", LM("ab", model=lm, max_tokens=2))
        pyro.sample("check", LM("b" + work, model=lm, max_tokens=1), obs="a")
        return work

    works = strings(2)
    joint = toy.score("ab", works, max_tokens=2).double() + torch.tensor(
        [float(toy.score("b" + w, ["a"], max_tokens=1)[0]) for w in works], dtype=torch.float64
    )
    exact = dict(zip(works, (joint - joint.logsumexp(0)).exp().tolist(), strict=True))
    pyro.set_rng_seed(0)
    post = llmppl.infer.Importance(cascade, num_samples=200).run()
    marginal = post.marginal("work")
    for w, p in exact.items():
        assert abs(marginal[w] - p) < 0.12, (w, marginal[w], p)
    assert abs(post.log_evidence - float(joint.logsumexp(0))) < 0.3


# ---------------------------------------------------------------- alignment probe


def test_an_invisible_generated_token_is_redrawn_not_misread(make_server, toy):
    server = make_server(invisible_greedy=True)
    lm = remote(server)
    got = lm.score("ab", ["a", "ba"], max_tokens=3, stop="bb")
    want = toy.score("ab", ["a", "ba"], max_tokens=3, stop="bb")
    assert torch.allclose(got.double(), want.double(), atol=1e-5)
    assert any(r.get("echo") and "seed" in r for r in server.requests)  # it asked again, drawing a token


def test_probe_tells_aligned_from_shifted(make_server):
    assert remote(make_server(alignment="aligned")).probe(["ab", "ba"]) == "aligned"
    assert remote(make_server(alignment="shifted")).probe(["ab", "ba"]) == "shifted"


def test_probe_rejects_a_server_whose_echo_matches_neither(make_server):
    lm = remote(make_server(alignment="garbled"))
    with pytest.raises(RemoteModelError, match=r"could not tell how the server aligns echoed prompt log-probs"):
        lm.score("ab", ["a"], max_tokens=2)


def test_shifted_server_with_unnamed_eos_is_a_clear_error(make_server):
    lm = remote(make_server(alignment="shifted", eos_string=""))
    with pytest.raises(RemoteModelError, match=r"shifted by one row and names token \d+ .*with the empty string"):
        lm.score("ab", ["a"], max_tokens=2)


def test_without_eos_token_only_length_limited_values_are_scored(make_server, toy):
    lm = remote(make_server(), eos_token=None)
    got = lm.score("ab", ["ab"], max_tokens=2)
    assert float(got[0]) == pytest.approx(float(toy.score("ab", ["ab"], max_tokens=2)[0]), abs=1e-5)
    with pytest.raises(RemoteModelError, match=r"eos_token: needed to score 'a'.*got None"):
        lm.score("ab", ["a"], max_tokens=2)


# ---------------------------------------------------------------- transport


def test_retries_429_and_5xx_then_succeeds(make_server, toy):
    server = make_server(failures=[429, 500, 503])
    lm = remote(server, max_retries=3, max_concurrency=1)
    got = lm.score("ab", ["a"], max_tokens=2)
    assert float(got[0]) == pytest.approx(float(toy.score("ab", ["a"], max_tokens=2)[0]), abs=1e-5)
    assert not server.failures


def test_gives_up_with_the_url_and_status(make_server):
    server = make_server(failures=[503] * 10)
    lm = remote(server, max_retries=2)
    t0 = time.perf_counter()
    pattern = r"POST http://127\.0\.0\.1:\d+/v1/completions: gave up after 3 attempts.*HTTP 503"
    with pytest.raises(RemoteModelError, match=pattern):
        lm.sample(["ab"], max_tokens=2)
    assert time.perf_counter() - t0 >= 0.01 + 0.02  # it waited (backoff 0.01 s, doubled) before each retry
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(make_server):
    server = make_server()
    lm = remote(server)
    with pytest.raises(RemoteModelError, match=r"HTTP 400: .*not in the alphabet"):
        lm.sample(["abc"], max_tokens=2)  # 'c' is outside the toy alphabet: the server answers 400
    assert len(server.requests) == 1


def test_connection_refused_names_the_server(make_server):
    server = make_server()
    url = server.url
    server.close()
    lm = OpenAICompatibleLM(url, "toy", max_retries=1, backoff=0.01, eos_token=EOS_TEXT)
    with pytest.raises(RemoteModelError, match=rf"POST {url}/completions: gave up after 2 attempts.*Connection"):
        lm.sample(["ab"], max_tokens=2)


def test_timeout_per_request(make_server):
    lm = remote(make_server(delay=1.0), timeout=0.1, max_retries=0)
    with pytest.raises(RemoteModelError, match=r"gave up after 1 attempts \(timeout 0.1 s each.*(timed out|Timeout)"):
        lm.sample(["ab"], max_tokens=1)


def test_timeout_bounds_the_whole_request_not_each_read(serve):
    # status line, headers and body one byte every 0.02 s: about 2 s in all, each read well within 0.3 s
    def trickle(handler, body):
        data = json.dumps({"choices": [{"text": "a", "finish_reason": "length"}]}).encode()
        head = f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        for byte in head.encode() + data:
            handler.wfile.write(bytes([byte]))
            time.sleep(0.02)

    url = serve(trickle)
    lm = OpenAICompatibleLM(url, "m", timeout=0.3, max_retries=1, backoff=0.01)
    t0 = time.perf_counter()
    pattern = r"POST http://127\.0\.0\.1:\d+/v1/completions: gave up after 2 attempts \(timeout 0\.3 s each.*timed out"
    with pytest.raises(RemoteModelError, match=pattern):  # a timeout like any other: retried, then given up
        lm._post("/v1/completions", {"prompt": "ab"})
    assert time.perf_counter() - t0 < 1.2
    assert serve.requests == 2


def _garbled(kind):
    """An answer that is JSON with 'choices' but not the completions layout."""

    def handle(handler, body):
        prompt = body["prompt"]
        if kind == "choice is a string":
            return reply(handler, {"choices": ["x"]})
        rows = [*prompt, "a"]
        logprobs = {"tokens": rows, "token_logprobs": [None] + [-1.0] * len(prompt), "top_logprobs": None}
        if kind == "tokens are not strings":
            logprobs["tokens"] = list(range(len(rows)))
        elif kind == "null log-prob of a generated token":
            logprobs = {"tokens": ["a"], "token_logprobs": [None]}
        text = (prompt if body.get("echo") else "") + "a"
        reply(handler, {"choices": [{"text": text, "finish_reason": "length", "logprobs": logprobs}]})

    return handle


@pytest.mark.parametrize("kind", ["choice is a string", "tokens are not strings", "null log-prob of a generated token"])
def test_an_unreadable_answer_is_a_remote_model_error_naming_the_url(serve, kind):
    url = serve(_garbled(kind))
    lm = OpenAICompatibleLM(url, "m", eos_token=EOS_TEXT, max_retries=0)
    pattern = rf"POST {url}/completions: expected an OpenAI completions answer, got one that cannot be read \("
    for call in (lambda: lm.sample(["ab"], max_tokens=2), lambda: lm.score("ab", ["a"], max_tokens=2)):
        with pytest.raises(RemoteModelError, match=pattern) as info:
            call()
        assert "{'choices': [" in str(info.value) and "the layout expected" in str(info.value)
    with pytest.raises(TypeError):  # a caller's mistake, before any answer, stays what it is
        lm.probe(5)


def test_one_failed_request_among_concurrent_ones_is_raised_at_once(serve):
    def handle(handler, body):
        if body["prompt"] == "bad":
            return reply(handler, {"error": "bad prompt"}, status=400)
        time.sleep(1.0)
        reply(handler, {"error": "busy"}, status=503)  # retryable, but the batch has failed by then

    url = serve(handle)
    lm = OpenAICompatibleLM(url, "m", max_retries=3, backoff=0.01, max_concurrency=4, timeout=5)
    before = set(threading.enumerate())
    t0 = time.perf_counter()
    with pytest.raises(RemoteModelError, match=rf"POST {url}/completions: the server answered HTTP 400"):
        lm._map(lambda p: lm._complete({"prompt": p}), ["x", "y", "z", "bad"])
    assert time.perf_counter() - t0 < 0.5  # not after the others' 1 s
    time.sleep(1.3 - (time.perf_counter() - t0))
    assert serve.requests == 4  # the abandoned requests were not retried
    assert not [t for t in threading.enumerate() if t not in before and t.name.startswith("ThreadPoolExecutor")]
    # without failures the results are in job order, whatever order they finish in
    assert lm._map(lambda j: (time.sleep(0.02 * (4 - j)), j)[1], range(5)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "error, pattern",
    [
        (socket.gaierror(-2, "Name or service not known"), "the host name does not resolve"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "TLS certificate failed verification"),
    ],
)
def test_dns_and_certificate_failures_are_not_retried(error, pattern):
    lm = OpenAICompatibleLM("https://llm.example.invalid/v1", "m", max_retries=3, backoff=0.01)
    calls = []

    def send(path, body):
        calls.append(path)
        raise error

    lm._send = send
    with pytest.raises(
        RemoteModelError, match=rf"POST https://llm\.example\.invalid/v1/completions: .*{pattern}.*not retried"
    ):
        lm.sample(["ab"], max_tokens=1)
    assert len(calls) == 1


def test_concurrency_is_bounded_and_used(make_server):
    server = make_server(delay=0.05)
    lm = remote(server, max_concurrency=3)
    prompts = ["a", "b", "aa", "ab", "ba", "bb", "aab", "abb"]
    lm.sample(prompts, max_tokens=1, generator=torch.Generator().manual_seed(0))
    assert server.max_in_flight == 3
    server1 = make_server(delay=0.02)
    remote(server1, max_concurrency=1).sample(["a", "b", "aa"], max_tokens=1)
    assert server1.max_in_flight == 1


# ---------------------------------------------------------------- what a remote model cannot do


def test_token_level_use_needs_a_local_model(make_server):
    lm = remote(make_server())
    with pytest.raises(NotImplementedError, match="needs a local model"):
        lm.next_logprobs(None)
    with pytest.raises(NotImplementedError, match="needs a local model"):
        llmppl.NextToken("ab", lm)

    def steered():
        return pyro.sample("x", LM("ab", model=lm, max_tokens=2, potential=lambda s: 0.0))

    with pytest.raises(NotImplementedError, match=r"site 'x': token-level steering .* needs a local model"):
        llmppl.infer.SMC(steered, num_particles=2).run()


def test_tempered_or_truncated_sampling_is_refused(make_server):
    lm = remote(make_server())
    with pytest.raises(ValueError, match=r"temperature: .*only 1\.0 is exact, got 0\.7"):
        lm.sample(["ab"], temperature=0.7)
    with pytest.raises(ValueError, match=r"top_k: .*only None is exact, got 5"):
        lm.score("ab", ["a"], top_k=5)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="base_url: expected an http"):
        OpenAICompatibleLM("127.0.0.1:8000", "m")
    with pytest.raises(TypeError, match="model: expected"):
        OpenAICompatibleLM("http://127.0.0.1:8000", "")
    with pytest.raises(ValueError, match="max_concurrency: expected an int >= 1, got 0"):
        OpenAICompatibleLM("http://127.0.0.1:8000", "m", max_concurrency=0)
    with pytest.raises(ValueError, match=r"score_cache_size: expected an int >= 0 \(0: no memo\), got -1"):
        OpenAICompatibleLM("http://127.0.0.1:8000", "m", score_cache_size=-1)
    for timeout in (0, -1.0, math.inf, math.nan):  # 0 would make every socket non-blocking
        with pytest.raises(ValueError, match=rf"timeout: expected a finite number > 0 .*got {timeout!r}"):
            OpenAICompatibleLM("http://127.0.0.1:8000", "m", timeout=timeout)
    with pytest.raises(TypeError, match=r"prompts\[0\]: expected a str"):
        OpenAICompatibleLM("http://127.0.0.1:8000", "m").sample([3])
