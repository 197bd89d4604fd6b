"""StringDistribution basics, Delta and Categorical."""

import math
from collections import Counter

import pytest
import torch

from llmppl.distributions import Categorical, Delta, IIDStrings, StringDistribution, string


def test_shapes_support_and_expand():
    d = Delta("a")
    assert isinstance(d, StringDistribution)
    assert d.batch_shape == () and d.event_shape == ()
    assert d.support is string and bool(string.check("x")) and not bool(string.check(1))
    assert d.expand(()) is d and d.expand([]) is d
    e = d.expand((3,))
    assert isinstance(e, IIDStrings) and e.batch_shape == (3,) and e.expand((3,)) is e
    assert d.expand((3, 1)).batch_shape == (3, 1)  # a plate at dim -2
    with pytest.raises(NotImplementedError, match="plate"):
        d.expand((2, 3))


def test_iid_strings_value_checks():
    e = Delta("a").expand((2,))
    assert e.log_prob(["a", "b"]).tolist() == [0.0, -math.inf]
    with pytest.raises(TypeError, match="list"):
        e.log_prob("ab")
    with pytest.raises(ValueError, match="plate size"):
        e.log_prob(["a"])


def test_delta():
    d = Delta("yes", log_density=-1.5)
    assert d.sample() == "yes" and d.sample((2,)) == ["yes", "yes"]
    assert d.log_prob("yes").item() == -1.5 and d.log_prob("no").item() == -math.inf
    with pytest.raises(TypeError, match="value"):
        Delta(3)
    with pytest.raises(TypeError, match="value"):
        d.log_prob(None)
    assert repr(Delta("x" * 100)).startswith("Delta('xxxx") and "…" in repr(Delta("x" * 100))


def test_categorical_probs_logits_duplicates():
    d = Categorical(["a", "b", "a"], probs=[1.0, 2.0, 1.0])
    torch.testing.assert_close(d.log_prob("a").exp(), torch.tensor(0.5))
    torch.testing.assert_close(d.log_prob("b").exp(), torch.tensor(0.5))
    assert d.log_prob("c").item() == -math.inf
    lg = Categorical(["x", "y"], logits=[0.0, math.log(3.0)])
    torch.testing.assert_close(lg.log_prob("y").exp(), torch.tensor(0.75))
    u = Categorical(["p", "q", "r", "s"])
    torch.testing.assert_close(u.log_prob("r").exp(), torch.tensor(0.25))
    neg = Categorical(["x", "y"], logits=[0.0, -math.inf])
    assert neg.log_prob("y").item() == -math.inf and neg.sample((20,)) == ["x"] * 20


def test_categorical_sample_frequencies():
    d = Categorical(["a", "b", "c"], probs=[0.2, 0.3, 0.5])
    counts = Counter(d.sample((6000,)))
    for v, p in zip("abc", [0.2, 0.3, 0.5], strict=True):
        assert abs(counts[v] / 6000 - p) < 4 * math.sqrt(p * (1 - p) / 6000)  # 4 sigma: false alarm < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(values="abc"), TypeError, "values"),
        (dict(values=[]), ValueError, "values"),
        (dict(values=["a", 1]), TypeError, r"values\[1\]"),
        (dict(values=["a"], probs=[1.0], logits=[0.0]), ValueError, "not both"),
        (dict(values=["a", "b"], probs=[1.0]), ValueError, "probs"),
        (dict(values=["a", "b"], probs=[1.0, -1.0]), ValueError, "probs"),
        (dict(values=["a", "b"], probs=[0.0, 0.0]), ValueError, "probs"),
        (dict(values=["a", "b"], logits=[0.0, float("nan")]), ValueError, "logits"),
        (dict(values=["a", "b"], logits=[[0.0, 1.0]]), ValueError, "logits"),
    ],
)
def test_categorical_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        Categorical(**kwargs)
    if "values" in kwargs and isinstance(kwargs["values"], list) and len(kwargs) == 1:
        return


def test_categorical_repr():
    assert repr(Categorical(["a", "b"])) == "Categorical(['a', 'b'])"
    assert repr(Categorical([str(i) for i in range(10)])).endswith(", …])")
