"""Leader election on a coordination.k8s.io/v1 Lease, so that of several operator replicas only one
reconciles (writes) at a time while the others keep warm stores.

Our own, not kopf's peering: kopf's peering objects are its own CRD (KopfPeering), which would be
one more CRD to install, and it pauses handlers rather than electing; a Lease is what Kubernetes'
own controllers use (client-go's leaderelection), needs only get/create/update on leases in one
namespace, and shows in `kubectl get lease`. As in client-go, expiry is judged by the local clock
since the record last changed (no trust in other hosts' clocks), and every write carries the
resourceVersion read, so two candidates cannot both win.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import metrics

log = logging.getLogger("roundhouse.operator")
LEASE_SECONDS = 10  # a leader that stops renewing loses the lease after this long
RENEW_DEADLINE = 7.0  # a leader that cannot renew for this long steps down (before others may take over)
RETRY_SECONDS = 2.0


class Elector:
    def __init__(self, namespace: str, name: str, identity: str, api: Any = None) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.api: Any = api or client.CoordinationV1Api()
        self.observed: tuple[str | None, str | None] = (None, None)  # (holder, renewTime) last seen
        self.observed_at = 0.0  # monotonic time the record last changed
        self.leader = False
        self.renewed_at = 0.0

    def _spec(self, acquire: datetime | None, transitions: int) -> Any:
        now = datetime.now(UTC)
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=LEASE_SECONDS,
            acquire_time=acquire or now,
            renew_time=now,
            lease_transitions=transitions,
        )

    def attempt(self) -> bool:
        """One try to acquire or renew the lease (blocking). True: this replica holds it now."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name), spec=self._spec(None, 0))
            try:
                self.api.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as err2:
                if err2.status == 409:  # someone else created it first
                    return False
                raise
        spec = lease.spec
        record = (spec.holder_identity, str(spec.renew_time))
        if record != self.observed:
            self.observed, self.observed_at = record, time.monotonic()
        duration = spec.lease_duration_seconds or LEASE_SECONDS
        held_by_other = spec.holder_identity not in (None, "", self.identity)
        if held_by_other and time.monotonic() - self.observed_at < duration:
            return False
        mine = spec.holder_identity == self.identity
        lease.spec = self._spec(spec.acquire_time if mine else None,
                                (spec.lease_transitions or 0) + (0 if mine else 1))  # fmt: skip
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)  # carries resourceVersion
        except ApiException as err:
            if err.status == 409:  # changed since we read it: somebody else renewed or took it
                return False
            raise
        if not mine:
            log.info("leader lease taken over", extra={"lease": f"{self.namespace}/{self.name}",
                                                        "from": spec.holder_identity, "by": self.identity})  # fmt: skip
        return True

    async def run(self, started: Callable[[], None], stopped: Callable[[], None]) -> None:
        """Try every RETRY_SECONDS; call `started` on winning, `stopped` when renewals fail too long."""
        metrics.LEADER.set(0)
        while True:
            try:
                won = await asyncio.to_thread(self.attempt)
            except Exception as err:  # the API server may be away: retry, and step down in time
                log.warning("leader election failed", extra={"error": repr(err)})
                won = False
            now = time.monotonic()
            if won:
                self.renewed_at = now
                if not self.leader:
                    self.leader = True
                    metrics.LEADER.set(1)
                    log.info("leading", extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity})
                    started()
            elif self.leader and now - self.renewed_at > RENEW_DEADLINE:
                self.leader = False
                metrics.LEADER.set(0)
                log.error("leadership lost", extra={"lease": f"{self.namespace}/{self.name}"})
                stopped()
                return
            await asyncio.sleep(RETRY_SECONDS)
