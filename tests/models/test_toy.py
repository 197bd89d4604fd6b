"""ToyLM: deterministic, prefix-dependent, batched prefill equal to step-by-step."""

import pytest
import torch

from llmppl.models import CharTokenizer, LanguageModel, ToyLM


def test_same_seed_same_model_other_seed_other_model():
    a, b, c = ToyLM(seed=5), ToyLM(seed=5), ToyLM(seed=6)
    s = [a.encode_prompt("abba")]
    torch.testing.assert_close(a.next_logprobs(a.prefill(s)), b.next_logprobs(b.prefill(s)))
    assert not torch.allclose(a.next_logprobs(a.prefill(s)), c.next_logprobs(c.prefill(s)))


def test_state_depends_on_the_whole_prefix():
    lm = ToyLM(seed=0)
    lp = lm.next_logprobs(lm.prefill([lm.encode_prompt(p) for p in ["ab", "bb", "aab", "bab"]]))
    assert len({tuple(row.round(decimals=5).tolist()) for row in lp}) == 4


def test_prefill_of_mixed_lengths_equals_advance_token_by_token():
    lm = ToyLM(alphabet="abc", seed=2)
    prompts = ["", "c", "abcab"]
    batched = lm.next_logprobs(lm.prefill([lm.encode_prompt(p) for p in prompts]))
    for i, p in enumerate(prompts):
        state = lm.prefill([[lm.tokenizer.bos_id]])
        for t in lm.tokenizer.encode(p):
            state = lm.advance(state, torch.tensor([t]))
        torch.testing.assert_close(lm.next_logprobs(state)[0], batched[i])


def test_logprobs_are_normalised_float32():
    lm = ToyLM(alphabet="xyz")
    lp = lm.next_logprobs(lm.prefill([lm.encode_prompt("xy")]))
    assert lp.dtype == torch.float32 and lp.shape == (1, 5)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(1))


def test_empty_prompt_decodes_from_bos_and_bos_is_never_generated():
    lm = ToyLM()
    assert lm.encode_prompt("") == [lm.tokenizer.bos_id]
    assert lm.step_logprobs(lm.prefill([lm.encode_prompt("")]))[0, lm.tokenizer.bos_id] == float("-inf")


def test_char_tokenizer_round_trip_and_errors():
    tok = CharTokenizer("ab\n")
    assert tok.decode(tok.encode("a\nb")) == "a\nb"
    with pytest.raises(ValueError, match="alphabet"):
        tok.encode("abc")
    with pytest.raises(ValueError, match="character id"):
        tok.decode([tok.eos_id])
    with pytest.raises(ValueError, match="alphabet"):
        CharTokenizer("aa")
    with pytest.raises(TypeError, match="alphabet"):
        CharTokenizer(["a"])


def test_is_a_language_model():
    assert isinstance(ToyLM(), LanguageModel)
    assert repr(ToyLM("ab", seed=3)) == "ToyLM(alphabet='ab', seed=3)"
