import pickle

from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.request import Request
from shardserve.engine.sampling_params import SamplingParams
from shardserve.engine.scheduler import Scheduler


def test_a_scheduled_step_carries_its_requests_but_sends_the_ranks_plain_values():
    scheduler = Scheduler(BlockManager(8, 16), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64,
                          enable_chunked_prefill=True, eos_token_ids=(2,))
    request = Request("r", [5, 6, 7], SamplingParams(max_new_tokens=4))
    scheduler.add(request)
    out = scheduler.schedule()
    assert len(out.requests) == 1 and out.requests[0] is request
    sent = pickle.loads(pickle.dumps(out))  # what an executor sends to the ranks
    assert sent.seqs == out.seqs and sent.requests == []
    assert [r.output_token_ids for r in scheduler.update(out, {"r": (9, None)})] == [[9]]


def test_without_chunking_a_step_takes_whole_prompts_up_to_the_budget_but_a_longer_one_alone():
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=8, max_num_batched_tokens=16, max_model_len=128,
                          enable_chunked_prefill=False, eos_token_ids=(2,))
    for i, n in enumerate((40, 40, 6, 6)):
        start = 100 * (i + 1)  # no shared prefix: the prefix cache stays out of the counts
        scheduler.add(Request(f"r{i}", list(range(start, start + n)), SamplingParams(max_new_tokens=4)))
    first = scheduler.schedule()
    assert [len(s.token_ids) for s in first.seqs] == [40]  # past the budget, alone: never split
    scheduler.update(first, {"r0": (9, None)})
    second = scheduler.schedule()
    assert [len(s.token_ids) for s in second.seqs] == [1, 40]  # r0's decode, then r1 as the step's first prompt
    scheduler.update(second, {"r0": (9, None), "r1": (9, None)})
    third = scheduler.schedule()
    assert [len(s.token_ids) for s in third.seqs] == [1, 1, 6, 6]  # within the budget: both prompts


def test_logit_bias_pairs_go_to_the_ranks_with_the_first_sampled_token_only():
    """The sampler keeps them on the device from then on; later steps send a flag, not the pairs."""
    scheduler = Scheduler(BlockManager(8, 16), max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64,
                          enable_chunked_prefill=True, eos_token_ids=(2,))
    scheduler.add(Request("r", [5, 6, 7], SamplingParams(max_new_tokens=4, logit_bias={9: 3.0, 4: -1.0})))
    infos = []
    for _ in range(3):
        out = scheduler.schedule()
        infos.append(out.seqs[0].sampling)
        scheduler.update(out, {"r": (9, None)})
    assert [(i.logit_bias, i.has_logit_bias) for i in infos] == [(((4, -1.0), (9, 3.0)), True), ((), True), ((), True)]
