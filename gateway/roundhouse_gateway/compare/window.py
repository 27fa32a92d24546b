"""Each arm's and shadow's answers over a window, and the comparison a person reads. Pure over an
injected clock: the gateway records, /admin/compare reports."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

KEPT = 5000  # answers kept per (model, engine, role): the window is the last WINDOW seconds of these
WINDOW = 900.0
MINUS = "\N{MINUS SIGN}"  # the typographic sign, as the verdict is read by people


@dataclass(frozen=True)
class Answer:
    at: float  # epoch seconds
    status: int
    ttft: float | None  # seconds to the first byte; None for a copy (not streamed: its first byte is its whole answer)
    latency: float  # seconds to the whole answer, from when the gateway received the request (copies too)
    tokens: int  # completion tokens the engine reported


@dataclass
class Series:
    answers: deque[Answer] = field(default_factory=lambda: deque(maxlen=KEPT))
    pairs: deque[tuple[float, bool, float]] = field(default_factory=lambda: deque(maxlen=KEPT))  # (at, exact, sim)
    shed: deque[float] = field(default_factory=lambda: deque(maxlen=KEPT))  # copies not sent: too many in flight


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 4)


def figures(answers: list[Answer], pairs: list[tuple[float, bool, float]], shed: int) -> dict[str, Any]:
    """One arm's figures: requests, errors, TTFT and latency percentiles, tokens per second, answer
    length, and (for a shadow) its agreement with the primary."""
    ok = [a for a in answers if a.status < 400]
    ttfts = [a.ttft for a in ok if a.ttft is not None]
    busy = sum(a.latency for a in ok)
    out: dict[str, Any] = {
        "requests": len(answers), "errors": len(answers) - len(ok), "shed": shed,
        "ttftP50": _pct(ttfts, 0.5), "ttftP95": _pct(ttfts, 0.95),
        "latencyP50": _pct([a.latency for a in ok], 0.5), "latencyP95": _pct([a.latency for a in ok], 0.95),
        "tokensPerSecond": round(sum(a.tokens for a in ok) / busy, 2) if busy > 0 else None,
        "answerTokens": round(statistics.fmean(a.tokens for a in ok), 2) if ok else None,
    }  # fmt: skip
    if pairs:
        out["agreement"] = {"pairs": len(pairs), "exactRate": round(sum(e for _, e, _ in pairs) / len(pairs), 4),
                            "similarity": round(statistics.fmean(s for _, _, s in pairs), 4)}  # fmt: skip
    return out


def _change(new: float | None, old: float | None) -> str | None:
    if new is None or old is None or old <= 0:
        return None
    pct = round((new - old) / old * 100)
    sign = "+" if pct > 0 else MINUS if pct < 0 else "±"
    return f"{sign}{abs(pct)}%"


def verdict(engine: str, role: str, mine: dict[str, Any], base: dict[str, Any] | None) -> str:
    """One line a person reads at a glance: how this arm or shadow compares with the baseline arm."""
    # A shadow engine has its share of the model; a copy without one went to the other arm of an A/B request.
    kind = ("shadow" if "percent" in mine else "copies to") if role == "shadow" else "candidate"
    words = [f"{kind} {engine}:"]
    # A copy is not streamed, so it has no TTFT of its own (its first byte is its whole answer): comparing
    # that with a streamed primary's TTFT would say "slower" of any engine. Copies compare total latency.
    timed = (
        [("p95 latency", "latencyP95")]
        if role == "shadow"
        else [("p95 TTFT", "ttftP95"), ("p95 latency", "latencyP95")]
    )
    if base is not None:
        for label, key in timed:
            if (change := _change(mine.get(key), base.get(key))) is not None:
                words.append(f"{label} {change},")
    if (agree := mine.get("agreement")) is not None:
        words.append(f"agreement {round(agree['exactRate'] * 100)}% (similarity {agree['similarity']:.2f},"
                     f" {agree['pairs']} pairs),")  # fmt: skip
    words.append(f"errors {mine['errors']} of {mine['requests']}")
    if mine.get("shed"):
        words.append(f"({mine['shed']} copies shed)")
    return " ".join(words)


class Comparison:
    """Answers by (model, engine, role); role is "arm" (it answered the client) or "shadow"."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self.series: dict[tuple[str, str, str], Series] = {}

    def _series(self, model: str, engine: str, role: str) -> Series:
        key = (model, engine, role)
        found = self.series.get(key)
        if found is None:
            found = self.series[key] = Series()
        return found

    def answered(self, model: str, engine: str, role: str, answer: Answer) -> None:
        self._series(model, engine, role).answers.append(answer)

    def paired(self, model: str, engine: str, at: float, exact: bool, similarity: float) -> None:
        self._series(model, engine, "shadow").pairs.append((at, exact, similarity))

    def shed(self, model: str, engine: str, at: float) -> None:
        self._series(model, engine, "shadow").shed.append(at)

    def report(self, now: float, roles: dict[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Per model: its arms and shadows side by side, the baseline (the arm that answered most), and a
        verdict per other arm and shadow. `roles` adds what the catalog says of each (weight, percent)."""
        since = now - self.window
        models: dict[str, list[dict[str, Any]]] = {}
        for (model, engine, role), s in sorted(self.series.items()):
            answers = [a for a in s.answers if a.at >= since]
            pairs = [p for p in s.pairs if p[0] >= since]
            shed = sum(1 for t in s.shed if t >= since)
            if not answers and not pairs and not shed:
                continue
            row = {"engine": engine, "role": role, **(roles or {}).get((model, engine), {}),
                   **figures(answers, pairs, shed)}  # fmt: skip
            models.setdefault(model, []).append(row)
        out = []
        for model, rows in models.items():
            arms = [r for r in rows if r["role"] == "arm"]
            base = max(arms, key=lambda r: r["requests"]) if arms else None
            verdicts = [verdict(r["engine"], r["role"], r, base) for r in rows if r is not base]
            out.append({"model": model, "baseline": base["engine"] if base else None, "arms": rows,
                        "verdicts": verdicts})  # fmt: skip
        return {"windowSeconds": self.window, "models": out}
