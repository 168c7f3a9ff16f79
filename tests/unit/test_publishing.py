"""The publisher's bookkeeping (outbox, confirmed watermark) and its pre-encoded frames.

The outbox decides which resume token may be saved, so every way a broker can
answer is covered: in order, out of order, ``multiple=True``, nack, return of an
unroutable message, and a lost channel (republish everything unconfirmed, in order).
"""

from __future__ import annotations

import pika
from pika import frame, spec

from cdcflow.events import CONTENT_TYPE, EncodedChange
from cdcflow.packing import amqp_message_id
from cdcflow.producer.amqp import (
    FRAME_OVERHEAD,
    append_publish,
    content_header,
    message_entry,
    publish_method,
)
from cdcflow.producer.outbox import CONFIRMED, PENDING, SENT, Entry, Outbox, checkpoint_entry


def token(n: int) -> dict[str, str]:
    return {"_data": f"nx:{n}"}


def message(n: int | None, body: bytes = b"{}") -> Entry:
    """A message whose checkpoint is nx:<n> (None: a snapshot document, no checkpoint)."""
    return Entry(body, b"header", f"m{n}", None if n is None else token(n))


def state(outbox: Outbox) -> tuple[dict[str, str] | None, int]:
    """(watermark, unconfirmed): read through a call, so asserts do not narrow types."""
    return outbox.watermark, outbox.unconfirmed


def sent_outbox(*entries: Entry) -> Outbox:
    outbox = Outbox()
    for entry in entries:
        outbox.add(entry)
        if entry.body is not None:
            outbox.sent(entry, now=0.0)
    return outbox


# --- watermark ------------------------------------------------------------------------


def test_in_order_acks_move_the_watermark_one_by_one():
    entries = [message(n) for n in (1, 2, 3)]
    outbox = sent_outbox(*entries)
    assert state(outbox) == (None, 3)
    assert outbox.ack(1, multiple=False) == [entries[0]]
    assert outbox.watermark == token(1)
    outbox.ack(2, multiple=False)
    outbox.ack(3, multiple=False)
    assert state(outbox) == (token(3), 0)


def test_multiple_ack_confirms_every_tag_up_to_it():
    entries = [message(n) for n in range(1, 6)]
    outbox = sent_outbox(*entries)
    confirmed = outbox.ack(4, multiple=True)
    assert confirmed == entries[:4]
    assert state(outbox) == (token(4), 1)
    outbox.ack(5, multiple=True)
    assert outbox.watermark == token(5)


def test_out_of_order_acks_wait_for_the_gap_to_close():
    entries = [message(n) for n in (1, 2, 3, 4)]
    outbox = sent_outbox(*entries)
    outbox.ack(3, multiple=False)
    outbox.ack(2, multiple=False)
    assert state(outbox)[0] is None  # 1 is still unconfirmed: nothing may be saved
    outbox.ack(1, multiple=False)
    assert outbox.watermark == token(3)
    outbox.ack(4, multiple=True)
    assert state(outbox) == (token(4), 0)


def test_multiple_ack_after_out_of_order_single_ack_counts_each_once():
    entries = [message(n) for n in (1, 2, 3)]
    outbox = sent_outbox(*entries)
    assert outbox.ack(2, multiple=False) == [entries[1]]
    assert outbox.ack(3, multiple=True) == [entries[0], entries[2]]
    assert state(outbox) == (token(3), 0)


def test_checkpoints_without_messages_pass_once_everything_before_is_confirmed():
    """Skipped events and idle high-water marks: saved only behind confirmed messages."""
    first, idle, last = message(1), checkpoint_entry(token(2)), message(3)
    outbox = sent_outbox(first, idle, last)
    assert idle.state == CONFIRMED and outbox.unconfirmed == 2
    outbox.ack(2, multiple=False)  # tag 2 is message nx:3
    assert outbox.watermark is None
    outbox.ack(1, multiple=False)
    assert outbox.watermark == token(3)


def test_snapshot_documents_carry_no_token_until_snapshot_end():
    documents = [message(None) for _ in range(3)]
    end = message(7)  # snapshot_end carries the snapshot point
    outbox = sent_outbox(*documents, end)
    outbox.ack(3, multiple=True)
    assert outbox.watermark is None  # a half-confirmed snapshot saves nothing
    outbox.ack(4, multiple=False)
    assert outbox.watermark == token(7)


def test_a_checkpoint_alone_moves_the_watermark_when_nothing_is_in_flight():
    outbox = Outbox()
    outbox.add(checkpoint_entry(token(9)))
    assert state(outbox) == (token(9), 0)
    assert outbox.watermark_at > 0


# --- refusals, returns, lost channels -------------------------------------------------


def test_nack_sends_the_message_again_and_holds_the_watermark():
    entries = [message(n) for n in (1, 2, 3)]
    outbox = sent_outbox(*entries)
    assert outbox.nack(2, multiple=False) == [entries[1]]
    outbox.ack(3, multiple=False)
    outbox.ack(1, multiple=False)
    assert outbox.watermark == token(1)
    resend = outbox.take_resend()
    assert resend == [entries[1]] and entries[1].state == PENDING
    tag = outbox.sent(entries[1], now=1.0)
    assert tag == 4  # tags go on counting on the same channel
    outbox.ack(tag, multiple=False)
    assert state(outbox) == (token(3), 0)


def test_multiple_nack_refuses_every_tag_up_to_it():
    entries = [message(n) for n in (1, 2, 3)]
    outbox = sent_outbox(*entries)
    assert outbox.nack(2, multiple=True) == entries[:2]
    assert [e.state for e in entries] == [PENDING, PENDING, SENT]
    assert outbox.take_resend() == entries[:2]


def test_returned_message_is_not_confirmed_by_its_ack():
    """mandatory=True: an unroutable message is returned, then acked; it was not delivered."""
    entries = [message(n) for n in (1, 2)]
    outbox = sent_outbox(*entries)
    assert outbox.returned("m1") is entries[0]
    assert outbox.ack(2, multiple=True) == [entries[1]]
    assert outbox.watermark is None and outbox.unconfirmed == 1
    assert outbox.take_resend() == [entries[0]]


def test_return_of_an_unknown_message_is_ignored():
    outbox = sent_outbox(message(1))
    assert outbox.returned("nope") is None
    outbox.ack(1, multiple=False)
    assert outbox.watermark == token(1)


def test_reset_republishes_every_unconfirmed_message_in_order():
    entries = [message(n) for n in range(1, 7)]
    outbox = sent_outbox(*entries[:4])
    outbox.add(entries[4])  # submitted, never sent
    outbox.ack(2, multiple=False)  # out of order: 1 still open
    outbox.add(entries[5])
    pending = outbox.reset()  # the channel is gone
    assert pending == [entries[0], entries[2], entries[3], entries[4], entries[5]]
    assert all(entry.state == PENDING for entry in pending)
    for entry in pending:
        outbox.sent(entry, now=2.0)
    assert [entry.tag for entry in pending] == [1, 2, 3, 4, 5]  # new channel, new tags
    outbox.ack(5, multiple=True)
    assert state(outbox) == (token(6), 0)


def test_acks_for_tags_never_sent_on_this_channel_are_ignored():
    outbox = sent_outbox(message(1))
    outbox.reset()
    assert outbox.ack(7, multiple=False) == []
    assert outbox.ack(7, multiple=True) == []
    assert outbox.unconfirmed == 1


# --- the encoded frames ---------------------------------------------------------------


def _pika_frames(channel: int, body: bytes, properties: pika.BasicProperties) -> bytes:
    method = spec.Basic.Publish(exchange="ex", routing_key="views", mandatory=True)
    frames = [frame.Method(channel, method).marshal()]
    frames.append(frame.Header(channel, len(body), properties).marshal())
    limit = 4096 - FRAME_OVERHEAD  # pika splits bodies at frame_max - 8
    for start in range(0, len(body), limit):
        frames.append(frame.Body(channel, body[start : start + limit]).marshal())
    return b"".join(frames)


def _encoded(channel: int, body: bytes, message_id: str, version: int) -> bytes:
    header = content_header(
        len(body), message_id=message_id, op="update", version=version, timestamp=1795644921
    )
    out: list[bytes] = []
    method = publish_method(channel, "ex", "views")
    append_publish(out, channel, method, header, body, 4096 - FRAME_OVERHEAD)
    return b"".join(out)


def _properties(message_id: str, version: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=2,
        message_id=message_id,
        timestamp=1795644921,
        headers={"x-cdcflow-op": "update", "x-cdcflow-version": str(version)},
    )


def test_frames_are_byte_identical_to_pika_basic_publish():
    version = (1732551172 << 32 | 1) << 32 | 2
    body = b'{"v":1,"op":"update","id":"d\xc3\xa9"}'
    token_data = "826744A204000000012B042C01002B026E5A1004"
    assert _encoded(3, body, token_data, version) == _pika_frames(
        3, body, _properties(token_data, version)
    )


def test_large_bodies_are_split_like_pika_splits_them():
    body = bytes(range(256)) * 40  # 10 kB over 4 kB frames
    assert _encoded(1, body, "nx:1", 1 << 32 | 1) == _pika_frames(
        1, body, _properties("nx:1", 1 << 32 | 1)
    )


def test_message_entry_properties_decode_as_published():
    change = EncodedChange(b'{"v":1}', "nx:12", "insert", 12 << 32 | 1, "d1", None)
    entry = message_entry(change, token(12))
    assert entry.checkpoint == token(12) and entry.message_id == "nx:12"
    assert entry.header is not None
    _, decoded = frame.decode_frame(
        b"\x02\x00\x01" + len(entry.header).to_bytes(4, "big") + entry.header + b"\xce"
    )
    properties = decoded.properties
    assert decoded.body_size == len(change.body)
    assert properties.content_type == CONTENT_TYPE
    assert properties.delivery_mode == 2
    assert properties.message_id == "nx:12"
    assert properties.headers == {"x-cdcflow-op": "insert", "x-cdcflow-version": str(12 << 32 | 1)}
    assert properties.timestamp > 0


def test_message_ids_over_255_bytes_become_a_stable_digest():
    long_id = "82" + "AB" * 200
    short = amqp_message_id(long_id)
    assert short.startswith("sha256:") and len(short) <= 255
    assert short == amqp_message_id(long_id)
    assert amqp_message_id("nx:5") == "nx:5"
    header = content_header(3, message_id=short, op="insert", version=1, timestamp=1)
    assert short.encode() in header


def test_backoff_doubles_per_failed_attempt_and_starts_again_after_a_reset():
    from cdcflow.producer.publishing import Backoff

    backoff = Backoff()
    assert backoff.attempt == 0
    delays = [backoff.next() for _ in range(8)]
    assert backoff.attempt == 8
    assert 0.25 <= delays[0] <= 0.35 and 0.5 <= delays[1] <= 0.6 and 1.0 <= delays[2] <= 1.1
    assert delays[-1] == 10.0  # capped
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next() <= 0.35
