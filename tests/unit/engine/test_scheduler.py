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
