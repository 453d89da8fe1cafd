"""Bayeux channel names: wildcard matching and which channels a GWS user may subscribe to."""

from __future__ import annotations

__all__ = ["INTERNAL_CHANNEL", "OUTBOUND_CHANNEL", "channel_matches", "may_subscribe"]

OUTBOUND_CHANNEL = "/v2/me/outbound"
INTERNAL_CHANNEL = "/me/internal"

# GWS channels are scoped to the session's user by their "me" segment; a client cannot
# name anyone else's channels, so only these trees (and the catch-alls, which the
# server only ever fills with the user's own messages) are open.
_USER_ROOTS = ("/v2/me", "/me")
_CATCH_ALLS = frozenset({"/*", "/**"})


def channel_matches(pattern: str, channel: str) -> bool:
    """Bayeux rules: ``/a/*`` covers one more segment, ``/a/**`` any number of them."""
    if pattern == channel:
        return True
    if pattern.endswith("/**"):
        return channel.startswith(pattern[:-2])
    if pattern.endswith("/*"):
        prefix = pattern[:-1]
        return channel.startswith(prefix) and "/" not in channel[len(prefix) :]
    return False


def may_subscribe(channel: str) -> bool:
    if channel in _CATCH_ALLS:
        return True
    if not channel.startswith("/") or "*" in channel.rstrip("*"):
        return False
    stem = channel.rstrip("*").rstrip("/")
    if channel.endswith("*") and not channel.endswith(("/*", "/**")):
        return False
    return any(stem == root or stem.startswith(root + "/") for root in _USER_ROOTS)
