"""Launch counters for the bounded policy: what a member is carrying beyond its last report,
and where each repository's image is warm.

BinderHub caches its pod count for up to 60 s, so during a burst the last ``/health`` report
is stale: the policy adds the launches it sent to each member since that member's pod count
last changed (forgetting those older than ``report_seconds``, by when the member's own count
includes them). It also counts launches per (member, repository) over a session-length
window, so a repository is spilled to its next member before BinderHub's ``per_repo_quota``
refuses it; and it remembers, for ``warm_seconds`` (a member's image cache lifetime), which
members were sent each repository, so that a repository keeps going where its image is.

Costs: :meth:`LoadTracker.record` and every read are O(1) dict operations (a read returns the
per-repository mapping it keeps, not a copy). Memory is bounded: counts are bucketed by time
and dropped by :meth:`expire` once out of their window, and the per-repository counts and the
warm memory hold at most ``max_repo_keys`` and ``max_warm_keys`` repositories (past that, the
oldest bucket is forgotten early). Time is passed in (``now``, seconds on any monotonic clock),
so the simulator replays traces through the same code.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

__all__ = ["LoadTracker"]

_EMPTY: Mapping[str, int] = {}
_EMPTY_WARM: Mapping[str, float] = {}

# Repositories remembered as warm somewhere, and counted in the session window: a day of
# mybinder.org launches has about 1,600 distinct repositories (1,576 on 2021-11-01), so these
# only bite under a flood of new URLs, which then costs at most about 45 MiB (about 450 bytes
# a repository) instead of growing with the flood. Past either, the oldest launches are
# forgotten early.
MAX_WARM_KEYS = 50_000
MAX_REPO_KEYS = 50_000


class LoadTracker:
    """Implements :class:`federation_redirect.policy.Loads`."""

    def __init__(
        self,
        *,
        session_seconds: float = 20 * 60,
        report_seconds: float = 60,
        warm_seconds: float = 6 * 3600,
        bucket_seconds: float = 10,
        max_warm_keys: int = MAX_WARM_KEYS,
        max_repo_keys: int = MAX_REPO_KEYS,
    ) -> None:
        self.session_seconds = session_seconds
        self.report_seconds = report_seconds
        self.warm_seconds = warm_seconds
        self.bucket_seconds = bucket_seconds
        # warm memory is bucketed coarser: it spans hours
        self.warm_bucket_seconds = max(bucket_seconds, warm_seconds / 36)
        self.max_warm_keys = max_warm_keys
        self.max_repo_keys = max_repo_keys
        self._since: dict[str, int] = {}
        self._since_total = 0
        self._since_buckets: dict[str, deque[list[int]]] = {}
        # key -> member -> launches within the session window, expired in buckets of a
        # twentieth of it (the window's edge is a minute late at most, by default): a bucket
        # holds every repository launched in it, so fewer buckets keep less memory under load
        self.repo_bucket_seconds = max(bucket_seconds, session_seconds / 20)
        self._repo: dict[str, dict[str, int]] = {}
        # (bucket, member -> key -> launches): no (member, key) tuple per launch
        self._repo_buckets: deque[tuple[int, dict[str, dict[str, int]]]] = deque()
        # key -> member -> time of the last launch sent there (within warm_seconds)
        self._warm: dict[str, dict[str, float]] = {}
        self._warm_buckets: deque[tuple[int, set[str]]] = deque()
        # Sharing with other replicas (see state.redis): each local launch counts ``scale``
        # times (the replicas last seen, while the shared store is down), and when
        # ``sharing`` is on it is also put in the outbox that the store flushes.
        self.scale = 1
        self.sharing = False
        # member -> repository -> launches: the shape the store publishes as it is
        self.outbox: dict[str, dict[str, int]] = {}

    # -- policy.Loads -----------------------------------------------------------------------

    def launches(self, member: str) -> int:
        return self._since.get(member, 0)

    def total_launches(self) -> int:
        return self._since_total

    def repo_launches(self, member: str, key: str) -> int:
        return self._repo.get(key, _EMPTY).get(member, 0)

    def repo_counts(self, key: str) -> Mapping[str, int]:
        return self._repo.get(key, _EMPTY)

    def warm(self, key: str) -> Mapping[str, float]:
        return self._warm.get(key, _EMPTY_WARM)

    # -- updates ---------------------------------------------------------------------------

    def record(self, member: str, key: str, now: float) -> None:
        """One launch of ``key`` was sent to ``member`` at ``now``."""
        if self.sharing:
            counts = self.outbox.get(member)
            if counts is None:
                counts = self.outbox[member] = {}
            counts[key] = counts.get(key, 0) + 1
        self.add(member, key, now, self.scale)

    def add(self, member: str, key: str, now: float, count: int = 1) -> None:
        """Count ``count`` launches of ``key`` to ``member`` at ``now`` (another replica's,
        or this one's); unlike :meth:`record` it never goes to the outbox."""
        bucket = int(now // self.bucket_seconds)
        self._since[member] = self._since.get(member, 0) + count
        self._since_total += count
        since = self._since_buckets.get(member)
        if since is None:
            since = self._since_buckets[member] = deque()
        if since and since[-1][0] == bucket:
            since[-1][1] += count
        else:
            since.append([bucket, count])
        repo = self._repo_buckets
        counts = self._repo.get(key)
        if counts is None:
            while len(self._repo) >= self.max_repo_keys and repo:
                self._forget_repo_bucket()
            counts = self._repo[key] = {}
        counts[member] = counts.get(member, 0) + count
        repo_bucket = int(now // self.repo_bucket_seconds)
        if not repo or repo[-1][0] != repo_bucket:
            repo.append((repo_bucket, {}))
        counted = repo[-1][1].get(member)
        if counted is None:
            counted = repo[-1][1][member] = {}
        counted[key] = counted.get(key, 0) + count
        self._warm_add(member, key, now)

    def _warm_add(self, member: str, key: str, now: float) -> None:
        if self.warm_seconds <= 0:
            return
        warm = self._warm.get(key)
        if warm is None:
            while len(self._warm) >= self.max_warm_keys and self._warm_buckets:
                # forgotten early, however recent: memory stays bounded under a flood
                self._warm_forget(self._warm_buckets.popleft()[1], before=math.inf)
            warm = self._warm[key] = {}
        warm[member] = now
        bucket = int(now // self.warm_bucket_seconds)
        buckets = self._warm_buckets
        if not buckets or buckets[-1][0] != bucket:
            buckets.append((bucket, set()))
        buckets[-1][1].add(key)

    def _warm_forget(self, keys: set[str], *, before: float) -> None:
        """Forget the warm entries of ``keys`` last sent before ``before``."""
        for key in keys:
            warm = self._warm.get(key)
            if warm is None:
                continue
            for member in [m for m, t in warm.items() if t < before]:
                del warm[member]
            if not warm:
                del self._warm[key]

    def drain(self) -> dict[str, dict[str, int]]:
        """Take the launches recorded since the last drain, per member and repository (for
        the store to share)."""
        out, self.outbox = self.outbox, {}
        return out

    def reported(self, member: str) -> None:
        """``member`` reported a new pod count: it now includes the launches sent so far."""
        self._since_total -= self._since.pop(member, 0)
        self._since_buckets.pop(member, None)

    def expire(self, now: float) -> None:
        """Forget launches older than the report, session and warm windows."""
        report_cut = int((now - self.report_seconds) // self.bucket_seconds)
        for member in list(self._since_buckets):
            since = self._since_buckets[member]
            while since and since[0][0] < report_cut:
                n = since.popleft()[1]
                self._since[member] -= n
                self._since_total -= n
            if not since:
                del self._since_buckets[member]
                self._since_total -= self._since.pop(member, 0)
        session_cut = int((now - self.session_seconds) // self.repo_bucket_seconds)
        repo = self._repo_buckets
        while repo and repo[0][0] < session_cut:
            self._forget_repo_bucket()
        warm_cut = int((now - self.warm_seconds) // self.warm_bucket_seconds)
        buckets = self._warm_buckets
        while buckets and buckets[0][0] < warm_cut:
            self._warm_forget(buckets.popleft()[1], before=now - self.warm_seconds)

    def _forget_repo_bucket(self) -> None:
        """Drop the oldest bucket of per-repository counts."""
        repo = self._repo
        for member, counted in self._repo_buckets.popleft()[1].items():
            for key, n in counted.items():
                counts = repo[key]
                left = counts[member] - n
                if left > 0:
                    counts[member] = left
                else:
                    del counts[member]
                    if not counts:
                        del repo[key]

    def tracked_repositories(self) -> int:
        """How many (member, repository) pairs are being counted (for metrics and tests)."""
        return sum(map(len, self._repo.values()))

    def warm_repositories(self) -> int:
        """How many repositories are remembered as warm somewhere (for metrics and tests)."""
        return len(self._warm)
