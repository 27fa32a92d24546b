"""The chart's gateway.state, rendered by the real helm: the embedded store's volume, the Redis StatefulSet
with persistence and a password from a Secret, an existing store's password, and what the chart refuses.
(There is no image registry here: the Redis pod itself is not run; docs/keys.md.)"""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.support import tools
from tests.support.manifests import REPO


def render(*values: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    sets = [a for v in values for a in ("--set", v)]
    return subprocess.run([tools.path("helm"), "template", "t", str(REPO / "charts" / "roundhouse"), "-n", "rh",
                           *sets], capture_output=True, text=True, check=check, timeout=120)  # fmt: skip


def objects(*values: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(render(*values).stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def gateway(objs: dict[tuple[str, str], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = objs[("Deployment", "t-roundhouse-gateway")]["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_the_default_is_sqlite_on_an_empty_dir_per_replica() -> None:
    objs = objects()
    pod, c = gateway(objs)
    assert "--state=sqlite:///var/lib/roundhouse/state.sqlite" in c["args"]
    assert {"--state-on-failure=open", "--state-timeout=0.25"} <= set(c["args"])
    assert {"name": "state", "mountPath": "/var/lib/roundhouse"} in c["volumeMounts"]
    assert {"name": "state", "emptyDir": {}} in pod["volumes"]
    assert not any(k == "StatefulSet" for k, _ in objs)


def test_a_persistent_sqlite_store_is_one_replica_s_claim() -> None:
    objs = objects("gateway.state.persistence.enabled=true", "gateway.replicas=1")
    pod, _ = gateway(objs)
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "t-roundhouse-gateway-state"}} in pod["volumes"]
    assert objs[("PersistentVolumeClaim", "t-roundhouse-gateway-state")]["spec"]["resources"]["requests"] == {
        "storage": "1Gi"}  # fmt: skip
    refused = render("gateway.state.persistence.enabled=true", check=False)  # two replicas by default
    assert refused.returncode != 0 and "one replica's" in refused.stderr


def test_the_chart_s_redis_has_persistence_and_a_password_from_a_secret() -> None:
    objs = objects("gateway.state.redis.enabled=true", "gateway.state.onFailure=closed")
    _, c = gateway(objs)
    assert "--state=redis://t-roundhouse-state.rh.svc:6379/0" in c["args"] and "--state-on-failure=closed" in c["args"]
    password = {"secretKeyRef": {"name": "t-roundhouse-state", "key": "password"}}
    assert {"name": "ROUNDHOUSE_STATE_PASSWORD", "valueFrom": password} in c["env"]
    assert not any(m["name"] == "state" for m in c["volumeMounts"])
    sts = objs[("StatefulSet", "t-roundhouse-state")]["spec"]
    redis = sts["template"]["spec"]["containers"][0]
    assert redis["image"] == "redis:7.0.15" and redis["command"] == ["redis-server"]
    args = " ".join(redis["args"])
    assert "--appendonly yes" in args and "--requirepass $(REDIS_PASSWORD)" in args and "--dir /data" in args
    assert {"name": "REDIS_PASSWORD", "valueFrom": password} in redis["env"]
    assert sts["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert objs[("Secret", "t-roundhouse-state")]["data"]["password"]
    assert objs[("Service", "t-roundhouse-state")]["spec"]["ports"][0]["port"] == 6379


def test_the_chart_s_redis_is_reached_at_url_where_set_and_placed_as_told() -> None:
    """A cluster whose pods cannot resolve the Service's name (no cluster DNS) reaches the chart's Redis at
    gateway.state.url, still with the chart's password; its pod takes tolerations like the gateway's."""
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    objs = objects("gateway.state.redis.enabled=true", "gateway.state.url=redis://10.0.0.9:6379/0",
                   f"gateway.state.redis.tolerations[0].key={toleration['key']}",
                   f"gateway.state.redis.tolerations[0].operator={toleration['operator']}",
                   f"gateway.state.redis.tolerations[0].effect={toleration['effect']}")  # fmt: skip
    _, c = gateway(objs)
    assert "--state=redis://10.0.0.9:6379/0" in c["args"]
    password = {"secretKeyRef": {"name": "t-roundhouse-state", "key": "password"}}
    assert {"name": "ROUNDHOUSE_STATE_PASSWORD", "valueFrom": password} in c["env"]
    assert objs[("StatefulSet", "t-roundhouse-state")]["spec"]["template"]["spec"]["tolerations"] == [toleration]


def test_an_existing_store_s_password_comes_from_its_secret() -> None:
    objs = objects("gateway.state.url=rediss://valkey.db:6380/2", "gateway.state.passwordSecret.name=valkey")
    _, c = gateway(objs)
    assert "--state=rediss://valkey.db:6380/2" in c["args"]
    assert {"name": "ROUNDHOUSE_STATE_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "valkey", "key": "password"}}} in c["env"]  # fmt: skip
    assert not any(k in ("StatefulSet", "PersistentVolumeClaim") for k, _ in objs)


def test_a_url_that_is_no_store_is_refused_by_the_schema() -> None:
    refused = render("gateway.state.url=postgres://db", check=False)
    assert refused.returncode != 0 and "gateway/state/url" in refused.stderr
