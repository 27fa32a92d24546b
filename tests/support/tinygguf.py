"""Make a tiny GGUF model that a real llama.cpp loads in milliseconds on CPU.

Llama architecture, 2 layers, 64 dimensions, a byte-level SentencePiece vocabulary of a few
hundred tokens, random weights (seeded) and a chat template: it answers nonsense, but through
the real engine, tokenizer, sampler and SSE code paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

N_EMBD, N_LAYER, N_HEAD, N_FF, N_CTX = 64, 2, 4, 128, 512
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁it", "▁engine", "▁gateway", "▁model", "▁token"]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s>, the 256 byte tokens, then letters and a few words: SentencePiece style."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    # Every piece must be unique: llama.cpp asserts a one-to-one token table.
    pieces = list(dict.fromkeys(["▁", *letters, *[f"▁{c}" for c in letters], *WORDS]))
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def write(path: Path, seed: int = 0, context_length: int = N_CTX, embd: int = N_EMBD, layers: int = N_LAYER,
          heads: int = N_HEAD, ff: int = N_FF) -> Path:  # fmt: skip
    """Write the model; `context_length` is its training context (llama-server caps a slot's at it).
    Larger dimensions make prefill cost measurable on a CPU (bench/routing.py)."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("roundhouse-tiny")
    w.add_context_length(context_length)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(embd // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)

    def t(name: str, *shape: int, ones: bool = False) -> None:
        data = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * 0.02).astype(np.float32)
        w.add_tensor(name, data)

    t("token_embd.weight", vocab, embd)
    for i in range(layers):
        t(f"blk.{i}.attn_norm.weight", embd, ones=True)
        for proj in ("q", "k", "v", "output"):
            t(f"blk.{i}.attn_{proj}.weight", embd, embd)
        t(f"blk.{i}.ffn_norm.weight", embd, ones=True)
        t(f"blk.{i}.ffn_gate.weight", ff, embd)
        t(f"blk.{i}.ffn_up.weight", ff, embd)
        t(f"blk.{i}.ffn_down.weight", embd, ff)
    t("output_norm.weight", embd, ones=True)
    t("output.weight", vocab, embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf")))
