"""Print, from the contract tier's records (artifacts/contract/*.jsonl), every rendered flag and
environment variable per family and whether the real engine accepted each case that used it.

    python -m tests.contract.report
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "contract"


def flags(entry: dict[str, object]) -> list[str]:
    if "env" in entry:
        return [f"{e['name']}={e.get('value', '<secret>')}" for e in entry["env"]]  # type: ignore[attr-defined]
    args = [str(a) for a in entry.get("args", [])]  # type: ignore[attr-defined]
    out, i = [], 0
    while i < len(args):
        if args[i].startswith("-"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            out.append(f"{args[i]} {value}" if value is not None else args[i])
            i += 2 if value is not None else 1
        else:
            out.append(f"(positional) {args[i]}")
            i += 1
    return out


def main() -> int:
    for path in sorted(ARTIFACTS.glob("*.jsonl")):
        seen: dict[str, list[bool]] = defaultdict(list)
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            for f in flags(entry):
                seen[f].append(bool(entry["accepted"]))
        print(f"\n### {path.stem}\n\n| rendered | cases | accepted by the real engine |\n|---|---|---|")
        for f, results in sorted(seen.items()):
            print(f"| `{f}` | {len(results)} | {'yes' if all(results) else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
