import pytest
import torch

from helpers.sampling_info import info
from shardserve.engine.sampler import Sampler, _processed_probs


def random_logits(rows: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_and_top_k_1_take_the_argmax():
    logits = random_logits(3)
    out = Sampler(torch.device("cpu"))(logits, ["a", "b", "c"], [info(temperature=0.0), info(top_k=1), info(top_k=1, temperature=2.0)])
    assert [t for t, _, _ in out] == logits.argmax(-1).tolist()


def test_seeded_draws_do_not_depend_on_the_batch():
    logits = random_logits(4)
    alone = Sampler(torch.device("cpu"), seed=1)
    batch = Sampler(torch.device("cpu"), seed=2)
    got_alone = [alone(logits[2:3], ["x"], [info(seed=7)])[0][0] for _ in range(5)]
    got_batch = []
    for _ in range(5):
        out = batch(logits, ["p", "q", "x", "r"], [info(), info(seed=3), info(seed=7), info(temperature=0.5)])
        got_batch.append(out[2][0])
    assert got_alone == got_batch


def test_top_k_and_top_p_restrict_the_support():
    logits = random_logits(1, vocab=20)
    probs = _processed_probs(logits, [info(top_k=3)])
    assert (probs > 0).sum() == 3
    assert set(torch.nonzero(probs[0]).flatten().tolist()) == set(logits[0].topk(3).indices.tolist())
    sorted_p = torch.softmax(logits[0], -1).sort(descending=True).values
    k = int((sorted_p.cumsum(0) < 0.6).sum()) + 1  # smallest prefix reaching 0.6
    assert (_processed_probs(logits, [info(top_p=0.6)]) > 0).sum() == k


MIXED_MIN_P = (0.0, 0.05, 0.3, 1.0)


def test_top_p_1_keeps_every_token_however_small():
    """One dominant logit: the float32 running sum of the sorted probabilities reaches 1 before
    the tail, so a plain `mass before >= top_p` test would drop tokens that top_p 1 must keep."""
    logits = random_logits(2, vocab=64, seed=3)
    logits[:, 5] = 25.0  # the other tokens' probabilities are ~1e-11
    probs = _processed_probs(logits, [info(temperature=1.0), info(temperature=1.0, top_p=0.999)])
    assert bool((probs[0] > 0).all())
    assert (probs[1] > 0).sum().item() == 1  # below 1 top_p still cuts the tail

def min_p_reference(logits: torch.Tensor, temps, min_ps, top_ks=None) -> torch.Tensor:
    """transformers' order: temperature, top-k, then min-p against the top token's probability."""
    probs = torch.softmax(logits / torch.tensor(temps)[:, None], dim=-1)
    keep = probs >= torch.tensor(min_ps)[:, None] * probs.amax(dim=-1, keepdim=True)
    for r, k in enumerate(top_ks or []):
        if k:
            keep[r] &= probs[r] >= probs[r].topk(k).values[-1]
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


def test_min_p_filters_each_row_by_its_own_threshold():
    logits = random_logits(4, vocab=64, seed=5)
    temps, top_ks = (1.0, 0.7, 3.0, 1.2), (0, 0, 6, 0)
    rows = [info(temperature=t, top_k=k, min_p=m) for t, k, m in zip(temps, top_ks, MIXED_MIN_P, strict=True)]
    probs = _processed_probs(logits, rows)
    want = min_p_reference(logits, temps, MIXED_MIN_P, top_ks)
    assert torch.equal(probs > 0, want > 0)
    assert torch.allclose(probs, want, atol=1e-6)
    kept = (want > 0).sum(dim=-1).tolist()  # each filter bites: min_p even under top_k=6
    assert kept[0] == 64 and 6 < kept[1] < 64 and 1 < kept[2] < 6 and kept[3] == 1


def test_min_p_draws_stay_above_the_threshold_and_min_p_1_is_greedy():
    """Mixed min_p in one batch, seeded and not: a token under its row's threshold is never drawn,
    the draws follow the filtered distribution, and the logprobs stay the raw model's."""
    logits = random_logits(4, vocab=40, seed=6)
    temps = (1.5, 1.5, 1.5, 1.5)
    rows = [info(temperature=1.5, min_p=m, seed=s, logprobs=True)
            for m, s in zip(MIXED_MIN_P, (None, 11, None, 12), strict=True)]
    want = min_p_reference(logits, temps, MIXED_MIN_P)
    raw = torch.log_softmax(logits, dim=-1)
    sampler = Sampler(torch.device("cpu"), seed=0)
    counts = torch.zeros_like(logits)
    for _ in range(1500):
        for r, (token, lp, _) in enumerate(sampler(logits, ["a", "b", "c", "d"], rows)):
            counts[r, token] += 1
            assert lp == pytest.approx(float(raw[r, token]), abs=1e-6)
    assert not (counts * (want == 0)).any()  # nothing under a row's threshold, ever
    assert counts[3].nonzero().flatten().tolist() == [int(logits[3].argmax())]
    assert (counts[0] > 0).sum() > (counts[2] > 0).sum() > 1  # the filters did bite
    assert torch.allclose(counts / 1500, want, atol=0.05)


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    sampler = Sampler(torch.device("cpu"), seed=0)
    counts = torch.zeros(3)
    for _ in range(2000):
        counts[sampler(logits, ["a"], [info()])[0][0]] += 1
    assert torch.allclose(counts / 2000, torch.tensor([0.7, 0.2, 0.1]), atol=0.04)


def test_repetition_penalty_suppression_and_logprobs():
    logits = torch.tensor([[2.0, 1.9, -1.0, 0.5]])
    sampler = Sampler(torch.device("cpu"))
    (tok, lp, _), = sampler(logits, ["a"], [info(temperature=0.0, penalty_token_ids=[0], repetition_penalty=2.0, logprobs=True)])
    assert tok == 1  # 2.0 / 2 = 1.0 < 1.9
    assert abs(lp - torch.log_softmax(logits, -1)[0, 1].item()) < 1e-6
    (tok, _, _), = sampler(logits, ["b"], [info(temperature=0.0, suppress_token_ids=[0, 1])])
    assert tok == 3


def test_repetition_penalty_counts_the_newest_token_once():
    logits = torch.tensor([[2.0, 1.2, -1.0]])
    sampler = Sampler(torch.device("cpu"))
    penalised = info(temperature=0.0, penalty_token_ids=[2], repetition_penalty=2.0)
    assert sampler(logits, ["a"], [penalised])[0][0] == 0
    # Token 0 is the newest, still in flight: only the device knows it (2.0 / 2 < 1.2).
    assert sampler(logits, ["a"], [penalised], torch.tensor([0]))[0][0] == 1
    # Known twice and newest too: penalised once, as by HF (2.0 / 1.5 > 1.2 > 2.0 / 1.5**2).
    twice = info(temperature=0.0, penalty_token_ids=[0, 2, 0], repetition_penalty=1.5)
    assert sampler(logits, ["a"], [twice], torch.tensor([0]))[0][0] == 0


def test_repetition_penalty_tokens_persist_per_request_until_forgotten():
    """The prompt comes once (first step); later steps send no list, only the newest token."""
    logits = torch.tensor([[2.0, 1.8, 1.6, -1.0]])
    sampler = Sampler(torch.device("cpu"))
    later = info(temperature=0.0, repetition_penalty=2.0)  # no token list
    assert sampler(logits, ["a"], [info(temperature=0.0, penalty_token_ids=[3, 0], repetition_penalty=2.0)],
                   torch.tensor([0]))[0][0] == 1
    assert sampler(logits, ["a"], [later], torch.tensor([1]))[0][0] == 2  # 0 from the prompt, 1 newest
    assert sampler(logits, ["b"], [later], torch.tensor([3]))[0][0] == 0  # another request's own set
    sampler.forget(["a"])
    assert sampler(logits, ["a"], [later], torch.tensor([3]))[0][0] == 0  # a fresh set


def test_presence_and_frequency_penalties_count_output_tokens_only():
    """OpenAI: logit -= presence * [in the output] + frequency * count in the output. The first
    step's newest token is the prompt's last and is not counted; every later one is."""
    logits = random_logits(1, vocab=8, seed=3)
    sampler = Sampler(torch.device("cpu"))
    pen = info(temperature=0.0, presence_penalty=0.3, frequency_penalty=0.5)
    newest = [5, 1, 1, 2]  # prompt's last, then the outputs as they become inputs
    for token in newest:
        (tok, _, _), = sampler(logits, ["a"], [pen], torch.tensor([token]))
    counts = torch.zeros(8)
    for token in newest[1:]:
        counts[token] += 1
    expected = logits[0] - 0.3 * (counts > 0) - 0.5 * counts
    assert tok == int(expected.argmax())
    prompt, got_counts = sampler._penalty_state["a"]
    assert got_counts.tolist() == counts.int().tolist() and not prompt.any()


def test_top_logprobs_are_the_raw_distributions_largest_per_row():
    """Rows asking for different counts in one batch (and one asking for none): each gets its own
    count of the model's largest log-probabilities, most likely first, beside its token's."""
    logits = random_logits(3, vocab=50, seed=4)
    rows = [info(temperature=0.0, logprobs=True, top_logprobs=3), info(temperature=0.0),
            info(temperature=0.0, logprobs=True, top_logprobs=5, suppress_token_ids=[int(logits[2].argmax())])]
    samples = Sampler(torch.device("cpu"))(logits, ["a", "b", "c"], rows)
    raw = torch.log_softmax(logits, dim=-1)
    for (token, lp, top), row, want in zip(samples, raw, (3, 0, 5), strict=True):
        if not want:
            assert lp is None and top is None
            continue
        assert lp == pytest.approx(float(row[token]))
        values, ids = row.topk(want)
        assert [t for t, _ in top] == ids.tolist()
        assert [v for _, v in top] == pytest.approx(values.tolist())
    assert samples[2][2][0][0] != samples[2][0]  # the suppressed argmax is still the most likely


def test_logit_bias_moves_the_greedy_argmax_and_leaves_other_rows_and_the_logprobs_alone():
    """A bias that lifts the runner-up past the top token makes it the argmax; -100 bans the top
    token; a row without a bias in the same batch keeps its argmax. The logprobs stay the raw
    model's, and the caller's logits are not edited."""
    logits = random_logits(3, vocab=50, seed=7)
    before = logits.clone()
    top2 = logits.topk(2, dim=-1)
    (first, second), gap = top2.indices[0].tolist(), float(top2.values[0, 0] - top2.values[0, 1])
    banned, runner_up = top2.indices[1].tolist()
    rows = [info(temperature=0.0, logprobs=True, top_logprobs=2, logit_bias=((second, gap + 0.5),)),
            info(temperature=0.0, logit_bias=((banned, -100.0),)), info(temperature=0.0, logprobs=True)]
    samples = Sampler(torch.device("cpu"))(logits, ["a", "b", "c"], rows)
    assert [t for t, _, _ in samples] == [second, runner_up, int(logits[2].argmax())]
    assert torch.equal(logits, before)
    raw = torch.log_softmax(logits, dim=-1)
    assert samples[0][1] == pytest.approx(float(raw[0, second]))  # not the biased distribution's
    assert [t for t, _ in samples[0][2]] == [first, second]
    assert samples[2][1] == pytest.approx(float(raw[2].max()))


def test_logit_bias_steers_seeded_sampling():
    """+100 on the least likely token makes a sampled row draw it every time; -100 on the most
    likely one leaves the rest in their own proportions."""
    logits = random_logits(1, vocab=50, seed=8)
    least = int(logits[0].argmin())
    sampler = Sampler(torch.device("cpu"))
    forced = info(temperature=1.0, seed=3, logit_bias=((least, 100.0),))
    assert {sampler(logits, ["a"], [forced])[0][0] for _ in range(50)} == {least}
    probs = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    counts = torch.zeros(3)
    banned = info(temperature=1.0, seed=4, logit_bias=((0, -100.0),))
    for _ in range(1500):
        counts[sampler(probs, ["b"], [banned])[0][0]] += 1
    assert counts[0] == 0
    assert torch.allclose(counts[1:] / 1500, torch.tensor([0.75, 0.25]), atol=0.04)


def test_suppression_beats_a_plus_100_bias():
    """min_new_tokens hides EOS even from a request that biases it up, greedy or sampled."""
    logits = random_logits(2, vocab=50, seed=9)
    eos = int(logits[0].argmin())
    rows = [info(temperature=0.0, suppress_token_ids=[eos], logit_bias=((eos, 100.0),)),
            info(temperature=1.0, seed=5, suppress_token_ids=[eos], logit_bias=((eos, 100.0),))]
    sampler = Sampler(torch.device("cpu"))
    for _ in range(20):
        assert eos not in [t for t, _, _ in sampler(logits, ["a", "b"], rows)]
    unsuppressed = [info(temperature=0.0, logit_bias=((eos, 100.0),))]
    assert sampler(logits[:1], ["c"], unsuppressed)[0][0] == eos  # else the check above could not fail
