"""The resampler registry: unbiased offspring counts, zero weights never chosen, clear errors."""

import math

import pytest
import torch

from llmppl.inference import RESAMPLERS, get_resampler, resample

WEIGHTS = torch.tensor([0.05, 0.2, 0.3, 0.0, 0.15, 0.3], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(RESAMPLERS))
def test_offspring_counts_are_unbiased(name):
    n, reps = len(WEIGHTS), 4000
    log_w = WEIGHTS.log()
    counts = torch.stack([torch.bincount(resample(name, log_w), minlength=n).double() for _ in range(reps)])
    mean = counts.mean(0)
    expected = n * WEIGHTS
    # binomial variance bounds every scheme's count variance
    se = (n * WEIGHTS * (1 - WEIGHTS) / reps).sqrt()
    assert (mean - expected).abs().le(4 * se + 1e-12).all(), (mean, expected)
    assert counts[:, 3].sum() == 0  # zero weight: never an ancestor
    assert (counts.sum(1) == n).all()


@pytest.mark.parametrize("name", ["stratified", "systematic", "residual"])
def test_low_variance_schemes_beat_multinomial(name):
    log_w = WEIGHTS.log()
    var = lambda f: torch.stack([torch.bincount(f(log_w, 6), minlength=6).double() for _ in range(2000)]).var(0)
    assert var(RESAMPLERS[name]).sum() < var(RESAMPLERS["multinomial"]).sum()


def test_a_biased_scheme_would_fail():
    """The unbiasedness check above can fail: keeping only the heaviest particle is biased."""
    n = len(WEIGHTS)
    mean = torch.bincount(WEIGHTS.argmax().repeat(n), minlength=n).double()
    se = (n * WEIGHTS * (1 - WEIGHTS) / 4000).sqrt()
    assert not (mean - n * WEIGHTS).abs().le(4 * se + 1e-12).all()


def test_registry_error_lists_valid_names():
    with pytest.raises(ValueError, match=r"multinomial.*residual.*stratified.*systematic.*got 'best'"):
        get_resampler("best")


def test_callable_resampler_and_bad_weights():
    assert get_resampler(len) is len
    with pytest.raises(ValueError, match="all -inf"):
        resample("systematic", torch.full((3,), -math.inf))
    with pytest.raises(ValueError, match="NaN"):
        resample("systematic", torch.tensor([0.0, math.nan]))


def test_extreme_log_weights():
    idx = resample("systematic", torch.tensor([-1e4, 0.0, -1e4, -math.inf]), 5)
    assert idx.tolist() == [1] * 5
