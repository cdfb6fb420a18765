"""kernels/argmax.py against torch.argmax in Triton's CPU interpreter (tests/gpu runs it compiled),
on the logits of helpers/argmax_cases.py."""

from __future__ import annotations

import pytest

from helpers.markers import needs_interpreter

pytest.importorskip("triton")


@needs_interpreter
def test_matches_torch_argmax_with_ties_inf_and_nan():
    from helpers.argmax_cases import check_argmax

    check_argmax("cpu")
