"""The continuation cache: a prompt that extends a sampled sequence resumes from its state.

Resuming must give the same next-token distributions as prefilling the prompt from
scratch (bitwise on ToyLM, to float32 rounding on the Performer), keep rows in prompt
order with repeats and misses mixed in, stay within its row bound, and leave inference
results unchanged.
"""

import pyro
import pytest
import torch

from llmppl.distributions import LM
from llmppl.inference import Importance
from llmppl.models import ToyLM
from llmppl.models.performer import PerformerConfig, PerformerLM


class CountingToy(ToyLM):
    """ToyLM that counts the token rows it prefills."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefilled_rows = 0

    def prefill(self, prompts):
        self.prefilled_rows += len(prompts)
        return super().prefill(prompts)


def fresh(lm, prompts):
    return lm.next_logprobs(lm.prefill([lm.encode_prompt(p) for p in prompts]))


def extensions(lm, prompts, generator, suffix="\n:"):
    cs = lm.sample(prompts, max_tokens=5, stop="\n", generator=generator)
    return [p + c.text + (suffix if c.finish_reason == "stop" else "") for p, c in zip(prompts, cs, strict=True)]


@pytest.mark.parametrize("make", [lambda: CountingToy("abQ\n:", seed=1), lambda: PerformerLM(PerformerConfig.tiny())])
def test_resumed_state_equals_a_fresh_prefill(make):
    torch.manual_seed(0)
    lm = make()
    if isinstance(lm, PerformerLM):
        lm.eval()
    g = torch.Generator().manual_seed(3)
    for _ in range(3):  # fresh random draws each round
        prompts = ["Q:a"] * 6 + ["b"] * 3 + ["ab"]
        nxt = extensions(lm, prompts, g)
        # mixed batch: repeats, a prompt never sampled from, and a prefix of a sampled sequence
        batch = [*nxt, nxt[0], "Qa:b", prompts[0]]
        got = lm.next_logprobs(lm.prefill_prompts(batch))
        want = fresh(lm, batch)
        if isinstance(lm, ToyLM):
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_resuming_replaces_the_prefill():
    lm = CountingToy("abQ\n:", seed=2)
    g = torch.Generator().manual_seed(0)
    nxt = extensions(lm, ["Q:a"] * 16, g)
    before = lm.prefilled_rows
    lm.prefill_prompts(nxt)
    assert lm.prefilled_rows == before  # every row resumed
    lm.continuation_cache_rows = 0
    lm.clear_prefix_cache()
    lm.prefill_prompts(nxt)
    assert lm.prefilled_rows == before + len(set(nxt))


def test_suffix_longer_than_the_limit_is_prefilled():
    lm = CountingToy("abQ\n:", seed=2)
    lm.continuation_max_suffix = 2
    nxt = extensions(lm, ["Q:a"] * 4, torch.Generator().manual_seed(0), suffix="\nab:")  # 4 extra tokens
    before = lm.prefilled_rows
    got = lm.next_logprobs(lm.prefill_prompts(nxt))
    long_suffix = {p for p in nxt if p.endswith("\nab:")}  # those cut by max_tokens add only one token
    assert long_suffix and lm.prefilled_rows == before + len(long_suffix)
    assert torch.equal(got, fresh(lm, nxt))


def test_cache_is_bounded():
    lm = ToyLM("ab\n", seed=0)
    lm.continuation_cache_rows = 10
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        lm.sample(["a"] * 4, max_tokens=4, stop="\n", generator=g)
    cache = lm._continuations()
    assert cache.rows <= 10 and len(cache.index) <= 10
    assert sum(cache.lengths.values()) == len(cache.index)
    lm.sample(["a"] * 11, max_tokens=4, generator=g)  # more rows than fit: not kept at all
    assert cache.rows <= 10


def test_inference_is_unchanged_by_the_cache():
    lm = ToyLM("ab\n:", seed=4)

    def cascade():
        work = pyro.sample("work", LM("a", model=lm, stop="\n", max_tokens=4))
        return pyro.sample("answer", LM(f"a{work}\n:", model=lm, stop="\n", max_tokens=3))

    def run():
        lm.clear_prefix_cache()
        pyro.set_rng_seed(7)
        post = Importance(cascade, num_samples=64, progress=False).run()
        return [(t.nodes["work"]["value"], t.nodes["answer"]["value"]) for t in post.traces], post.log_weights

    on_values, on_w = run()
    lm.continuation_cache_rows = 0
    off_values, off_w = run()
    assert on_values == off_values
    torch.testing.assert_close(torch.as_tensor(on_w), torch.as_tensor(off_w))


def test_caches_follow_the_weights():
    # an optimiser step or load_state_dict changes the weights in place: no stale state or
    # memoised score may survive it (nobody has to call clear_prefix_cache)
    import copy

    from llmppl.distributions import LM
    from llmppl.models import PerformerConfig, PerformerLM

    torch.manual_seed(0)
    lm = PerformerLM(PerformerConfig.tiny())
    d = LM("Q: 1+2\nA:", model=lm, max_tokens=4, stop="\n")
    before = float(d.log_prob(" 3"))
    lm.sample(["Q: 1+2\nA:"] * 2, max_tokens=3)  # prefix and continuation caches filled
    other = copy.deepcopy(lm)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lm.load_state_dict(other.state_dict())
    fresh = copy.deepcopy(other)
    fresh.clear_prefix_cache()
    after = float(d.log_prob(" 3"))
    assert after != before
    expected = float(LM("Q: 1+2\nA:", model=fresh, max_tokens=4, stop="\n").log_prob(" 3"))
    assert after == pytest.approx(expected, abs=1e-5)
    assert lm.score("Q: 1+2\nA:", [" 3"], max_tokens=4, stop="\n").item() == pytest.approx(after, abs=1e-5)
