"""String sites under Pyro's handlers and inference: trace, replay, condition, block, scale,
mask, plates and pyro.infer.Importance."""

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from llmppl.distributions import LM, Categorical, Delta, use_model
from llmppl.models import ToyLM


@pytest.fixture(scope="module")
def lm():
    return ToyLM(alphabet="ab", seed=0)


def chain(lm):
    def model():
        x = pyro.sample("x", LM("a", model=lm, max_tokens=2, stop="bb"))
        pyro.sample("label", Delta(x.upper()))
        return pyro.sample("y", LM(x, model=lm, max_tokens=2, stop="bb"))

    return model


def exact(lm, prompt, value, **kw):
    return lm.score(prompt, [value], **kw)[0].item()


def test_trace_records_strings_and_exact_log_probs(lm):
    tr = poutine.trace(chain(lm)).get_trace()
    tr.compute_log_prob()
    x, y = tr.nodes["x"]["value"], tr.nodes["y"]["value"]
    assert isinstance(x, str) and isinstance(y, str)
    assert tr.nodes["label"]["value"] == x.upper() and tr.nodes["label"]["log_prob"].item() == 0.0
    assert math.isclose(tr.nodes["x"]["log_prob"].item(), exact(lm, "a", x, max_tokens=2, stop="bb"), rel_tol=1e-6)
    assert math.isclose(tr.nodes["y"]["log_prob"].item(), exact(lm, x, y, max_tokens=2, stop="bb"), rel_tol=1e-6)


def test_replay_reuses_values(lm):
    tr = poutine.trace(chain(lm)).get_trace()
    for _ in range(3):
        again = poutine.trace(poutine.replay(chain(lm), trace=tr)).get_trace()
        assert again.nodes["x"]["value"] == tr.nodes["x"]["value"]
        assert again.nodes["y"]["value"] == tr.nodes["y"]["value"]
    torch.testing.assert_close(again.log_prob_sum(), tr.log_prob_sum())


def test_condition_and_obs_score_the_string(lm):
    conditioned = poutine.condition(chain(lm), data={"x": "ab", "y": "b"})
    tr = poutine.trace(conditioned).get_trace()
    assert tr.nodes["x"]["is_observed"] and tr.nodes["x"]["value"] == "ab"
    want = exact(lm, "a", "ab", max_tokens=2, stop="bb") + exact(lm, "ab", "b", max_tokens=2, stop="bb")
    assert math.isclose(tr.log_prob_sum().item(), want, rel_tol=1e-6)

    def with_obs():
        return pyro.sample("y", LM("a", model=lm, max_tokens=3, stop="bb"), obs="abb")

    tr = poutine.trace(with_obs).get_trace()
    assert tr.log_prob_sum().item() == -math.inf  # contains the stop string: impossible, not an error


def test_obs_that_is_not_a_string_is_a_type_error(lm):
    def model():
        pyro.sample("y", LM("a", model=lm), obs=torch.tensor(1.0))

    tr = poutine.trace(model).get_trace()
    with pytest.raises(TypeError, match="value"):
        tr.compute_log_prob()


def test_block_hides_sites(lm):
    tr = poutine.trace(poutine.block(chain(lm), hide=["x"])).get_trace()
    assert "x" not in tr.nodes and "y" in tr.nodes


def test_scale_and_mask(lm):
    tr = poutine.trace(chain(lm)).get_trace()
    base = tr.log_prob_sum()
    scaled = poutine.trace(poutine.scale(poutine.replay(chain(lm), trace=tr), scale=0.5)).get_trace()
    torch.testing.assert_close(scaled.log_prob_sum(), 0.5 * base)
    masked = poutine.trace(poutine.mask(poutine.replay(chain(lm), trace=tr), mask=torch.tensor(False))).get_trace()
    assert masked.log_prob_sum().item() == 0.0


def test_sequential_and_vectorised_plates(lm):
    def model():
        for i in pyro.plate("seq", 2):
            pyro.sample(f"s{i}", LM("b", model=lm, max_tokens=2))
        with pyro.plate("vec", 4):
            return pyro.sample("v", LM("b", model=lm, max_tokens=2, stop="aa"))

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    values = tr.nodes["v"]["value"]
    assert isinstance(values, list) and len(values) == 4 and all(isinstance(v, str) for v in values)
    assert tr.nodes["v"]["log_prob"].shape == (4,)
    want = LM("b", model=lm, max_tokens=2, stop="aa").log_prob_batch(values)
    torch.testing.assert_close(tr.nodes["v"]["log_prob"], want)
    assert isinstance(tr.nodes["s1"]["value"], str)

    def nested():
        with pyro.plate("a", 2), pyro.plate("b", 3, dim=-2):
            pyro.sample("z", LM("b", model=lm))

    with pytest.raises(NotImplementedError, match="plate"):
        poutine.trace(nested).get_trace()


def test_importance_weights_and_evidence_are_exact(lm):
    """Prior proposal: each weight is exactly log p(obs | x); the evidence estimate is close to the exact sum."""
    kw = dict(max_tokens=2, stop="bb")

    def model():
        x = pyro.sample("x", LM("a", model=lm, **kw))
        pyro.sample("y", LM(x, model=lm, **kw), obs="a")
        return x

    importance = pyro.infer.Importance(model, num_samples=400).run()
    for tr, w in zip(importance.exec_traces, importance.log_weights, strict=True):
        x = tr.nodes["x"]["value"]
        assert math.isclose(float(w), exact(lm, x, "a", **kw), rel_tol=1e-5, abs_tol=1e-6)
    xs = [""] + ["".join(t) for k in (1, 2) for t in itertools.product("ab", repeat=k)]
    prior = lm.score("a", xs, **kw).double()
    lik = torch.tensor([exact(lm, x, "a", **kw) for x in xs], dtype=torch.float64)
    exact_evidence = float(torch.logsumexp(prior + lik, 0))
    estimate = float(importance.get_log_normalizer())
    assert abs(estimate - exact_evidence) < 0.15  # seeded; typical error ~0.03 at 400 samples


def test_categorical_and_default_model_in_a_program(lm):
    def model():
        style = pyro.sample("style", Categorical(["a", "b"], probs=[0.5, 0.5]))
        return pyro.sample("out", LM(style, max_tokens=2))

    with use_model(lm):
        tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    assert math.isclose(
        tr.nodes["out"]["log_prob"].item(),
        exact(lm, tr.nodes["style"]["value"], tr.nodes["out"]["value"], max_tokens=2),
        rel_tol=1e-6,
    )
