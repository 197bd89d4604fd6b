"""Shared test set-up: a seeded RNG for every test and a cached extension build."""

import os

import pyro
import pytest
import torch

os.environ.setdefault(
    "LLMPPL_EXTENSIONS_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "build", "extensions")
)


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    torch.manual_seed(0)
    yield
