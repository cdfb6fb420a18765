"""The input activations' Triton code (kernels/act_and_mul.py `act_tile`, which the GEMM kernels'
prologue shares) on every float16 value, in Triton's interpreter, against the torch reference
(tests/gpu/test_fused_kernels.py runs float16 and bfloat16 compiled). float16 only: the
interpreter's float32 -> bfloat16 cast truncates."""

from __future__ import annotations

import pytest
import torch

from helpers.act_gemm_cases import check_act_kernel_on_every_value
from helpers.markers import needs_interpreter
from shardserve.kernels.act_and_mul import split_input_act

pytest.importorskip("triton")
pytestmark = needs_interpreter


# exp(-x) overflows to inf for very negative x (numpy warns): silu and gelu_tanh then give -0, as torch.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "gelu_tanh"])
def test_activation_matches_torch_on_every_float16(act):
    check_act_kernel_on_every_value(act, torch.float16, "cpu")


def test_names_are_checked():
    assert split_input_act(None) == ("", False)
    assert split_input_act("silu_and_mul") == ("silu", True) and split_input_act("gelu_tanh") == ("gelu_tanh", False)
    with pytest.raises(ValueError, match="input_act must be None or one of"):
        split_input_act("swiglu")
