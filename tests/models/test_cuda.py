"""The Performer model on a CUDA GPU against the same weights on the CPU.

Forward log-probabilities, token-by-token decoding, greedy generation, string scores
and one training step's gradients must agree between the devices, and sampling, exact
scores and a cascade's inference must run on the GPU model. Everything skips
without a GPU (``scripts/gpu_check.sh`` runs it on a lent one).
"""

import math

import pytest
import torch

from llmppl.models import load_pretrained
from llmppl.models.train import _weighted_loss, make_batch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROMPTS = ["Q: 472+385\nWork:", "Q: 12+9\nA:", "", "Object: penguin. Q: Can it fly? A:"]


@pytest.fixture(scope="module")
def pair():
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    return load_pretrained(), load_pretrained(device="cuda")


def test_forward_log_probs_match_cpu(pair):
    cpu, gpu = pair
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (3, 300), generator=g)
    ids[:, 0] = cpu.tokenizer.bos_id
    with torch.no_grad():
        a = cpu(ids).log_softmax(-1)
        b = gpu(ids.cuda()).log_softmax(-1).cpu()
    torch.testing.assert_close(b, a, atol=2e-3, rtol=1e-3)


def test_decoding_step_by_step_matches_the_forward_pass(pair):
    _, gpu = pair
    prompts = [gpu.encode_prompt(p) for p in PROMPTS]
    state = gpu.prefill(prompts)
    g = torch.Generator().manual_seed(1)
    steps = torch.randint(0, 256, (len(prompts), 20), generator=g)
    got = []
    for t in range(steps.shape[1]):
        got.append(gpu.next_logprobs(state).cpu())
        state = gpu.advance(state, steps[:, t].cuda())
    got = torch.stack(got, 1)  # (N, T, vocab)
    for i, p in enumerate(prompts):
        ids = torch.tensor([p + steps[i, :-1].tolist()], device="cuda")
        with torch.no_grad():
            full = gpu(ids).log_softmax(-1)[0, len(p) - 1 :].cpu()
        torch.testing.assert_close(got[i], full, atol=2e-3, rtol=1e-3)


def test_greedy_generation_and_scores_match_cpu(pair):
    cpu, gpu = pair
    prompts = ["Q: 472+385\nWork:", "Q: 31+60\nA:", "Object: penguin. Q: Can it fly? A:"]
    assert gpu.generate(prompts, max_tokens=60, stop="\n") == cpu.generate(prompts, max_tokens=60, stop="\n")
    for p in prompts:
        assert gpu.score_text(p, " yes") == pytest.approx(cpu.score_text(p, " yes"), abs=2e-3)


def test_a_training_step_has_the_cpus_gradients(pair):
    cpu, gpu = pair
    ids, w, _ = make_batch(3, seed=0, batch_tokens=2000, weights={"scratchpad": 1.0}, tokenizer=cpu.tokenizer)
    grads = []
    for lm, dev in ((cpu, "cpu"), (gpu, "cuda")):
        lm.zero_grad(set_to_none=True)
        loss = _weighted_loss(lm, ids.to(dev), w.to(dev))
        loss.backward()
        grads.append((loss.item(), {n: p.grad.detach().cpu() for n, p in lm.named_parameters()}))
        lm.zero_grad(set_to_none=True)
    (la, ga), (lb, gb) = grads
    assert lb == pytest.approx(la, rel=1e-4)
    for name in ga:
        scale = ga[name].abs().max().clamp_min(1e-8)
        err = (gb[name] - ga[name]).abs().max() / scale
        assert err < 1e-2, f"{name}: max relative gradient error {err:.3g}"


def test_sampling_scoring_and_inference_run_on_the_gpu_model(pair):
    cpu, gpu = pair
    prompt = "Q: 472+385\nWork:"
    value = " 2+5=7 c0; 7+8+0=15 c1; 4+3+1=8 c0"
    kw = {"max_tokens": 48, "stop": "\n"}
    assert gpu.score(prompt, [value], **kw).item() == pytest.approx(cpu.score(prompt, [value], **kw).item(), abs=2e-3)
    # draws with a CPU generator (as the inference engine makes them); each log_prob is its score
    draws = gpu.sample([prompt] * 6, generator=torch.Generator().manual_seed(0), **kw)
    scores = gpu.score([prompt] * 6, [c.text for c in draws], **kw)
    for c, s in zip(draws, scores.tolist(), strict=True):
        assert c.log_prob == pytest.approx(s, abs=1e-3)
    from llmppl.cascades.scratchpads import run_example

    out = run_example("472+385", model=gpu, num_particles=8)
    assert math.isfinite(out["posterior"].log_evidence) and out["answer"] == "857"
