"""Model FLOPs as torch counts them (`torch.utils.flop_counter`), attention on a CPU included:
the one count that training metrics, the benchmark and the tests share."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

_aten = torch.ops.aten
#: FlopCounterMode counts the CUDA attention kernels but not the CPU kernel that
#: nn.MultiheadAttention and scaled_dot_product_attention run on a CPU: without these formulas
#: (torch's own, for the same arguments) attention would count 0 FLOPs here.
CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(grad, q, k, v),
}


def count_flops(run: Callable[[], Any]) -> float:
    """FLOPs of one call of `run`: matmuls, convolutions and attention, as torch counts them."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        run()
    return float(counter.get_total_flops())
