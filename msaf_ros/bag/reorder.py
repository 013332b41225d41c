"""Feeding one topic's frames to the model in header stamp order while the bag is read once,
in bag order.

A camera's messages can sit in the bag out of stamp order (a split recording, a reordering
driver). :class:`Reorder` holds frames back until the one with the next stamp has come,
at most ``REORDER_WINDOW`` of them: beyond that the missing frame is no longer waited for,
and when it does come it is segmented late, after its successors (the stream's cache then
restarts, as for any stamp going backwards). No rclpy.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

#: Frames of one topic held back while waiting for one with an earlier header stamp.
REORDER_WINDOW = 64


class Reorder:
    """Items of one topic in, items out in the order of ``order`` (sequence numbers)."""

    def __init__(self, order: Sequence[int], window: Optional[int] = None) -> None:
        self.order = list(order)
        self._rank = set(self.order)
        self.window = REORDER_WINDOW if window is None else int(window)
        self._pos = 0                                  # next index of order to hand out
        self._pending: Dict[int, Any] = {}
        self._late: Set[int] = set()                   # given up on; handed out on arrival

    def __contains__(self, seq: int) -> bool:
        """Whether ``seq`` is to be segmented (not past --max-frames)."""
        return seq in self._rank

    def push(self, seq: int, item: Any) -> List[Tuple[Any, bool]]:
        """Item ``seq`` came; returns the items now due, in order, each with ``late``
        (True: it came after frames stamped later had been handed out)."""
        if seq in self._late:
            self._late.discard(seq)
            return [(item, True)]
        self._pending[seq] = item
        out: List[Tuple[Any, bool]] = []
        while self._pos < len(self.order):
            head = self.order[self._pos]
            if head not in self._pending:
                if len(self._pending) <= self.window:
                    break
                self._late.add(head)                   # stop waiting for it
                self._pos += 1
                continue
            out.append((self._pending.pop(head), False))
            self._pos += 1
        return out

    def flush(self) -> List[Any]:
        """The items still held back (their predecessors never came), in order."""
        rest = [self._pending.pop(s) for s in self.order[self._pos:] if s in self._pending]
        self._pos = len(self.order)
        return rest
