"""Flags the operator renders itself, per family. Repeating one in extraArgs would break probes or
routing, so the CRD refuses it (a CEL rule per section) and each family module renders from the same
sets. No imports: the API types and the family modules both read it."""

from __future__ import annotations

VLLM: frozenset[str] = frozenset(
    {"--model", "--served-model-name", "--host", "--port", "--tensor-parallel-size", "-tp",
     "--pipeline-parallel-size", "-pp", "--enable-lora", "--lora-modules", "--max-loras", "--max-lora-rank"}
)  # fmt: skip
SGLANG: frozenset[str] = frozenset(
    {"--model-type", "--model-path", "--model", "--served-model-name", "--host", "--port", "--tp-size",
     "--tensor-parallel-size", "--dp-size", "--data-parallel-size", "--pp-size", "--pipeline-parallel-size",
     "--api-key", "--enable-metrics", "--enable-lora", "--lora-paths"}
)  # fmt: skip
# --lora and --lora-scaled too: an adapter's per-request id is its place in the --lora order.
LLAMACPP: frozenset[str] = frozenset(
    {"-m", "--model", "-a", "--alias", "--host", "--port", "--lora", "--lora-scaled", "--lora-init-without-apply"}
)


def cel_no_repeat(section: str, flags: frozenset[str]) -> tuple[str, str]:
    """The CEL rule (and its message) refusing extraArgs that repeat a managed flag, `--f` or `--f=v`."""
    alternatives = "|".join(sorted(flags))
    rule = f"!has(self.extraArgs) || !self.extraArgs.exists(a, a.matches('^({alternatives})(=.*)?$'))"
    names = ", ".join(sorted(f for f in flags if f.startswith("--")))
    return rule, f"spec.{section}.extraArgs must not repeat a flag the operator sets ({names})"
