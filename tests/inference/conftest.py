"""Shared fixtures: a seeded RNG, tiny enumerable cascades on ToyLM, and their exact posteriors."""

import itertools
import math

import pyro
import pytest
import torch

from llmppl.distributions import LM
from llmppl.models import ToyLM


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: intra-op threads only wait on each other on a shared, loaded machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def all_strings(alphabet: str, max_len: int) -> list[str]:
    return ["".join(t) for n in range(max_len + 1) for t in itertools.product(alphabet, repeat=n)]


class Cascade:
    """work ~ LM("a"); factor on len(work); answer ~ LM(work); verifier LM(answer + "b") observes "a"; factor."""

    def __init__(self, lm):
        self.lm = lm

    def __call__(self):
        lm = self.lm
        work = pyro.sample("work", LM("a", model=lm, max_tokens=3))
        pyro.factor("short", torch.tensor(-0.5 * len(work)))  # mid-program: SMC resamples before "answer"
        answer = pyro.sample("answer", LM(work, model=lm, max_tokens=2))
        pyro.sample("check", LM(answer + "b", model=lm, max_tokens=1), obs="a")
        # the future weight depends on the resampled "work", so a biased resampler shows in the evidence
        pyro.factor("agree", torch.tensor(-1.5 * abs(len(answer) - len(work))))
        return answer

    def guide(self):
        pyro.sample("work", LM("b", model=self.lm, max_tokens=3))
        pyro.sample("answer", LM("ab", model=self.lm, max_tokens=2))

    def exact(self):
        """(evidence, {work: prob}, {answer: prob}) by enumeration."""
        lm = self.lm
        works = all_strings("ab", 3)
        answers = all_strings("ab", 2)
        lw = lm.score(["a"] * len(works), works, max_tokens=3).double()
        lc = lm.score([a + "b" for a in answers], ["a"] * len(answers), max_tokens=1).double()
        joint = torch.empty(len(works), len(answers), dtype=torch.float64)
        for i, w in enumerate(works):
            la = lm.score([w] * len(answers), answers, max_tokens=2).double()
            agree = torch.tensor([-1.5 * abs(len(a) - len(w)) for a in answers], dtype=torch.float64)
            joint[i] = lw[i] + la + lc - 0.5 * len(w) + agree
        log_z = torch.logsumexp(joint.flatten(), 0)
        post = (joint - log_z).exp()
        return (
            float(log_z.exp()),
            dict(zip(works, post.sum(1).tolist(), strict=True)),
            dict(zip(answers, post.sum(0).tolist(), strict=True)),
        )


def digits_like(s: str) -> float:
    """A prefix-closed hard constraint (no "bab"), a soft preference for a's over b's."""
    return -math.inf if "bab" in s else 0.7 * s.count("a") - 1.0 * s.count("b")


class Steered:
    """x ~ LM("a", stop="bb", potential=digits_like); verifier observes "a" after x + "b"."""

    def __init__(self, lm):
        self.lm = lm

    def __call__(self):
        x = pyro.sample("x", LM("a", model=self.lm, max_tokens=4, stop="bb", potential=digits_like))
        pyro.sample("check", LM(x + "b", model=self.lm, max_tokens=1), obs="a")
        return x

    def exact(self):
        lm = self.lm
        xs = all_strings("ab", 4)
        lx = lm.score(["a"] * len(xs), xs, max_tokens=4, stop="bb").double()
        lc = lm.score([x + "b" for x in xs], ["a"] * len(xs), max_tokens=1).double()
        lf = torch.tensor([digits_like(x) for x in xs], dtype=torch.float64)
        joint = lx + lc + lf
        log_z = torch.logsumexp(joint, 0)
        return float(log_z.exp()), dict(zip(xs, (joint - log_z).exp().tolist(), strict=True))


@pytest.fixture(scope="session")
def toy_lm():
    return ToyLM(alphabet="ab", seed=0)


@pytest.fixture(scope="session")
def cascade(toy_lm):
    return Cascade(toy_lm)


@pytest.fixture(scope="session")
def steered():
    # longer strings than the default ToyLM, so intermediate twists matter
    return Steered(ToyLM(alphabet="ab", seed=0, eos_bias=-3.0))


@pytest.fixture(scope="session")
def cascade_exact(cascade):
    return cascade.exact()


@pytest.fixture(scope="session")
def steered_exact(steered):
    return steered.exact()
