"""The operator's store: newest version wins, and the per-engine index follows labels."""

from __future__ import annotations

from typing import Any

from roundhouse_operator.store import Store


def pod(name: str, engine: str | None, rv: str = "1", uid: str = "u") -> dict[str, Any]:
    labels = {"roundhouse.dev/engine": engine} if engine else {}
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid + name, "resourceVersion": rv, "labels": labels}}


def test_owned_follows_puts_relabels_and_removes() -> None:
    s = Store()
    s.put("Pod", pod("a", "e1"))
    s.put("Pod", pod("b", "e1"))
    s.put("Pod", pod("c", "e2"))
    assert sorted(p["metadata"]["name"] for p in s.owned("Pod", "ns", "e1")) == ["a", "b"]
    s.put("Pod", pod("b", "e2", rv="2"))
    assert [p["metadata"]["name"] for p in s.owned("Pod", "ns", "e1")] == ["a"]
    assert sorted(p["metadata"]["name"] for p in s.owned("Pod", "ns", "e2")) == ["b", "c"]
    s.remove("Pod", pod("c", "e2"))
    assert [p["metadata"]["name"] for p in s.owned("Pod", "ns", "e2")] == ["b"]
    assert s.owned("Pod", "ns", "none") == []


def test_an_older_event_does_not_roll_the_store_back() -> None:
    s = Store()
    s.put("Pod", pod("a", "e1", rv="5"))
    s.put("Pod", pod("a", "e2", rv="4"))  # a watch event queued before our own write
    assert [p["metadata"]["resourceVersion"] for p in s.owned("Pod", "ns", "e1")] == ["5"]
    s.put("Pod", pod("a", "e2", rv="9", uid="other"))  # recreated object: a new uid always wins
    assert s.owned("Pod", "ns", "e1") == [] and len(s.owned("Pod", "ns", "e2")) == 1


def test_holds_recognises_an_echo_of_what_is_stored_but_not_news() -> None:
    s = Store()
    assert not s.holds("Pod", pod("a", "e1", rv="5"))
    s.put("Pod", pod("a", "e1", rv="5"))  # e.g. the API server's answer to our own write
    assert s.holds("Pod", pod("a", "e1", rv="5"))  # the watch echoing it
    assert s.holds("Pod", pod("a", "e1", rv="4"))  # an event queued before it
    assert not s.holds("Pod", pod("a", "e1", rv="6"))  # somebody else changed it since
    assert not s.holds("Pod", pod("a", "e1", rv="5", uid="other"))  # deleted and created again


def engine(name: str, fallback: list[str], rv: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "u" + name, "resourceVersion": rv},
            "spec": {"engine": "vllm", "routing": {"fallback": fallback}}}  # fmt: skip


def test_referencing_follows_each_engines_fallback_list_through_edits_and_deletes() -> None:
    s = Store()
    s.put("InferenceEngine", engine("a", ["big", "small"]))
    s.put("InferenceEngine", engine("b", ["big"]))
    s.put("InferenceEngine", {"metadata": {"name": "c", "namespace": "ns", "uid": "uc"}, "spec": {}})
    assert s.referencing("ns", "big") == ["a", "b"] and s.referencing("ns", "small") == ["a"]
    s.put("InferenceEngine", engine("a", ["small"], rv="2"))  # big dropped from a's list
    assert s.referencing("ns", "big") == ["b"]
    s.put("InferenceEngine", engine("a", ["big"], rv="1"))  # a stale event changes nothing
    assert s.referencing("ns", "big") == ["b"] and s.referencing("ns", "small") == ["a"]
    s.remove("InferenceEngine", engine("b", ["big"]))
    assert s.referencing("ns", "big") == [] and s.referencing("other", "small") == []


def test_a_pod_holds_its_gpus_until_its_kubelet_reports_a_terminal_phase() -> None:
    """A swap's incoming engine may start once the outgoing pods have stopped, though their objects
    linger: the scheduler and the kubelet stop counting a pod at Succeeded or Failed."""
    s = Store()
    for name, phase in (("pending", "Pending"), ("running", "Running"), ("unknown", None),
                        ("done", "Succeeded"), ("failed", "Failed")):  # fmt: skip
        p = pod(name, "e1")
        if phase:
            p["status"] = {"phase": phase}
        s.put("Pod", p)
    assert s.holding_pods("ns", "e1") == 3
    s.put("Pod", {**pod("running", "e1", rv="2"), "status": {"phase": "Succeeded"}})
    assert s.holding_pods("ns", "e1") == 2
    assert s.holding_pods("ns", "nobody") == 0
