"""The policy engine: rules as data, one pure function that decides."""

from relayguard.policy.engine import Policy, PolicyError, RouteView, decide
from relayguard.policy.loader import load_policy

__all__ = ["Policy", "PolicyError", "RouteView", "decide", "load_policy"]
