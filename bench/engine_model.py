"""How a modelled engine replica serves the requests it holds, for bench/autoscale.py.

Two models of a replica:
- fixed slots (llama-server's `--parallel`): at most `slots` requests at once, each at its solo
  speed; the rest queue;
- continuous batching (vLLM): up to `cap` requests at once, all slowed by how many share the batch,
  on the curve vLLM itself measured; the rest queue.

The curve: time to first token and time per output token at 1, 4, 16 and 64 concurrent requests,
over the same at 1. Measured with vLLM 0.21.0, Llama-3.1-8B-Instruct fp16 on one H100-80GB, a short
chat workload (InferenceBench's concurrency-sweep recipe, 2026-05-16): TTFT p50 13.98, 22.75, 41.69,
86.92 ms and TPOT p50 6.48, 6.59, 10.94, 46.91 ms. Between the points it is interpolated in log2 of
the concurrency. The cap is the last point measured (64): past it vLLM would admit more (up to its
`max_num_seqs` and KV cache), at a cost the sweep does not show, so the model makes them queue.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

Curve = tuple[tuple[int, float, float], ...]  # (concurrency, TTFT factor, TPOT factor)

VLLM_H100_8B: Curve = (
    (1, 1.0, 1.0),
    (4, 22.75 / 13.98, 6.59 / 6.48),
    (16, 41.69 / 13.98, 10.94 / 6.48),
    (64, 86.92 / 13.98, 46.91 / 6.48),
)


@dataclass(frozen=True)
class Model:
    name: str
    family: str
    gpus: int
    start: float  # scale-up to ready
    slots: int  # requests per replica the fleets are sized for (and, without a curve, the most at once)
    prefill: float  # time to first token alone on a replica
    decode: float  # first token to last, alone on a replica
    curve: Curve | None = None  # continuous batching: slow-down with the batch's size
    cap: int = 0  # with a curve: the most requests at once

    @property
    def most(self) -> int:
        """The most requests one replica runs at once; the rest queue."""
        return self.cap if self.curve else self.slots

    def ttft_factor(self, n: int) -> float:
        """A request's time to first token over its solo one, admitted into a batch of `n`."""
        return _interpolate(self.curve, n, 1) if self.curve else 1.0

    def tpot_factor(self, n: int) -> float:
        """Time per output token over the solo one, in a batch of `n`."""
        return _interpolate(self.curve, n, 2) if self.curve else 1.0

    def batching(self) -> Model:
        """This model as continuous batching on vLLM's measured curve (llama.cpp keeps its slots)."""
        if self.family != "vllm":
            return self
        return Model(self.name, self.family, self.gpus, self.start, self.slots, self.prefill, self.decode,
                     VLLM_H100_8B, VLLM_H100_8B[-1][0])  # fmt: skip


def _interpolate(curve: Curve | None, n: int, column: int) -> float:
    """The curve's `column` at concurrency `n`, linear in log2(n) between its points."""
    assert curve is not None
    if n <= curve[0][0]:
        return curve[0][column]
    for lo, hi in itertools.pairwise(curve):
        if n <= hi[0]:
            x = (math.log2(n) - math.log2(lo[0])) / (math.log2(hi[0]) - math.log2(lo[0]))
            return lo[column] + x * (hi[column] - lo[column])
    return curve[-1][column]
