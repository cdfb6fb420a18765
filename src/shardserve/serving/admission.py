"""A model's bounded queue: `concurrency` requests run, `job_queue_size` more may wait, the rest
are refused at once (503 + Retry-After) instead of piling up behind a queue nobody can drain.

The counter is only touched from the event loop, so it needs no lock; a request's slot is held
from admission until its response (streamed or not) is complete.
"""

from __future__ import annotations

from contextlib import contextmanager

from shardserve.serving.http_errors import APIError

RETRY_AFTER_S = 1


class Admission:
    def __init__(self, concurrency: int, queue_size: int):
        if concurrency < 1 or queue_size < 0:
            raise ValueError(f"concurrency must be >= 1 and queue_size >= 0, got {concurrency}, {queue_size}")
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.inflight = 0

    @property
    def capacity(self) -> int:
        return self.concurrency + self.queue_size

    @property
    def queue_depth(self) -> int:
        return max(self.inflight - self.concurrency, 0)

    @property
    def running(self) -> int:
        return min(self.inflight, self.concurrency)

    def acquire(self, model: str, n: int = 1, field: str | None = None) -> None:
        """Take n slots (a batch of n prompts) or raise an APIError: check_fits' 400 (naming
        `field`, the request's prompts); 503 while the slots are taken."""
        self.check_fits(model, n, field)
        if self.inflight + n > self.capacity:
            raise APIError(
                503,
                f"model {model!r} is at capacity ({self.concurrency} running + {self.queue_size} "
                "queued, job_queue_size); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.inflight += n

    def check_fits(self, model: str, n: int, field: str | None, what: str | None = None) -> None:
        """A 400 naming `field` when n slots (`what` they are in the request's terms; n prompts
        unless said) are more than the whole capacity: no retry can fit them."""
        if n > self.capacity:
            raise APIError(
                400,
                f"{field or 'the request'}: {what or f'{n} prompts'} are more than model {model!r} takes at "
                f"once ({self.capacity}: {self.concurrency} running + {self.queue_size} queued, job_queue_size)",
                param=field,
            )

    def release(self, n: int = 1) -> None:
        self.inflight -= n
        assert self.inflight >= 0, "released more slots than acquired"

    @contextmanager
    def slot(self, model: str, n: int = 1):
        self.acquire(model, n)
        try:
            yield
        finally:
            self.release(n)
