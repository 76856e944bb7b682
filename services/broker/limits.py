"""How many tunnels may be open at once: in total and per user. Pure, no I/O."""

from __future__ import annotations

from collections import Counter

from runtime.errors import ResourceExhausted

__all__ = ["TunnelLimits"]


class TunnelLimits:
    """Counts open tunnels; refuses one over `total` or over `per_user` for one user."""

    def __init__(self, total: int, per_user: int) -> None:
        if total < 1 or per_user < 1:
            raise ValueError("tunnel limits must be at least 1")
        self.total = total
        self.per_user = per_user
        self._by_user: Counter[tuple[str, str, str]] = Counter()
        self.open = 0

    def admit(self, user: tuple[str, str, str]) -> None:
        """Count one more tunnel for `user`, or raise ResourceExhausted saying which limit."""
        if self.open >= self.total:
            raise ResourceExhausted(
                f"this broker carries at most {self.total} tunnels at once; try again when "
                "some have closed"
            )
        if self._by_user[user] >= self.per_user:
            raise ResourceExhausted(
                f"you have {self.per_user} tunnels open on this server, the most one user may; "
                "close some RDP connections first"
            )
        self._by_user[user] += 1
        self.open += 1

    def leave(self, user: tuple[str, str, str]) -> None:
        """Uncount a tunnel `admit` counted."""
        self.open -= 1
        self._by_user[user] -= 1
        if self._by_user[user] <= 0:
            del self._by_user[user]
