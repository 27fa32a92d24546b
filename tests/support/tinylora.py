"""Make a tiny LoRA GGUF for the tiny model (tests/support/tinygguf.py) that a real llama-server loads.

The keys and shapes llama.cpp's src/llama-adapter.cpp checks: general.type "adapter", the model's
general.architecture, adapter.type "lora", adapter.lora.alpha (f32), and for a base tensor W of ggml
shape [n_in, n_out] the pair W.lora_a [n_in, r] and W.lora_b [r, n_out] (numpy shapes are the reverse:
(r, n_in) and (n_out, r)). It adapts the output projection with weights far larger than the model's
own, so that an answer with it applied differs from the base model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support import tinygguf


def write(path: Path, seed: int = 1, rank: int = 4, alpha: float = 4.0) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    vocab = len(tinygguf.vocabulary()[0])
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    w.add_tensor("output.weight.lora_a", rng.standard_normal((rank, tinygguf.N_EMBD)).astype(np.float32))
    w.add_tensor("output.weight.lora_b", rng.standard_normal((vocab, rank)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
