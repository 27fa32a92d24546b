"""Client API keys with identities: who is calling, which models and engines they may use, their limits.

The key file is either the old form (one key per line) or YAML with a `keys:` list of entries; an
entry holds the key itself or its SHA-256, so the file need not contain secrets in the clear.
Lookup hashes the presented key and looks the digest up: no comparison that a timing could betray.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

# A key's name is a Prometheus label value and an /admin/usage row: short, plain.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Pattern = Annotated[str, Field(min_length=1, max_length=253)]


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the entry and the field."""


class KeyEntry(BaseModel):
    """One client key of the key file."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="Who uses the key; shown in usage and metrics.")
    key: str | None = Field(default=None, min_length=1, max_length=512, description="The key itself.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="Or its SHA-256, in hex.")
    models: list[Pattern] = Field(default_factory=list, max_length=256, description="Allowed models (globs).")
    engines: list[Pattern] = Field(default_factory=list, max_length=256, description="Allowed engines (globs).")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    monthly_token_budget: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of key and sha256")
        return self


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    keys: list[KeyEntry] = Field(max_length=10000)
    # Every answer to a limited key may carry the x-ratelimit-* headers, as OpenAI's do; they cost
    # about 9% of the gateway's CPU a request (docs/benchmarks.md), so by default only 429s carry them.
    rate_limit_headers: Literal["onRefusal", "always"] = "onRefusal"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: the key's name (never the key), what it may use, its limits."""

    name: str
    models: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    monthly_token_budget: int | None = None

    def may_use_model(self, model: str) -> bool:
        return not self.models or model in self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def may_use_engine(self, engine: str) -> bool:
        return not self.engines or engine in self.engines or any(fnmatch.fnmatchcase(engine, p) for p in self.engines)

    @functools.cached_property
    def limited(self) -> bool:
        """Whether any limit applies (asked several times a request: computed once)."""
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute,
                                           self.monthly_token_budget))  # fmt: skip


@dataclass(frozen=True)
class KeyRing:
    """The keys in force: empty means authentication is off."""

    by_digest: dict[bytes, Identity] = field(default_factory=dict)
    source: str = ""
    headers_always: bool = False  # x-ratelimit-* on every answer to a limited key, not only on 429s

    @property
    def enabled(self) -> bool:
        return bool(self.by_digest)

    def lookup(self, token: str) -> Identity | None:
        return self.by_digest.get(hashlib.sha256(token.encode()).digest()) if token else None

    def names(self) -> list[str]:
        return sorted({i.name for i in self.by_digest.values()})


def digest_of(key: str) -> str:
    """The SHA-256 of a key, in hex, as a key file's `sha256` field holds it."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str, source: str = "keys") -> KeyRing:
    """A key ring from a key file's text: YAML with `keys:` entries, or one key per line ('#' comments)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None  # a line of the old form need not be valid YAML
    if isinstance(doc, dict):
        return _entries(doc, source)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    # Old form: each key is named by the start of its digest, so usage can tell keys apart without
    # ever showing one.
    ring = {hashlib.sha256(k.encode()).digest(): Identity(name=f"key-{digest_of(k)[:8]}") for k in lines}
    return KeyRing(ring, source)


def _entries(doc: dict[str, Any], source: str) -> KeyRing:
    try:
        parsed = KeyFile.model_validate(doc)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise KeyFileError(f"{source}: {where}: {first['msg']}") from None
    ring: dict[bytes, Identity] = {}
    names: set[str] = set()
    for i, e in enumerate(parsed.keys):
        if e.name in names:
            raise KeyFileError(f"{source}: keys.{i}.name: {e.name!r} is used by another entry")
        names.add(e.name)
        digest = bytes.fromhex(e.sha256) if e.sha256 else hashlib.sha256((e.key or "").encode()).digest()
        if digest in ring:
            raise KeyFileError(f"{source}: keys.{i}: the same key as entry {ring[digest].name!r}")
        ring[digest] = Identity(e.name, tuple(e.models), tuple(e.engines), e.requests_per_minute,
                                e.tokens_per_minute, e.monthly_token_budget)  # fmt: skip
    return KeyRing(ring, source, parsed.rate_limit_headers == "always")


def read_key_file(path: Path) -> KeyRing:
    """The key ring of a file; KeyFileError (naming the file) if it cannot be read or used."""
    try:
        text = path.read_text()
    except OSError as err:
        raise KeyFileError(f"{path}: {err.strerror or err}") from None
    return parse_keys(text, str(path))
