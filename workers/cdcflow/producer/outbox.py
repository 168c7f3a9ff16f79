"""The outbox: unconfirmed messages and the confirmed watermark, without any I/O.

The publisher's I/O thread keeps every message here from submission until the
broker confirms it. Publisher confirms arrive per delivery tag, possibly out of
order, possibly covering many tags at once (``multiple=True``); a nack or a
return (unroutable message) means "send again"; a lost channel means "send every
unconfirmed message again, in order, on the next channel". The *watermark* is
the checkpoint token of the newest entry such that it and every entry submitted
before it are confirmed: the only resume token that is safe to save.

Kept free of pika so each of those cases is unit-tested directly.
"""

from __future__ import annotations

import time
from collections import deque

from cdcflow.versions import Token

PENDING, SENT, RETURNED, CONFIRMED = 0, 1, 2, 3


class Entry:
    """One message (or, with ``body`` None, a bare checkpoint) in the outbox."""

    __slots__ = (
        "body",
        "changes",
        "checkpoint",
        "header",
        "message_id",
        "routing_key",
        "sent_at",
        "state",
        "tag",
    )

    def __init__(
        self,
        body: bytes | None,
        header: bytes | None,
        message_id: str | None,
        checkpoint: Token | None,
    ) -> None:
        self.body = body
        self.header = header  # AMQP content-header payload (see cdcflow.producer.amqp)
        self.message_id = message_id
        self.checkpoint = checkpoint  # token saveable once this and all before are confirmed
        self.changes = 0 if body is None else 1  # changes the message carries (batch: many)
        # None: the pipeline's exchange and routing key; else a queue on the default
        # exchange (failed-event records go straight to <collection>.failed).
        self.routing_key: str | None = None
        self.state = PENDING
        self.tag = 0
        self.sent_at = 0.0


def checkpoint_entry(token: Token) -> Entry:
    """A token with no message (skipped event, idle high-water mark) kept in order."""
    entry = Entry(None, None, None, token)
    entry.sent_at = time.monotonic()
    return entry


class Outbox:
    """Unconfirmed messages and the confirmed watermark (no I/O: unit-tested alone).

    ``_entries`` holds everything not yet part of the confirmed prefix, in
    submission order; ``_inflight`` holds what was sent on the current channel,
    in delivery-tag order (tags are consecutive from 1 on each channel).
    """

    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()
        self._inflight: deque[Entry] = deque()
        self._next_tag = 1
        self.resend: list[Entry] = []  # nacked, or returned then acked: send again
        self.watermark: Token | None = None
        self.watermark_at = 0.0  # monotonic time the watermark's entry was published
        self.unconfirmed = 0

    def add(self, entry: Entry) -> None:
        self._entries.append(entry)
        if entry.body is None:
            entry.state = CONFIRMED
            self._advance()
        else:
            self.unconfirmed += 1

    def sent(self, entry: Entry, now: float) -> int:
        """Record that ``entry`` was published on the current channel; its delivery tag."""
        tag = self._next_tag
        self._next_tag = tag + 1
        entry.tag = tag
        entry.state = SENT
        entry.sent_at = now
        self._inflight.append(entry)
        return tag

    def _settled(self, tag: int, multiple: bool) -> list[Entry]:
        """The in-flight entries a confirm for ``tag`` covers (out of order allowed)."""
        inflight = self._inflight
        if not inflight:
            return []
        if multiple:
            covered = []
            while inflight and inflight[0].tag <= tag:
                covered.append(inflight.popleft())
            return covered
        index = tag - inflight[0].tag
        if not 0 <= index < len(inflight):
            return []
        entry = inflight[index]
        if index == 0:
            inflight.popleft()
        else:
            inflight[index] = _SETTLED  # keeps tags consecutive for later lookups
        while inflight and inflight[0] is _SETTLED:
            inflight.popleft()
        return [entry]

    def ack(self, tag: int, multiple: bool) -> list[Entry]:
        """The broker took these; returns the newly confirmed entries."""
        confirmed = []
        for entry in self._settled(tag, multiple):
            if entry.state == SENT:
                entry.state = CONFIRMED
                confirmed.append(entry)
            elif entry.state == RETURNED:  # unroutable: acked, yet delivered nowhere
                entry.state = PENDING
                self.resend.append(entry)
        if confirmed:
            self.unconfirmed -= len(confirmed)
            self._advance()
        return confirmed

    def nack(self, tag: int, multiple: bool) -> list[Entry]:
        """The broker refused these: they go back to be sent again."""
        refused = [e for e in self._settled(tag, multiple) if e.state in (SENT, RETURNED)]
        for entry in refused:
            entry.state = PENDING
        self.resend.extend(refused)
        return refused

    def returned(self, message_id: str | None) -> Entry | None:
        """Mark the oldest in-flight message with this id as returned (unroutable)."""
        for entry in self._inflight:
            if entry.state == SENT and entry.message_id == message_id:
                entry.state = RETURNED
                return entry
        return None

    def take_resend(self) -> list[Entry]:
        pending = [e for e in self.resend if e.state == PENDING]
        self.resend = []
        return pending

    def reset(self) -> list[Entry]:
        """A new channel: every unconfirmed message, in order, to publish again."""
        self._inflight.clear()
        self._next_tag = 1
        self.resend = []
        pending = []
        for entry in self._entries:
            if entry.state != CONFIRMED:
                entry.state = PENDING
                pending.append(entry)
        return pending

    def _advance(self) -> None:
        entries = self._entries
        while entries and entries[0].state == CONFIRMED:
            entry = entries.popleft()
            if entry.checkpoint is not None:
                self.watermark = entry.checkpoint
                self.watermark_at = entry.sent_at


_SETTLED = Entry(None, None, None, None)  # placeholder for an out-of-order confirm
