"""A bare change-stream reader, in a process of its own: the capture the source pays for.

``python -m bench.drain URI DB COLLECTION`` opens the producer's own
:class:`~cdcflow.producer.changestream.ChangeReader` (``updateLookup``, the
producer's batch size, its nap after an empty getMore) on the collection, prints
``ready`` once the stream is open and reads. The writer, once done, says on stdin
how many changes it made; the reader stops when it has read them all and prints
``read <n> <seconds>``. It encodes, packs and publishes nothing: while it
runs, the source serves exactly the reads any change-data-capture pipeline needs,
and nothing else of the pipeline competes for the machine. The writer's rate
meanwhile (``raw_write_captured_events_per_s``) is the most a pipeline reading
this source can carry on this machine; see :func:`bench.raw.write_while_captured`.
"""

from __future__ import annotations

import sys
import threading
import time

import pymongo

from cdcflow.config import ProducerSettings
from cdcflow.producer.changestream import ChangeReader
from cdcflow.producer.main import IDLE_SLEEP_S

STREAM_BATCH: int = ProducerSettings.model_fields["stream_batch"].default  # the producer's
TIMEOUT_S = 300.0


def main(argv: list[str]) -> int:
    uri, database, collection = argv
    written: list[int] = []  # how many changes the writer made, once it says

    def listen() -> None:
        line = sys.stdin.readline()
        written.append(int(line) if line.strip() else 0)

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(uri)
    reader = ChangeReader(client[database][collection], batch_size=STREAM_BATCH)
    reader.open()
    threading.Thread(target=listen, name="writer-count", daemon=True).start()
    print("ready", flush=True)
    read = 0
    started = time.monotonic()
    deadline = started + TIMEOUT_S
    while not (written and read >= written[0]) and time.monotonic() < deadline:
        if reader.next() is None:
            time.sleep(IDLE_SLEEP_S)
        else:
            read += 1
    print(f"read {read} {time.monotonic() - started:.3f}", flush=True)
    reader.close()
    client.close()
    return 0 if written and read >= written[0] else 1


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m bench.drain URI DB COLLECTION")
    sys.exit(main(sys.argv[1:]))
