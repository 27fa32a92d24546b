"""A prompt-prefix cache model for the engine simulator: a replica keeps the KV of the prompt blocks
it has seen (least recently used goes first); a prompt's leading blocks found there cost nothing to
prefill, the rest cost per token. Enough to measure routing policies with 16 simulated replicas."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

BLOCK_CHARS = 64  # 16 tokens at four characters a token, like vLLM's 16-token KV blocks
CHARS_PER_TOKEN = 4


class PrefixCache:
    def __init__(self, capacity_tokens: int) -> None:
        self.capacity = max(0, capacity_tokens // (BLOCK_CHARS // CHARS_PER_TOKEN))
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def admit(self, text: str) -> tuple[int, int]:
        """(prompt tokens, of which cached) for `text`; its blocks are cached afterwards."""
        tokens = max(1, len(text) // CHARS_PER_TOKEN)
        if not self.capacity:
            return tokens, 0
        h, cached, hit = b"", 0, True
        for start in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):  # whole blocks only
            h = hashlib.blake2b(h + text[start : start + BLOCK_CHARS].encode(), digest_size=16).digest()
            if hit and h in self.blocks:
                cached += BLOCK_CHARS // CHARS_PER_TOKEN
                self.blocks.move_to_end(h)
                continue
            hit = False
            self.blocks[h] = None
            if len(self.blocks) > self.capacity:
                self.blocks.popitem(last=False)
        return tokens, min(cached, tokens)
