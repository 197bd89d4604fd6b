"""LM and NextToken: exact log_prob, default models, bad input, repr."""

import itertools
import math

import pytest
import torch

from llmppl.distributions import LM, NextToken, NoDefaultModelError, get_default_model, set_default_model, use_model
from llmppl.models import ToyLM


@pytest.fixture(scope="module")
def lm():
    return ToyLM(alphabet="ab", seed=0)


@pytest.fixture(autouse=True)
def _no_default_model():
    set_default_model(None)
    yield
    set_default_model(None)


def all_strings(n):
    return [""] + ["".join(t) for k in range(1, n + 1) for t in itertools.product("ab", repeat=k)]


@pytest.mark.parametrize("stop", [None, "b", "aa", ["ab", "ba"]], ids=repr)
@pytest.mark.parametrize(("max_tokens", "temperature", "top_k"), [(3, 1.0, None), (4, 0.6, 2), (2, 1.5, 1)])
def test_log_prob_sums_to_one(lm, stop, max_tokens, temperature, top_k):
    d = LM("ab", model=lm, max_tokens=max_tokens, stop=stop, temperature=temperature, top_k=top_k)
    total = d.log_prob_batch(all_strings(max_tokens)).double().exp().sum()
    assert abs(float(total) - 1.0) < 1e-5


def test_log_prob_is_zero_dim_and_equals_model_score(lm):
    d = LM("b", model=lm, max_tokens=3, stop="aa")
    lp = d.log_prob("ab")
    assert lp.shape == () and lp.dtype == torch.get_default_dtype()
    torch.testing.assert_close(lp, lm.score("b", ["ab"], max_tokens=3, stop="aa")[0])


def test_log_prob_batch_equals_one_by_one(lm):
    d = LM("a", model=lm, max_tokens=4, stop=["bb"])
    values = all_strings(4)
    fresh = [LM("a", model=ToyLM(seed=0), max_tokens=4, stop=["bb"]).log_prob(v) for v in values]
    torch.testing.assert_close(d.log_prob_batch(values), torch.stack(fresh))


@pytest.mark.parametrize("stop", ["a", "ab", ["b", "aa"]])
def test_values_containing_stop_are_minus_inf(lm, stop):
    d = LM("", model=lm, max_tokens=6, stop=stop)
    for v in ["a", "ab", "bab", "baab"]:
        if any(s in v for s in ([stop] if isinstance(stop, str) else stop)):
            assert d.log_prob(v).item() == -math.inf


def test_samples_are_strings_with_finite_log_prob(lm):
    d = LM("ab", model=lm, max_tokens=4, stop="aa")
    values = d.sample((50,))
    assert len(values) == 50 and all(isinstance(v, str) and "aa" not in v for v in values)
    assert torch.isfinite(d.log_prob_batch(values)).all()
    assert isinstance(d.sample(), str)
    with pytest.raises(NotImplementedError, match="sample_shape"):
        d.sample((2, 3))


def test_default_model_lookup():
    a, b = ToyLM(seed=1), ToyLM(seed=2)
    with pytest.raises(NoDefaultModelError, match="set_default_model"):
        LM("x").sample()
    set_default_model(a)
    assert LM("x").model is a
    with use_model(b):
        assert LM("x").model is b and get_default_model() is b
        with use_model(a):
            assert get_default_model() is a
        assert get_default_model() is b
    assert get_default_model() is a
    inside = None
    with use_model(b):
        inside = LM("x")
    assert inside.model is b  # captured when built
    with pytest.raises(NoDefaultModelError):
        set_default_model(None)
        NextToken("x")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: LM(3, model=m), TypeError, "prompt"),
        (lambda m: LM(b"q", model=m), TypeError, "prompt"),
        (lambda m: LM("q", model="gpt2"), TypeError, "model"),
        (lambda m: LM("q", model=m, max_tokens=0), ValueError, "max_tokens"),
        (lambda m: LM("q", model=m, max_tokens=True), TypeError, "max_tokens"),
        (lambda m: LM("q", model=m, temperature=0), ValueError, "temperature"),
        (lambda m: LM("q", model=m, temperature="hot"), TypeError, "temperature"),
        (lambda m: LM("q", model=m, top_k=0), ValueError, "top_k"),
        (lambda m: LM("q", model=m, stop=""), ValueError, "stop"),
        (lambda m: LM("q", model=m, stop=[]), ValueError, "stop"),
        (lambda m: LM("q", model=m, stop=["a", None]), TypeError, "stop"),
        (lambda m: LM("q", model=m, potential=3), TypeError, "potential"),
        (lambda m: LM("q", model=m).log_prob(3), TypeError, "value"),
        (lambda m: LM("q", model=m).log_prob_batch("ab"), TypeError, "values"),
        (lambda m: LM("q", model=m).log_prob_batch(["a", 1]), TypeError, "value"),
        (lambda m: NextToken(3, m), TypeError, "prompt_or_state"),
        (lambda m: NextToken("a", object()), TypeError, "model"),
        (lambda m: use_model("gpt2").__enter__(), TypeError, "model"),
        (lambda m: set_default_model(42), TypeError, "model"),
    ],
)
def test_bad_input_raises_naming_the_argument(lm, call, error, match):
    with pytest.raises(error, match=match):
        call(lm)


def test_potential_is_kept_but_plain_sampling_refuses_it(lm):
    d = LM("ab", model=lm, potential=lambda text: 0.0)
    assert callable(d.potential)
    with pytest.raises(NotImplementedError, match="inference engine"):
        d.sample()
    torch.testing.assert_close(d.log_prob("b"), LM("ab", model=lm).log_prob("b"))  # log_prob ignores it


def test_repr_shows_the_prompt_shortened(lm):
    r = repr(LM("Q: " + "x" * 200 + " A:", model=lm, stop="\n", max_tokens=8, temperature=0.5, top_k=3))
    assert r.startswith("LM('Q: xxx") and "…" in r and len(r) < 120
    assert "stop='\\n'" in r and "max_tokens=8" in r and "temperature=0.5" in r and "top_k=3" in r
    assert repr(LM("hi", model=lm)) == "LM('hi')"
    assert repr(NextToken("ab", lm)) == "NextToken('ab')"


def test_next_token_is_the_models_next_token_distribution(lm):
    d = NextToken("ab", lm)
    lp = lm.step_logprobs(lm.prefill_prompts(["ab"]))[0]
    torch.testing.assert_close(d.log_prob("a"), lp[0])
    torch.testing.assert_close(d.log_prob(""), lp[lm.tokenizer.eos_id])  # EOS is ""
    assert d.log_prob("ab").item() == -math.inf
    total = sum(d.log_prob(v).exp() for v in ["a", "b", ""])
    assert abs(float(total) - 1) < 1e-6
    assert set(d.sample((200,))) <= {"a", "b", ""}


def test_next_token_from_a_state(lm):
    state = lm.prefill_prompts(["ab"])
    torch.testing.assert_close(NextToken(state, lm).log_prob("b"), NextToken("ab", lm).log_prob("b"))
    with pytest.raises(ValueError, match="one-row"):
        NextToken(lm.prefill_prompts(["a", "b"]), lm)


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324, 1e300])
def test_extreme_temperatures_never_give_nan(temperature):
    from llmppl.models import PerformerConfig, PerformerLM

    torch.manual_seed(0)
    for model in (ToyLM(alphabet="ab"), PerformerLM(PerformerConfig.tiny())):
        d = LM("a", model=model, max_tokens=3, temperature=temperature)
        value = d.sample()
        lps = d.log_prob_batch([value, "ab", "bb"])
        assert not torch.isnan(lps).any()
        assert torch.isfinite(lps[0])  # what was sampled is possible


def test_prompt_joined_from_pieces_of_one_utf8_character():
    from llmppl.models import PerformerConfig, PerformerLM

    lm = PerformerLM(PerformerConfig.tiny())
    tok = lm.tokenizer
    a, b = tok.decode([0xE2, 0x82]), tok.decode([0xAC])  # the pieces of "€", as sampled
    d = LM(a + b, model=lm, max_tokens=2)
    assert isinstance(d.sample(), str)
    assert lm.encode_prompt(a + b) == lm.encode_prompt("€")
    # as a value, the joined escapes are no byte sequence's decoding (those bytes decode to "€")
    assert d.log_prob(a + b) == -math.inf and math.isfinite(d.log_prob(a))


def test_llmppl_infer_is_importable_like_pyro_infer():
    import llmppl.infer
    from llmppl.infer import SMC, Importance

    import llmppl

    assert llmppl.infer.SMC is SMC and Importance is llmppl.Importance
