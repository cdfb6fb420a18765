import pickle

from shardserve.engine.kv_cache import BlockManager
from shardserve.engine.prompt_logprobs import cacheable_tokens
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


def test_a_request_asking_for_prompt_logprobs_reuses_only_positions_whose_rows_were_given():
    """A cached token gets no logits: until every prompt-logprob row has been given to a step, the
    prefix cache may serve only positions whose rows were; then any of its tokens."""
    plain = Request("p", list(range(10)), SamplingParams(max_new_tokens=4))
    plain.output_token_ids = [3, 4]
    assert cacheable_tokens(plain) == 12
    asks = Request("a", list(range(10)), SamplingParams(max_new_tokens=4, prompt_logprobs=0))
    assert cacheable_tokens(asks) == 0
    asks.num_prompt_logprob_rows = 8  # preempted after steps were given 8 of its 9 rows
    assert cacheable_tokens(asks) == 8
    asks.num_prompt_logprob_rows, asks.output_token_ids = 9, [3]
    assert cacheable_tokens(asks) == 11


def test_the_scheduler_admits_a_prompt_logprobs_request_with_hits_up_to_its_given_rows():
    manager = BlockManager(16, 4)
    scheduler = Scheduler(manager, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64,
                          enable_chunked_prefill=True, eos_token_ids=(2,))
    scheduler.add(Request("first", list(range(10, 23)), SamplingParams(max_new_tokens=1)))
    out = scheduler.schedule()
    scheduler.update(out, {"first": (9, None)})  # 13 prompt tokens: 3 full blocks cached
    asks = Request("asks", list(range(10, 23)), SamplingParams(max_new_tokens=1, prompt_logprobs=1))
    asks.num_prompt_logprob_rows = 9  # rows given before a preemption
    plain = Request("plain", list(range(10, 23)), SamplingParams(max_new_tokens=1))
    scheduler.add(asks)
    scheduler.add(plain)
    out = scheduler.schedule()
    assert [s.start_pos for s in out.seqs] == [8, 12]  # asks: 2 blocks within its 9 rows
    assert out.seqs[0].prompt_rows.first == 1  # its rows from position 9 on, none again
