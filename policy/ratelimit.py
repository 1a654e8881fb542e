"""Rate limits and brute-force lockout, counted in the shared store so all workers see one count."""
from __future__ import annotations

from policy.settings import Rate, Submission
from policy.store import Store


class Limits:
    def __init__(self, store: Store, submission: Submission):
        self.store = store
        self.max_failures = submission.auth_failures
        self.window = submission.auth_failure_window

    def ip_locked(self, ip: str) -> bool:
        """The client address has too many recent failures, whatever username it tries."""
        return self.store.count(f"auth:ip:{ip}", self.window) >= self.max_failures

    def user_locked(self, username: str) -> bool:
        """The username has too many recent failures, from any address.

        Unknown usernames are counted like known ones, so the lockout reveals nothing about who exists.
        """
        return self.store.count(f"auth:user:{username.lower()}", self.window) >= self.max_failures

    def either_locked(self, ip: str, username: str) -> bool:
        return self.ip_locked(ip) or self.user_locked(username)

    def auth_failed(self, username: str, ip: str) -> bool:
        """Count a failure; True if it locked the client address out."""
        self.store.hit(f"auth:user:{username.lower()}", self.window)
        return self.store.hit(f"auth:ip:{ip}", self.window) >= self.max_failures

    def message_allowed(self, tenant: str, rate: Rate) -> bool:
        """Count one message for `tenant`; False once it is past its rate in the current window."""
        return self.store.hit(f"rate:tenant:{tenant}", rate.period) <= rate.count
