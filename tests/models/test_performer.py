"""PerformerLM: forward vs decoding, batched prefill, state, checkpoints, bad input."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmppl.models import CheckpointError, LanguageModel, PerformerConfig, PerformerLM


@pytest.fixture
def lm():
    torch.manual_seed(0)
    model = PerformerLM(PerformerConfig.tiny(num_features=32)).eval()
    with torch.no_grad():  # larger weights than the init, so the test sees real differences
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


def _full_logprobs(lm, ids):
    return torch.log_softmax(lm(torch.tensor([ids])).float(), -1)[0]


def test_is_a_language_model(lm):
    assert isinstance(lm, LanguageModel)
    assert lm.encode_prompt("") == [lm.tokenizer.bos_id]


def test_decoding_matches_forward(lm):
    ids = lm.encode_prompt("Q: 12+34\nWork: 2+4=6 c0")
    full = _full_logprobs(lm, ids)
    state = lm.prefill([ids[:1]])
    for t in range(1, len(ids)):
        torch.testing.assert_close(lm.next_logprobs(state)[0], full[t - 1], atol=2e-5, rtol=1e-5)
        state = lm.advance(state, torch.tensor([ids[t]]))
    torch.testing.assert_close(lm.next_logprobs(state)[0], full[-1], atol=2e-5, rtol=1e-5)


def test_prefill_mixed_lengths_in_one_call(lm):
    prompts = [lm.encode_prompt(s) for s in ["", "ab", "a much longer prompt"]]
    state = lm.prefill(prompts)
    assert state.positions.tolist() == [len(p) for p in prompts]
    for i, p in enumerate(prompts):
        torch.testing.assert_close(lm.next_logprobs(state)[i], _full_logprobs(lm, p)[-1], atol=2e-5, rtol=1e-5)
    # then one batched step continues each sequence correctly
    nxt = torch.tensor([65, 66, 67])
    state = lm.advance(state, nxt)
    for i, p in enumerate(prompts):
        want = _full_logprobs(lm, [*p, int(nxt[i])])[-1]
        torch.testing.assert_close(lm.next_logprobs(state)[i], want, atol=2e-5, rtol=1e-5)


def test_select_copies_and_advance_leaves_input(lm):
    state = lm.prefill([lm.encode_prompt("xy")])
    before = lm.next_logprobs(state).clone()
    forks = state.select(torch.tensor([0, 0]))
    out = lm.advance(forks, torch.tensor([1, 2]))
    torch.testing.assert_close(lm.next_logprobs(state), before)
    assert not torch.equal(out.logprobs[0], out.logprobs[1])
    assert out.layers[0].S.shape[0] == 2


def test_state_size_is_constant(lm):
    short = lm.prefill([lm.encode_prompt("a")])
    long = lm.prefill([lm.encode_prompt("a" * 300)])
    assert short.nbytes_per_sequence() == long.nbytes_per_sequence()


def test_longer_than_training_prompt_works(lm):
    state = lm.prefill([lm.encode_prompt("z" * 5000)])
    lp = lm.next_logprobs(lm.advance(state, torch.tensor([65])))
    assert torch.isfinite(lp).all()
    assert math.isclose(lp.exp().sum().item(), 1.0, rel_tol=1e-4)


def test_sequence_tier_is_exact(lm):
    completions = lm.sample(["Q:"] * 3, max_tokens=4, stop="\n", generator=torch.Generator().manual_seed(0))
    scores = lm.score(["Q:"] * 3, [c.text for c in completions], max_tokens=4, stop="\n")
    torch.testing.assert_close(
        scores.float(), torch.tensor([c.log_prob for c in completions]).float(), atol=1e-4, rtol=1e-4
    )


def test_generate_greedy_matches_argmax(lm):
    out = lm.generate("abc", max_tokens=6, stop=None)
    ids = lm.encode_prompt("abc")
    generated = lm.tokenizer.encode(out)
    for ch in generated:
        assert int(_full_logprobs(lm, ids)[-1][:258].argmax()) == ch
        ids.append(ch)
    if len(generated) < 6:  # ended by EOS
        assert int(_full_logprobs(lm, ids)[-1][:258].argmax()) == lm.tokenizer.eos_id


def test_generate_stops_at_the_earliest_of_several_stop_strings(lm):
    # sampled, with stops cut from the text itself; each generate draws the same tokens
    def draw(stop):
        return lm.generate(
            ["Q:"] * 3, max_tokens=10, stop=stop, greedy=False, generator=torch.Generator().manual_seed(3)
        )

    full = draw(None)
    i, text = max(enumerate(full), key=lambda t: len(t[1]))
    assert len(text) >= 8, full
    # a later, longer stop and an earlier one; two that end at the same byte
    for stops in ([text[5:8], text[2:4]], [text[3:6], text[4:6]]):
        cut = min(text.find(s) for s in stops)
        assert draw(stops)[i] == text[:cut], (text, stops)
    with pytest.raises(ValueError, match="generate: stop"):
        lm.generate("Q:", stop=[""])


def test_out_of_range_token_ids(lm):
    with pytest.raises(ValueError, match="prompt token ids"):
        lm.prefill([[256, 999]])
    with pytest.raises(ValueError, match="tokens"):
        lm.advance(lm.prefill([[256]]), torch.tensor([-1]))
    with pytest.raises(ValueError, match="at least one token"):
        lm.prefill([[]])


def test_float_token_ids_are_an_error_not_truncated(lm):
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        lm.prefill([[256, 1.5]])
    with pytest.raises(TypeError, match="integer ids"):
        lm.tokenizer.decode([104, 1.5])
    assert lm.tokenizer.decode(torch.tensor([104, 105])) == "hi"


def test_half_precision_and_autocast_match_float32():
    torch.manual_seed(0)
    ref = PerformerLM(PerformerConfig.tiny()).eval()
    prompts = [ref.encode_prompt("Q: 12+34"), ref.encode_prompt("")]
    nxt = torch.tensor([65, 66])
    want_prefill = ref.next_logprobs(ref.prefill(prompts))
    want_step = ref.next_logprobs(ref.advance(ref.prefill(prompts), nxt))
    want_forward = _full_logprobs(ref, prompts[0])
    for dtype in (torch.bfloat16, torch.float16):
        half = PerformerLM(PerformerConfig.tiny()).eval()
        half.load_state_dict(ref.state_dict())
        half.to(dtype)
        state = half.prefill(prompts)
        assert state.layers[0].S.dtype == torch.float32  # the state accumulates in float32
        torch.testing.assert_close(half.next_logprobs(state), want_prefill, atol=0.1, rtol=0)
        torch.testing.assert_close(half.next_logprobs(half.advance(state, nxt)), want_step, atol=0.1, rtol=0)
        torch.testing.assert_close(_full_logprobs(half, prompts[0]), want_forward, atol=0.1, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ref.next_logprobs(ref.advance(ref.prefill(prompts), nxt))
    torch.testing.assert_close(got, want_step, atol=0.1, rtol=0)


def test_output_rows_past_the_byte_vocabulary_are_never_generated():
    torch.manual_seed(0)
    lm = PerformerLM(PerformerConfig.tiny(vocab_size=300)).eval()
    # the 41 extra rows hold ~14% of the model's mass: 32 unbanned draws would hit one
    assert lm.next_logprobs(lm.prefill([lm.encode_prompt("Q:")]))[0, 259:].exp().sum() > 0.1
    cs = lm.sample(["Q:"] * 8, max_tokens=4, stop="\n", generator=torch.Generator().manual_seed(0))
    assert all(t < 258 for c in cs for t in c.tokens)
    scores = lm.score(["Q:"] * 8, [c.text for c in cs], max_tokens=4, stop="\n")
    torch.testing.assert_close(scores.float(), torch.tensor([c.log_prob for c in cs]).float(), atol=1e-4, rtol=1e-4)
    # greedy generate takes the best allowed token
    out = lm.generate("Q:", max_tokens=1, stop=None)
    assert lm.tokenizer.encode(out) == [int(lm.step_logprobs(lm.prefill([lm.encode_prompt("Q:")]))[0, :257].argmax())]


def test_checkpoint_round_trip(lm, tmp_path):
    lm.save_pretrained(tmp_path)
    back = PerformerLM.from_pretrained(tmp_path)
    ids = torch.tensor([lm.encode_prompt("hello")])
    torch.testing.assert_close(back(ids), lm(ids))
    assert json.loads((tmp_path / "config.json").read_text())["config"]["d_model"] == 32


def test_checkpoint_shape_mismatch_names_tensor(lm, tmp_path):
    lm.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["blocks.0.qkv.weight"] = tensors["blocks.0.qkv.weight"][:, :-1].contiguous()
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.qkv\.weight.*shape"):
        PerformerLM.from_pretrained(tmp_path)


def test_checkpoint_config_mismatch(lm, tmp_path):
    lm.save_pretrained(tmp_path)
    payload = json.loads((tmp_path / "config.json").read_text())
    payload["config"]["d_model"] = 64
    payload["config"]["n_heads"] = 2
    (tmp_path / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"embed\.weight"):
        PerformerLM.from_pretrained(tmp_path)


def test_checkpoint_with_nan_refuses(lm, tmp_path):
    lm.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["norm.weight"][0] = float("nan")
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"norm\.weight.*NaN"):
        PerformerLM.from_pretrained(tmp_path)


def test_checkpoint_checks_finiteness_after_the_cast(lm, tmp_path):
    lm.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["norm.weight"] = torch.full_like(tensors["norm.weight"], 1e300, dtype=torch.float64)  # inf in float32
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"norm\.weight.*infinity"):
        PerformerLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"rotary_base": "abc"}, "rotary_base"),
        ({"vocab_size": 100}, "vocab_size >= 259"),
        ({"num_features": 2.5}, "num_features"),
    ],
)
def test_checkpoint_with_a_bad_config_value(lm, tmp_path, change, match):
    lm.save_pretrained(tmp_path)
    payload = json.loads((tmp_path / "config.json").read_text())
    payload["config"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=match):
        PerformerLM.from_pretrained(tmp_path)


def test_malformed_checkpoint_files_name_the_file(lm, tmp_path):
    lm.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        PerformerLM.from_pretrained(tmp_path)
    lm.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        PerformerLM.from_pretrained(tmp_path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        PerformerLM.from_pretrained(os.fspath(tmp_path))


def test_bad_config():
    with pytest.raises(ValueError, match="d_model divisible by n_heads"):
        PerformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match=r"norm_eps.*> 0"):
        PerformerConfig(norm_eps=-1)
    with pytest.raises(ValueError, match="rotary_base"):
        PerformerConfig(rotary_base=float("nan"))
    with pytest.raises(TypeError, match=r"rotary_base.*'abc'"):
        PerformerConfig(rotary_base="abc")
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        PerformerConfig(vocab_size=258)


def test_training_reduces_loss():
    torch.manual_seed(0)
    model = PerformerLM(PerformerConfig.tiny())
    ids = torch.tensor([model.encode_prompt("abcabcabcabc")])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = model.loss(ids).item()
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(ids)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
