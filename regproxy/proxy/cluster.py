"""What the egress keeps to carry out Dubbo's cluster invokers and consumer filters for the plans that
declare them (``Plan.special``; regproxy.governance.params reads the declarations):

* ``CallCounts``: calls in flight per (provider, method) and the time the successful ones took —
  Dubbo's ``RpcStatus``, fed by ``ActiveLimitFilter`` only where ``actives`` is declared, and read
  by ``actives`` itself, ``LeastActiveLoadBalance`` and ``ShortestResponseLoadBalance``;
* ``FanOut``: one consumer request sent to several providers (``ForkingClusterInvoker``: the first
  answer that is not a failure wins; ``BroadcastClusterInvoker``: every provider is called, a
  failure of any is the answer, else the last provider's);
* ``failsafe_reply``: what ``FailsafeClusterInvoker`` turns a failure into, an empty result.

Plain values and counters: the forwarder (regproxy.proxy.forwarder) does the sending and answering.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from regproxy.dubbo.encode import encode_response
from regproxy.routing.dubbo_balancers import RpcStats

if TYPE_CHECKING:
    from regproxy.proxy.exchange import Exchange

_OK: Final = 20
# A response body's first byte: hessian2's compact int of the result flag (0x90 + flag).
_EXCEPTION_FLAGS: Final = (0x90, 0x93)  # RESPONSE_WITH_EXCEPTION[_WITH_ATTACHMENTS]


def failed(raw: bytes) -> bool:
    """Whether a response is a failure for a cluster invoker: any status but OK, or OK with a
    business exception in the body (``Result.hasException``)."""
    return raw[3] != _OK or (len(raw) > 16 and raw[16] in _EXCEPTION_FLAGS)


def failsafe_reply(request_id: int) -> bytes:
    """``FailsafeClusterInvoker``: an RpcException becomes ``AsyncRpcResult.newDefaultAsyncResult(null)``,
    a successful response with a null value, readable by every Dubbo version."""
    return encode_response(request_id, None)


class CallCounts:
    """``RpcStatus`` per (address, method): in flight, and the successful calls and their summed
    elapsed milliseconds (what ``ShortestResponseLoadBalance`` estimates from)."""

    __slots__ = ("active", "elapsed", "succeeded", "waiting")

    def __init__(self) -> None:
        self.active: dict[tuple[str, str], int] = {}
        self.succeeded: dict[tuple[str, str], int] = {}
        self.elapsed: dict[tuple[str, str], int] = {}
        # Calls waiting for a slot under `actives` (ActiveLimitFilter waits up to the timeout).
        self.waiting: dict[tuple[str, str], deque[Exchange]] = {}

    def in_flight(self, address: str, method: str) -> int:
        return self.active.get((address, method), 0)

    def stats(self, address: str, method: str) -> RpcStats:
        key = (address, method)
        return RpcStats(self.active.get(key, 0), self.succeeded.get(key, 0), self.elapsed.get(key, 0))

    def begin(self, key: tuple[str, str], limit: int) -> bool:
        """Take a slot (``RpcStatus.beginCount``); False when ``limit`` (> 0) are in flight."""
        n = self.active.get(key, 0)
        if limit and n >= limit:
            return False
        self.active[key] = n + 1
        return True

    def end(self, key: tuple[str, str], elapsed_ms: int, ok: bool) -> None:
        """Give a slot back (``RpcStatus.endCount``)."""
        n = self.active.get(key, 0) - 1
        if n > 0:
            self.active[key] = n
        else:
            self.active.pop(key, None)
        if ok:
            self.succeeded[key] = self.succeeded.get(key, 0) + 1
            self.elapsed[key] = self.elapsed.get(key, 0) + elapsed_ms

    def forget_host(self, live: set[str]) -> None:
        """Totals of providers that left, dropped (a restart of the counting, as Dubbo's ``RpcStatus``
        of a destroyed invoker URL is never read again)."""
        for table in (self.succeeded, self.elapsed):
            for key in [k for k in table if k[0] not in live]:
                del table[key]


class FanOut:
    """One consumer request sent to ``expected`` providers at once (forking, broadcast). Collects
    their answers and says when the consumer's answer is ready."""

    __slots__ = (
        "answered",
        "broadcast",
        "children",
        "expected",
        "failures",
        "last_failure",
        "last_ok",
        "parent",
        "pending",
    )

    def __init__(self, parent: Exchange, expected: int, broadcast: bool) -> None:
        self.parent = parent
        self.expected = expected
        self.pending = expected
        self.broadcast = broadcast
        self.answered = False
        self.children: list[Exchange] = []  # the requests sent, one per provider
        self.failures = 0
        self.last_ok: bytes | None = None  # a response as it came (the upstream's request id)
        self.last_failure: bytes | tuple[int, str] | None = None  # a response, or (status, message)

    def settle(self, result: bytes | tuple[int, str], is_failure: bool) -> bytes | tuple[int, str] | None:
        """One child's outcome; the consumer's answer when it is decided (once), else None."""
        self.pending -= 1
        if self.answered:
            return None
        if is_failure:
            self.failures += 1
            self.last_failure = result
        else:
            assert isinstance(result, bytes)
            self.last_ok = result
            if not self.broadcast:
                self.answered = True  # forking: the first success wins
                return result
        if self.pending > 0:
            return None
        self.answered = True
        if self.broadcast and self.failures == 0:
            assert self.last_ok is not None
            return self.last_ok
        assert self.last_failure is not None
        return self.last_failure
