"""The tenant budget: every call to Campaign passes here, first tries and retries alike.

- ``tenant``: :class:`TenantThrottle`, the one throttle per tenant (pacing, the hard
  1-second cap, the pause on 429, method lanes) and :class:`InFlightLimit`, the cap on
  calls under way;
- ``pacing``: the pure pieces it paces with: the rate controller, the sliding window,
  a method's lane;
- ``budget``: the budget shared with other writers through Redis, and the local share
  used while Redis is lost;
- ``autolimit``: ``tps_limit = "auto"``, the limit learned when nobody knows it.
"""

from .tenant import InFlightLimit, RateController, TenantThrottle

__all__ = ["InFlightLimit", "RateController", "TenantThrottle"]
