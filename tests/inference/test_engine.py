"""The batched replay engine: batching, replay, weights, errors, reproducibility."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from llmppl.distributions import LM
from llmppl.inference import SMC, Importance, InferenceError, Rejection, ReplayError
from llmppl.models import LanguageModel, ToyLM


class CountingLM(ToyLM):
    """A ToyLM that records the batch size of every external sample/score call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sample_calls: list[int] = []
        self.score_calls: list[int] = []
        self._inside = False

    def sample(self, prompts, **kwargs):
        self.sample_calls.append(len(prompts))
        self._inside = True
        try:
            return super().sample(prompts, **kwargs)
        finally:
            self._inside = False

    def score(self, prompts, continuations, **kwargs):
        if not self._inside:
            self.score_calls.append(len(continuations))
        return super().score(prompts, continuations, **kwargs)


class RemoteLM(LanguageModel):
    """A sequence-tier-only backend (like a server): delegates sample/score, has no token tier."""

    def __init__(self, inner):
        self.inner = inner

    def sample(self, prompts, **kwargs):
        return self.inner.sample(prompts, **kwargs)

    def score(self, prompts, continuations, **kwargs):
        return self.inner.score(prompts, continuations, **kwargs)


def scratchpad(lm):
    def model():
        work = pyro.sample("work", LM("a", model=lm, max_tokens=3))
        answer = pyro.sample("answer", LM(work + "b", model=lm, max_tokens=2))
        pyro.sample("verify", LM(answer + "a", model=lm, max_tokens=1), obs="b")
        return answer

    return model


@pytest.mark.parametrize("algorithm", ["Importance", "SMC"])
def test_one_batched_call_per_group_per_round(algorithm):
    lm = CountingLM(alphabet="ab")
    model = scratchpad(lm)
    if algorithm == "Importance":
        post = Importance(model, num_samples=256, progress=False).run()
    else:
        post = SMC(model, num_particles=256, progress=False).run()
    assert lm.sample_calls == [256, 256]  # "work", then "answer" (256 different prompts in one batch)
    assert lm.score_calls == [256]  # the verifier: one score batch, not 256 calls
    assert len({v["answer"] for v in post.values}) > 1


def test_groups_split_by_model_and_decoding_settings():
    lm_a, lm_b = CountingLM(alphabet="ab"), CountingLM(alphabet="ab", seed=1)

    def model():
        coin = pyro.sample("coin", dist.Bernoulli(0.5))
        lm, k = (lm_a, 2) if coin else (lm_b, 3)
        x = pyro.sample("x", LM("a", model=lm, max_tokens=k))
        pyro.sample("y", LM("b", model=lm_a, max_tokens=1 + int(coin)), obs="a")
        return x

    Importance(model, num_samples=64, progress=False).run()
    assert len(lm_a.sample_calls) == 1 and len(lm_b.sample_calls) == 1
    assert sum(lm_a.sample_calls) + sum(lm_b.sample_calls) == 64
    assert len(lm_a.score_calls) == 2 and sum(lm_a.score_calls) == 64  # two max_tokens values


def test_latent_non_lm_sites_are_drawn_once_and_replayed():
    draws = []

    class CountingNormal(dist.Normal):
        def __call__(self, *args, **kwargs):
            draws.append(1)
            return super().__call__(*args, **kwargs)

    lm = ToyLM(alphabet="ab")

    def model():
        z = pyro.sample("z", CountingNormal(0.0, 1.0))
        x = pyro.sample("x", LM("a" if z > 0 else "b", model=lm, max_tokens=2))
        y = pyro.sample("y", LM(x, model=lm, max_tokens=2))
        return z, y

    post = Importance(model, num_samples=32, progress=False).run()
    assert len(draws) == 32  # three rounds, one draw per particle
    assert all(v["z"] is t[0] for v, t in zip(post.values, post.return_values, strict=True))


def test_same_seed_same_result_and_different_seed_differs(cascade):
    def run(seed):
        pyro.set_rng_seed(seed)
        post = SMC(cascade, num_particles=32, ess_threshold=0.9, progress=False).run()
        return [v["work"] + "|" + v["answer"] for v in post.values], post.log_weights.tolist()

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_user_exception_names_its_site():
    lm = ToyLM(alphabet="ab")

    def model():
        work = pyro.sample("work", LM("a", model=lm, max_tokens=2))
        return 1 / (len(work) - len(work))

    with pytest.raises(ZeroDivisionError) as info:
        Importance(model, num_samples=4, progress=False).run()
    assert any("'work'" in note for note in getattr(info.value, "__notes__", []))


def test_all_zero_weights_raise_naming_the_site():
    lm = ToyLM(alphabet="ab")

    def model():
        x = pyro.sample("x", LM("a", model=lm, max_tokens=2))
        pyro.sample("impossible", LM(x, model=lm, max_tokens=1), obs="aa")  # needs 2 tokens
        return x

    for algorithm in (Importance(model, num_samples=16, progress=False), SMC(model, num_particles=16, progress=False)):
        with pytest.raises(InferenceError, match="'impossible'") as info:
            algorithm.run()
        assert info.value.site == "impossible"


def test_last_particles_die_at_the_named_site():
    lm = ToyLM(alphabet="ab")

    def model():
        coin = pyro.sample("coin", dist.Bernoulli(0.5))
        pyro.factor("first", torch.tensor(-math.inf if coin else 0.0))
        pyro.sample("x", LM("a", model=lm, max_tokens=2))
        pyro.factor("second", torch.tensor(-math.inf))

    with pytest.raises(InferenceError) as info:
        Importance(model, num_samples=32, progress=False).run()
    assert info.value.site == "second"


def test_weights_apply_scale_mask_and_observed_non_lm_sites():
    def model():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))
        with pyro.poutine.scale(scale=2.0):
            pyro.factor("scaled", torch.tensor(-1.0))
        with pyro.poutine.mask(mask=False):
            pyro.factor("masked", torch.tensor(-math.inf))
        with pyro.plate("data", 3):
            pyro.sample("obs", dist.Normal(0.0, 1.0), obs=torch.zeros(3))

    post = Importance(model, num_samples=2, progress=False).run()
    expected = (
        float(dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.5)))
        - 2.0
        + 3 * float(dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0)))
    )
    assert post.log_weights.tolist() == pytest.approx([expected, expected])
    assert post.log_evidence == pytest.approx(expected)


def test_nan_factor_names_its_site():
    def model():
        pyro.sample("broken", dist.Normal(0.0, 1.0, validate_args=False), obs=torch.tensor(math.nan))

    with pytest.raises(ValueError, match=r"'broken'.*nan"):
        Importance(model, num_samples=2, progress=False).run()


def test_python_randomness_is_detected_as_replay_divergence():
    lm = ToyLM(alphabet="ab")
    calls = itertools.count()

    def model():
        if next(calls) % 2:  # differs between rounds, as Python's random would
            pyro.sample("extra", dist.Normal(0.0, 1.0))
        x = pyro.sample("x", LM("a", model=lm, max_tokens=2))
        return pyro.sample("y", LM(x, model=lm, max_tokens=2))

    with pytest.raises(ReplayError, match=r"diverged under replay.*random"):
        Importance(model, num_samples=1, progress=False).run()


def test_potential_minus_inf_everywhere_kills_without_nan():
    lm = ToyLM(alphabet="ab")

    def model():
        return pyro.sample("x", LM("a", model=lm, max_tokens=3, potential=lambda s: -math.inf))

    with pytest.raises(InferenceError, match="'x'"):
        SMC(model, num_particles=16, progress=False).run()


def test_potential_hard_constraint_holds():
    lm = ToyLM(alphabet="ab")

    def model():
        return pyro.sample("x", LM("a", model=lm, max_tokens=4, potential=lambda s: 0.0 if "b" not in s else -math.inf))

    post = SMC(model, num_particles=64, progress=False).run()
    assert set(post.marginal().keys()) <= {"", "a", "aa", "aaa", "aaaa"}
    assert not torch.isnan(post.log_weights).any()


def test_steering_needs_a_token_tier():
    remote = RemoteLM(ToyLM(alphabet="ab"))

    def model():
        return pyro.sample("x", LM("a", model=remote, max_tokens=3, potential=lambda s: 0.0))

    with pytest.raises(NotImplementedError, match=r"site 'x'.*local model"):
        Importance(model, num_samples=4, progress=False).run()
    # plain sites on a sequence-tier backend are fine, and Rejection weighs the potential instead
    assert Rejection(model, num_samples=2, max_attempts=10, progress=False).run().num_particles == 2
    plain = lambda: pyro.sample("x", LM("a", model=remote, max_tokens=3))
    assert Importance(plain, num_samples=4, progress=False).run().num_particles == 4


def test_observed_lm_value_must_be_a_string():
    lm = ToyLM(alphabet="ab")

    def model():
        pyro.sample("answer", LM("a", model=lm, max_tokens=2), obs=3)

    with pytest.raises(TypeError, match=r"site 'answer'.*str"):
        Importance(model, num_samples=2, progress=False).run()


def test_guide_may_not_steer():
    lm = ToyLM(alphabet="ab")
    model = lambda: pyro.sample("x", LM("a", model=lm, max_tokens=2))
    guide = lambda: pyro.sample("x", LM("a", model=lm, max_tokens=2, potential=lambda s: 0.0))
    with pytest.raises(ValueError, match="guide site 'x'"):
        Importance(model, guide, num_samples=2, progress=False).run()


def test_guide_weights_are_p_over_q():
    lm = ToyLM(alphabet="ab")
    model = lambda: pyro.sample("x", LM("a", model=lm, max_tokens=2))
    guide = lambda: pyro.sample("x", LM("b", model=lm, max_tokens=2))
    post = Importance(model, guide, num_samples=8, progress=False).run()
    xs = [v["x"] for v in post.values]
    log_p = lm.score(["a"] * 8, xs, max_tokens=2).double()
    log_q = lm.score(["b"] * 8, xs, max_tokens=2).double()
    assert post.log_weights.tolist() == pytest.approx((log_p - log_q).tolist(), abs=1e-5)


def test_duplicate_site_names_are_an_error():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'z'"):
        Importance(model, num_samples=1, progress=False).run()


def test_rejection_bound_and_attempts():
    def positive():
        pyro.factor("bonus", torch.tensor(0.5))

    with pytest.raises(ValueError, match="log_likelihood_bound"):
        Rejection(positive, num_samples=1, max_attempts=4, progress=False).run()
    post = Rejection(positive, num_samples=3, max_attempts=100, log_likelihood_bound=1.0, progress=False).run()
    assert post.num_particles == 3

    def hopeless():
        pyro.factor("never", torch.tensor(-math.inf))

    with pytest.raises(InferenceError, match=r"accepted 0 of the 2 samples asked for in 50 attempts.*'never'"):
        Rejection(hopeless, num_samples=2, max_attempts=50, progress=False).run()


def test_posterior_traces_and_progress_bar(cascade, capsys):
    post = Importance(cascade, num_samples=8, progress=True).run()
    tr = post.traces[0]
    assert tr.nodes["check"]["is_observed"] and tr.nodes["check"]["value"] == "a"
    assert isinstance(tr.nodes["work"]["value"], str) and not tr.nodes["work"]["is_observed"]
    assert tr.nodes["_RETURN"]["value"] == post.return_values[0]
    assert post.values[0]["check"] == "a"


def test_argument_errors():
    with pytest.raises(ValueError, match="Importance: num_samples: expected an int >= 1, got 0"):
        Importance(lambda: None, num_samples=0)
    with pytest.raises(TypeError, match="SMC: model"):
        SMC("model", num_particles=2)
    with pytest.raises(ValueError, match="ess_threshold"):
        SMC(lambda: None, num_particles=2, ess_threshold=1.5)


def test_condition_and_plate():
    lm = ToyLM(alphabet="ab")

    def model():
        x = pyro.sample("x", LM("a", model=lm, max_tokens=2))
        pyro.sample("check", LM(x, model=lm, max_tokens=1))
        return x

    conditioned = pyro.condition(model, data={"check": "a"})
    post = Importance(conditioned, num_samples=16, progress=False).run()
    expected = lm.score([v["x"] for v in post.values], ["a"] * 16, max_tokens=1).double()
    assert post.log_weights.tolist() == pytest.approx(expected.tolist(), abs=1e-5)

    def steered_in_a_plate():
        with pyro.plate("n", 2):
            pyro.sample("xs", LM("a", model=lm, max_tokens=2, potential=lambda s: 0.0))

    with pytest.raises(NotImplementedError, match=r"site 'xs'.*potential.*plate"):
        Importance(steered_in_a_plate, num_samples=2, progress=False).run()


@pytest.mark.parametrize("algorithm", ["importance", "smc"])
def test_lm_sites_in_a_vectorised_plate_match_enumeration(algorithm):
    # xs: three strings in one plate site; ys: two observed strings in another, prompted by xs[0]
    lm = CountingLM(alphabet="ab")

    def model():
        with pyro.plate("p", 3):
            xs = pyro.sample("xs", LM("a", model=lm, max_tokens=2))
        with pyro.plate("q", 2):
            pyro.sample("ys", LM(xs[0], model=lm, max_tokens=1), obs=["a", "b"])
        return xs[0]

    values = ["", "a", "b", "aa", "ab", "ba", "bb"]
    prior = LM("a", model=lm, max_tokens=2).log_prob_batch(values).double()
    obs = torch.stack([LM(v, model=lm, max_tokens=1).log_prob_batch(["a", "b"]).double().sum() for v in values])
    joint = prior + obs
    exact_z = float(torch.logsumexp(joint, 0))
    exact = dict(zip(values, torch.softmax(joint, 0).tolist(), strict=True))
    lm.sample_calls.clear()
    lm.score_calls.clear()

    pyro.set_rng_seed(0)
    Alg = Importance if algorithm == "importance" else SMC
    kwargs = {"num_samples": 4000} if algorithm == "importance" else {"num_particles": 4000}
    post = Alg(model, progress=False, **kwargs).run()
    assert post.log_evidence == pytest.approx(exact_z, abs=0.03)
    m = post.marginal()
    assert max(abs(m[v] - exact[v]) for v in values) < 0.03
    assert all(len(v["xs"]) == 3 for v in post.values)
    # one batched call per round, the plate's strings inside it
    assert lm.sample_calls == [3 * 4000] and len(lm.score_calls) == 1


def test_observed_plate_value_must_be_a_list_of_its_size():
    lm = ToyLM(alphabet="ab")

    def model():
        with pyro.plate("q", 2):
            pyro.sample("ys", LM("a", model=lm, max_tokens=1), obs=["a"])

    with pytest.raises((TypeError, ValueError), match="ys"):
        Importance(model, num_samples=2, progress=False).run()


def test_inline_lambda_potentials_are_steered_together():
    # every particle re-runs the model, so an inline lambda is a new object in each; the
    # particles must still form one steering group, with token-level resampling
    lm = ToyLM(alphabet="ab", seed=3, eos_bias=-8.0)

    def pot(s):
        return 0.0 if s.count("b") <= 1 else -math.inf

    def shared():
        return pyro.sample("x", LM("a", model=lm, max_tokens=10, potential=pot))

    def inline():
        return pyro.sample(
            "x", LM("a", model=lm, max_tokens=10, potential=lambda s: 0.0 if s.count("b") <= 1 else -math.inf)
        )

    results = {}
    for name, model in (("shared", shared), ("inline", inline)):
        pyro.set_rng_seed(0)
        alg = Importance(model, num_samples=200, progress=False)
        post = alg.run()
        results[name] = (alg.engine.num_steering_resamples, post.log_evidence)
    assert results["inline"][0] > 0
    assert results["inline"] == results["shared"]


def test_potentials_closing_over_different_values_are_not_merged():
    from llmppl.inference.engine import potential_key

    def make(k):
        return lambda s: -k * len(s)

    assert potential_key(make(1.0)) == potential_key(make(1.0))
    assert potential_key(make(1.0)) != potential_key(make(2.0))
    assert potential_key(make([1])) != potential_key(make([1]))  # unhashable: by identity


def test_a_blocked_site_is_named_in_the_replay_error():
    lm = ToyLM(alphabet="ab")

    def model():
        with pyro.poutine.block():
            z = pyro.sample("z", dist.Bernoulli(0.5))
        x = pyro.sample("x", LM("a" if z else "b", model=lm, max_tokens=2))
        return pyro.sample("y", LM(x + "a", model=lm, max_tokens=2))

    with pytest.raises(ReplayError, match=r"poutine\.block"):
        for seed in range(20):  # the hidden draw differs between rounds in some particle
            pyro.set_rng_seed(seed)
            Importance(model, num_samples=16, progress=False).run()
