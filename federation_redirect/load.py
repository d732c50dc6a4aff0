"""Launch counters for the bounded policy: what a member is carrying beyond its last report.

BinderHub caches its pod count for up to 60 s, so during a burst the last ``/health`` report
is stale: the policy adds the launches it sent to each member since that member's pod count
last changed (forgetting those older than ``report_seconds``, by when the member's own count
includes them). It also counts launches per (member, repository) over a session-length
window, so a repository is spilled to its next member before BinderHub's ``per_repo_quota``
refuses it.

Costs: :meth:`LoadTracker.record` and both reads are O(1) dict operations; memory is bounded
by the launches of one session window (counts are bucketed, then dropped by :meth:`expire`).
Time is passed in (``now``, seconds on any monotonic clock), so the simulator replays traces
through the same code.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque

__all__ = ["LoadTracker"]


class LoadTracker:
    """Implements :class:`federation_redirect.policy.Loads`."""

    def __init__(
        self,
        *,
        session_seconds: float = 20 * 60,
        report_seconds: float = 60,
        bucket_seconds: float = 10,
    ) -> None:
        self.session_seconds = session_seconds
        self.report_seconds = report_seconds
        self.bucket_seconds = bucket_seconds
        self._since: defaultdict[str, int] = defaultdict(int)
        self._since_buckets: defaultdict[str, deque[list[int]]] = defaultdict(deque)
        self._repo: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._repo_buckets: deque[tuple[int, Counter[tuple[str, str]]]] = deque()
        # Sharing with other replicas (see state.redis): each local launch counts ``scale``
        # times (the replicas last seen, while the shared store is down), and when
        # ``sharing`` is on it is also put in the outbox that the store flushes.
        self.scale = 1
        self.sharing = False
        self.outbox: Counter[tuple[str, str]] = Counter()

    # -- policy.Loads -----------------------------------------------------------------------

    def launches(self, member: str) -> int:
        return self._since.get(member, 0)

    def repo_launches(self, member: str, key: str) -> int:
        return self._repo.get((member, key), 0)

    # -- updates ---------------------------------------------------------------------------

    def record(self, member: str, key: str, now: float) -> None:
        """One launch of ``key`` was sent to ``member`` at ``now``."""
        if self.sharing:
            self.outbox[member, key] += 1
        self.add(member, key, now, self.scale)

    def add(self, member: str, key: str, now: float, count: int = 1) -> None:
        """Count ``count`` launches of ``key`` to ``member`` at ``now`` (another replica's,
        or this one's); unlike :meth:`record` it never goes to the outbox."""
        bucket = int(now // self.bucket_seconds)
        self._since[member] += count
        since = self._since_buckets[member]
        if since and since[-1][0] == bucket:
            since[-1][1] += count
        else:
            since.append([bucket, count])
        repo = self._repo_buckets
        if not repo or repo[-1][0] != bucket:
            repo.append((bucket, Counter()))
        repo[-1][1][member, key] += count
        self._repo[member, key] += count

    def drain(self) -> Counter[tuple[str, str]]:
        """Take the launches recorded since the last drain (for the store to share)."""
        out, self.outbox = self.outbox, Counter()
        return out

    def reported(self, member: str) -> None:
        """``member`` reported a new pod count: it now includes the launches sent so far."""
        self._since.pop(member, None)
        self._since_buckets.pop(member, None)

    def expire(self, now: float) -> None:
        """Forget launches older than the report and session windows."""
        report_cut = int((now - self.report_seconds) // self.bucket_seconds)
        for member in list(self._since_buckets):
            since = self._since_buckets[member]
            while since and since[0][0] < report_cut:
                self._since[member] -= since.popleft()[1]
            if not since:
                del self._since_buckets[member]
                self._since.pop(member, None)
        session_cut = int((now - self.session_seconds) // self.bucket_seconds)
        repo = self._repo_buckets
        while repo and repo[0][0] < session_cut:
            for mk, n in repo.popleft()[1].items():
                left = self._repo[mk] - n
                if left > 0:
                    self._repo[mk] = left
                else:
                    del self._repo[mk]

    def tracked_repositories(self) -> int:
        """How many (member, repository) pairs are being counted (for metrics and tests)."""
        return len(self._repo)
