"""SamplingParams: how one request is decoded, validated once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

# Temperatures below this decode greedily: sampling at them is greedy in all but float rounding,
# and logits / 1e-38 overflow to infinities whose softmax is NaN.
GREEDY_BELOW = 1e-5
MAX_TOP_LOGPROBS = 20  # as vLLM's OpenAI server


def _check(ok: bool, name: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """Decoding options of one request.

    temperature == 0 means greedy decoding (top_p/top_k/min_p are then irrelevant); so does any
    temperature below GREEDY_BELOW, where dividing the logits by it would overflow. `seed` makes a
    request's sampled text reproducible whatever else is in the batch. Stop strings are cut from
    the returned text; `max_new_tokens` counts generated tokens only.
    """

    max_new_tokens: int = 16
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables (so does -1, stored as 0)
    # Keeps the tokens at least min_p times as likely as the most likely one (after temperature,
    # as vLLM and transformers); 0 disables.
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF / CTRL: divides (multiplies) the logits of prompt and output tokens
    # OpenAI: logit -= presence_penalty * [token in the output] + frequency_penalty * its count there
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # OpenAI's: token id -> bias in [-100, 100] added to its logit after the penalties (-100 all
    # but bans it, 100 all but forces it); a dict or pairs, stored as (id, bias) pairs by id.
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0  # with logprobs: also the N most likely tokens at each position
    # Each prompt token's logprob given the ones before it and, N > 0, the N most likely tokens at
    # its position (0: its own only); None: off. The raw model distribution, as logprobs.
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        # Accept lists / a single string from callers, store tuples (hashable, immutable).
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        for name, allowed in (("stop", "a list of non-empty strings"), ("stop_token_ids", "a list of integers >= 0")):
            value = getattr(self, name)
            _check(value is None or isinstance(value, (list, tuple)), name, allowed, value)
            object.__setattr__(self, name, tuple(value or ()))
        object.__setattr__(self, "logit_bias", _bias_pairs(self.logit_bias))
        _check(_is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        _check(_is_int(self.min_new_tokens) and 0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens", f"an integer in [0, max_new_tokens={self.max_new_tokens}]", self.min_new_tokens)
        _check(_is_num(self.temperature) and 0.0 <= self.temperature <= 100.0, "temperature", "a number in [0, 100]", self.temperature)
        _check(_is_num(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "a number in (0, 1]", self.top_p)
        # At most int64's largest: the sampler holds top_k in int64 tensors, and a larger one would
        # fail there, in the step, stopping the engine for every request it serves.
        _check(_is_int(self.top_k) and -1 <= self.top_k <= 2**63 - 1, "top_k",
               "an integer >= 0, or -1 (0 and -1 disable), at most 2^63 - 1", self.top_k)
        if self.top_k == -1:  # vLLM's (and its clients') "disabled": stored as 0 so no engine sees -1
            object.__setattr__(self, "top_k", 0)
        _check(_is_num(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", "a number in [0, 1]", self.min_p)
        # At least 0.01: a positive logit is divided by it, and 5e-324 made it inf, then the
        # probabilities NaN (an answer of garbage, in both engines).
        _check(_is_num(self.repetition_penalty) and 0.01 <= self.repetition_penalty <= 10.0, "repetition_penalty",
               "a number in [0.01, 10]", self.repetition_penalty)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_is_num(value) and -2.0 <= value <= 2.0, name, "a number in [-2, 2]", value)
        # Any 64-bit integer, signed or not, as vLLM and torch.Generator.manual_seed take (there a
        # negative seed means seed + 2^64).
        _check(self.seed is None or (_is_int(self.seed) and -2**63 <= self.seed < 2**64), "seed",
               "null or a 64-bit integer, in [-2^63, 2^64)", self.seed)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "a list of non-empty strings", self.stop)
        _check(all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids", "a list of integers >= 0", self.stop_token_ids)
        for name in ("ignore_eos", "logprobs", "skip_special_tokens"):
            _check(isinstance(getattr(self, name), bool), name, "a boolean", getattr(self, name))
        _check(_is_int(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS and (
            self.logprobs or not self.top_logprobs), "top_logprobs",
            f"an integer in [0, {MAX_TOP_LOGPROBS}], with logprobs on", self.top_logprobs)
        _check(self.prompt_logprobs is None or (_is_int(self.prompt_logprobs)
               and 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS), "prompt_logprobs",
               f"null or an integer in [0, {MAX_TOP_LOGPROBS}]", self.prompt_logprobs)

    def ending_token_ids(self, eos_token_ids) -> tuple[int, ...]:
        """The ids that end the request once min_new_tokens are out (below it they are never
        sampled): its stop ids and, unless ignore_eos, the model's EOS ids. Both engines' rule."""
        return self.stop_token_ids + (() if self.ignore_eos else tuple(eos_token_ids))

    def ends_on(self, token_id: int, eos_token_ids) -> bool:
        """token_id in ending_token_ids(eos_token_ids), without building it: asked of every
        generated token."""
        return token_id in self.stop_token_ids or (not self.ignore_eos and token_id in eos_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1


def _bias_pairs(value) -> tuple[tuple[int, float], ...]:
    """logit_bias as (token id, bias) pairs sorted by id, from a dict or pairs, validated."""
    allowed = "a map of token ids (integers >= 0) to biases (numbers in [-100, 100])"
    _check(value is None or isinstance(value, (dict, list, tuple)), "logit_bias", allowed, value)
    pairs = list(value.items()) if isinstance(value, dict) else list(value or ())
    for pair in pairs:
        _check(isinstance(pair, (list, tuple)) and len(pair) == 2 and _is_int(pair[0]) and pair[0] >= 0
               and _is_num(pair[1]) and -100 <= pair[1] <= 100, "logit_bias", allowed, pair)
    ids = [t for t, _ in pairs]
    _check(len(set(ids)) == len(ids), "logit_bias", "a map: each token id once", value)
    return tuple(sorted((t, float(b)) for t, b in pairs))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # rejects NaN
