"""min_p seen from outside: how far below the top token's logprob an output's chosen tokens fall.

At temperature T min_p keeps a token when p_T >= min_p * max p_T, i.e. when its raw logprob is at
most T * log(1 / min_p) below the top one's. Outputs carry logprobs with top_logprobs >= 1.
"""

from __future__ import annotations

import math

TOL = 1e-4  # float error between the logprobs reported and those min_p compared


def top_gap(out) -> float:
    """The least, over an output's positions, of the chosen token's raw logprob less the top's."""
    return min(lp - top[0][1] for lp, top in zip(out.logprobs, out.top_logprobs, strict=True))


def min_p_bound(temperature: float, min_p: float) -> float:
    """The least top_gap that min_p lets through at `temperature`."""
    return temperature * math.log(min_p)


def assert_kept_by_min_p(out, temperature: float, min_p: float) -> None:
    """Every token `out` chose is one that min_p keeps at `temperature`."""
    assert top_gap(out) >= min_p_bound(temperature, min_p) - TOL, (top_gap(out), temperature, min_p)


def assert_min_p_bites(out, temperature: float, min_p: float) -> None:
    """`out`, drawn without min_p, chose a token that min_p would drop: the bound is not empty."""
    assert top_gap(out) < min_p_bound(temperature, min_p), (top_gap(out), temperature, min_p)
