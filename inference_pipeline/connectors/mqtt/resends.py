"""What a broker resends after a reconnect, told apart from new messages, so that no copy is processed twice.

After a reconnect to a session it kept, the broker resends every QoS 1 message it has not seen acknowledged, with
its packet id and the DUP flag; with a backlog that can be far more than its Receive Maximum (Mosquitto 2.0 keeps no
window while it drains a queue), and the copies can come behind thousands of newer messages. A copy (same packet id,
same payload) of a delivery that is still outstanding here (queued, or read and not yet acknowledged) is dropped and
the original moves to the new epoch, so its ack acknowledges the copy. A copy of a delivery whose ack went out but
never reached the broker (the receiver drops an ack of an older epoch, and one in flight is lost with the connection)
is acknowledged at once and dropped: the original's bundle has committed. Anything else is new.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# One ack: (connection epoch, packet id) of a QoS 1 delivery.
Ack = tuple[int, int]
Digest = tuple[int, int]


class Delivery(Protocol):
    payload: bytes
    mid: int
    qos: int
    epoch: int
    size: int
    dup: bool


def digest(delivery: Delivery) -> Digest:
    """What tells a resend from another message that reuses its packet id."""
    return hash(delivery.payload), delivery.size


class Resends:
    """The session's record of outstanding and recently acknowledged QoS 1 deliveries (used under its lock).

    Bounded: outstanding deliveries are those queued or in flight, and the acknowledged ones are kept by packet id
    (at most 65,535) for the current connection only.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._outstanding: dict[int, Delivery] = {}
        self._ack_dropped: set[int] = set()
        self._acked: dict[int, Digest] = {}
        self._resendable: dict[int, Delivery] = {}
        self._acked_before: dict[int, Digest] = {}

    def reconnected(self, epoch: int, session_present: bool) -> None:
        """A new connection: with the session kept, what is outstanding or was just acknowledged may come again."""
        self.epoch = epoch
        if session_present:
            self._resendable, self._acked_before = dict(self._outstanding), self._acked
        else:
            self._resendable, self._acked_before, self._outstanding = {}, {}, {}
            self._ack_dropped.clear()
        self._acked = {}

    def admit(self, delivery: Delivery) -> tuple[bool, list[Ack]]:
        """Whether to queue ``delivery``, and the acks to send at once (for a copy of what was acknowledged)."""
        if not delivery.qos:
            return True, []
        if delivery.dup:
            original = self._resendable.pop(delivery.mid, None)
            if original is not None and digest(original) == digest(delivery):
                if delivery.mid not in self._ack_dropped:
                    original.epoch = delivery.epoch
                    return False, []
                self._ack_dropped.discard(delivery.mid)
                del self._outstanding[delivery.mid]
                return False, [self._sent(delivery)]
            if self._acked_before.pop(delivery.mid, None) == digest(delivery):
                return False, [self._sent(delivery)]
        self._outstanding[delivery.mid] = delivery
        return True, []

    def acking(self, acks: Sequence[Ack]) -> list[Ack]:
        """The acks to send for these (from committed bundles), each in its delivery's current epoch."""
        sent = []
        for epoch, mid in acks:
            delivery = self._outstanding.get(mid)
            if delivery is None or epoch > delivery.epoch:
                sent.append((epoch, mid))
            elif delivery.epoch == self.epoch:
                del self._outstanding[mid]
                sent.append(self._sent(delivery))
            else:
                self._ack_dropped.add(mid)
                sent.append((delivery.epoch, mid))
        return sent

    def _sent(self, delivery: Delivery) -> Ack:
        """The ack of ``delivery`` in this connection, remembered in case the connection drops with it."""
        self._acked[delivery.mid] = digest(delivery)
        return self.epoch, delivery.mid
