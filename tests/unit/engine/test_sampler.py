import pytest
import torch

from shardserve.engine.sampler import Sampler, _processed_probs
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.scheduler import SamplingInfo


def info(**kw) -> SamplingInfo:
    base = dict(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, presence_penalty=0.0,
                frequency_penalty=0.0, seed=None,
                logprobs=False, top_logprobs=0, penalty_token_ids=[], suppress_token_ids=[])
    base.update(kw)
    greedy = SamplingParams(temperature=base["temperature"], top_k=base["top_k"]).greedy
    return SamplingInfo(greedy=greedy, **base)


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
