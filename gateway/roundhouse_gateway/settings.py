"""The gateway's settings from its command line (main.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Settings:
    api_keys: list[str] = field(default_factory=list)
    admin_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    probe_interval: float = 2.0
    retry_after_seconds: int = 5
