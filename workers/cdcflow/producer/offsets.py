"""Resume tokens saved in MongoDB, one document per captured namespace.

The token lives next to the data it points into (collection
``settings.offsets_collection`` of ``settings.mongo_db``), so a restored
database and its offsets travel together, and no extra service is needed.

Written with ``update_one(..., {"$set": ...}, upsert=True)`` keyed by the
namespace: nx-27017's ``replace_one(upsert=True)`` ignores the filter's ``_id``
and inserts a fresh ObjectId, so a store written that way never finds its token
again (tests read the token back on nx-27017).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

from cdcflow import metrics
from cdcflow.config import Settings
from cdcflow.versions import Token

log = logging.getLogger(__name__)


class OffsetStore:
    """Load, save and clear the resume token of one source namespace."""

    def __init__(self, client: MongoClient[dict[str, Any]], settings: Settings) -> None:
        self.namespace = settings.source_namespace
        self._collection: Collection[dict[str, Any]] = client[settings.mongo_db][
            settings.offsets_collection
        ]

    def stopped(self) -> dict[str, Any] | None:
        """The stop marker (drop, rename ...) if capture of this namespace is stopped."""
        document = self._collection.find_one({"_id": self.namespace})
        marker = (document or {}).get("stopped")
        return dict(marker) if isinstance(marker, dict) else None

    def stop(self, reason: str, token: Token | None, detail: str) -> None:
        """Remember that capture stopped, so a restarted producer does not resume.

        Deleting the namespace's document (what the log says to do) clears it: the
        next start snapshots the collection afresh.
        """
        self._collection.update_one(
            {"_id": self.namespace},
            {
                "$set": {
                    "stopped": {
                        "reason": reason,
                        "token": token,
                        "detail": detail,
                        "at": dt.datetime.now(dt.UTC),
                    }
                }
            },
            upsert=True,
        )

    def load(self) -> Token | None:
        """The saved token, or None: never saved, or cleared while a snapshot runs."""
        document = self._collection.find_one({"_id": self.namespace})
        if document is None:
            return None
        token = document.get("token")
        return dict(token) if isinstance(token, dict) and "_data" in token else None

    def save(self, token: Token) -> None:
        """Persist ``token``: only call with a token whose events the broker confirmed."""
        self._collection.update_one(
            {"_id": self.namespace},
            {"$set": {"token": token, "saved_at": dt.datetime.now(dt.UTC), "snapshot": None}},
            upsert=True,
        )
        metrics.RESUME_TOKEN_SAVES.inc()

    def clear(self, reason: str) -> None:
        """Forget the token before a re-snapshot.

        A producer killed during the snapshot then snapshots again on its next
        start instead of resuming from a token whose history is already known lost.
        """
        self._collection.update_one(
            {"_id": self.namespace},
            {"$set": {"token": None, "saved_at": dt.datetime.now(dt.UTC), "snapshot": reason}},
            upsert=True,
        )
        log.info(
            "saved resume token cleared until the snapshot is confirmed",
            extra={"stage": "producer", "reason": reason},
        )
