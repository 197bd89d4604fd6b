"""Statistical correctness on enumerable cascades: unbiased evidence, marginals, exact rejection samples."""

import itertools
import math

import pyro
import pytest
import torch

from llmppl.distributions import LM
from llmppl.inference import SMC, Importance, Rejection
from llmppl.models import ToyLM

NUM_RUNS = 200
SMALL = 8  # particles per run in the evidence tests: small, so the estimates vary and bias would show


def _evidence_runs(make, runs=NUM_RUNS):
    est = torch.tensor([math.exp(make().run().log_evidence) for _ in range(runs)], dtype=torch.float64)
    assert torch.isfinite(est).all()
    return float(est.mean()), float(est.std() / math.sqrt(runs))


def _check(mean, se, exact):
    assert se > 0
    assert abs(mean - exact) < 3 * se, f"mean {mean:.5f} vs exact {exact:.5f} (3 SE = {3 * se:.5f})"


def test_importance_evidence_unbiased(cascade, cascade_exact):
    mean, se = _evidence_runs(lambda: Importance(cascade, num_samples=SMALL, progress=False))
    _check(mean, se, cascade_exact[0])


def test_importance_with_guide_evidence_unbiased(cascade, cascade_exact):
    mean, se = _evidence_runs(lambda: Importance(cascade, cascade.guide, num_samples=SMALL, progress=False))
    _check(mean, se, cascade_exact[0])


@pytest.mark.parametrize(
    "resampling",
    [
        "systematic",
        "multinomial",
        "stratified",
        "residual",
    ],
)
def test_smc_evidence_unbiased(cascade, cascade_exact, resampling):
    smc = SMC(cascade, num_particles=SMALL, ess_threshold=0.9, resampling=resampling, progress=False)
    mean, se = _evidence_runs(lambda: smc)
    _check(mean, se, cascade_exact[0])


def test_smc_resamples(cascade):
    smc = SMC(cascade, num_particles=SMALL, ess_threshold=0.9, progress=False)
    resamples = 0
    for _ in range(20):
        smc.run()
        resamples += smc.num_resamples
    assert resamples >= 10  # the evidence tests above exercise resampling, not plain IS


@pytest.mark.parametrize("algorithm", ["Importance", "SMC"])
def test_steering_evidence_unbiased(steered, steered_exact, algorithm):
    if algorithm == "Importance":
        make = lambda: Importance(steered, num_samples=SMALL, progress=False)
    else:
        make = lambda: SMC(steered, num_particles=SMALL, ess_threshold=0.7, progress=False)
    mean, se = _evidence_runs(make)
    _check(mean, se, steered_exact[0])


def test_steering_resamples_inside_the_site(steered):
    smc = SMC(steered, num_particles=64, ess_threshold=0.95, progress=False)
    smc.run()
    assert smc.engine.num_steering_resamples > 0


def _tv(estimate, exact):
    keys = set(estimate) | set(exact)
    return 0.5 * sum(abs(estimate.get(k, 0.0) - exact.get(k, 0.0)) for k in keys)


@pytest.mark.parametrize("algorithm", ["Importance", "SMC"])
def test_cascade_marginals_tv(cascade, cascade_exact, algorithm):
    if algorithm == "Importance":
        post = Importance(cascade, num_samples=4000, progress=False).run()
    else:
        post = SMC(cascade, num_particles=4000, progress=False).run()
    _, work, answer = cascade_exact
    assert _tv(post.marginal("work").probs, work) < 0.05
    assert _tv(post.marginal("answer").probs, answer) < 0.05
    assert _tv(post.marginal().probs, answer) < 0.05  # the return value is the answer


def test_steered_marginal_tv(steered, steered_exact):
    post = SMC(steered, num_particles=4000, progress=False).run()
    assert _tv(post.marginal("x").probs, steered_exact[1]) < 0.05
    assert all("bab" not in x for x in post.marginal("x").keys())


def _chi_square_p(counts: dict, probs: dict, n: int) -> float:
    """p-value of Pearson's chi-square test, rare cells pooled (expected < 5)."""
    cells = sorted(probs, key=lambda k: -probs[k])
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for k in cells:
        e = n * probs[k]
        if e >= 5:
            obs.append(counts.get(k, 0))
            exp.append(e)
        else:
            pool_o += counts.get(k, 0)
            pool_e += e
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    o, e = torch.tensor(obs, dtype=torch.float64), torch.tensor(exp, dtype=torch.float64)
    stat = float(((o - e) ** 2 / e).sum())
    dof = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)))


def test_rejection_goodness_of_fit(cascade, cascade_exact):
    n = 300
    rej = Rejection(cascade, num_samples=n, max_attempts=50_000, progress=False)
    post = rej.run()
    assert post.num_particles == n and post.ess == pytest.approx(n)
    counts = {}
    for a in post.return_values:
        counts[a] = counts.get(a, 0) + 1
    _, _, answer = cascade_exact
    assert _chi_square_p(counts, answer, n) > 1e-3
    # the acceptance rate estimates the evidence (all log-likelihood terms are <= 0 here)
    z = cascade_exact[0]
    assert abs(rej.acceptance_rate - z) < 4 * math.sqrt(z * (1 - z) / rej.num_attempts)


def test_chi_square_detects_a_wrong_distribution(cascade_exact):
    _, _, answer = cascade_exact
    wrong = {k: 300 / len(answer) for k in answer}  # uniform counts
    assert _chi_square_p(wrong, answer, 300) < 1e-3


def test_steering_decodes_like_lm():
    """With a zero potential, steered values follow LM exactly (temperature, top_k, stop, EOS, max_tokens)."""
    lm = ToyLM(alphabet="abc", seed=3, eos_bias=-1.5)
    kw = {"max_tokens": 3, "stop": "cb", "temperature": 0.7, "top_k": 2}

    def model():
        return pyro.sample("x", LM("a", model=lm, potential=lambda s: 0.0, **kw))

    post = SMC(model, num_particles=4000, progress=False).run()
    assert post.log_evidence == 0.0  # a zero potential never changes a weight
    values = ["".join(t) for n in range(4) for t in itertools.product("abc", repeat=n)]
    exact = dict(zip(values, lm.score(["a"] * len(values), values, **kw).exp().tolist(), strict=True))
    assert abs(sum(exact.values()) - 1) < 1e-4
    assert _tv(post.marginal("x").probs, exact) < 0.05
