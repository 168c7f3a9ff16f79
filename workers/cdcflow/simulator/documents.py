"""Viewing documents, good and bad: what the simulator writes, as pure functions.

Every value is drawn from a seeded ``random.Random`` passed in, so the same seed
gives the same documents. :data:`BAD_KINDS` break one cleaning rule each, on
purpose, so the pipeline's rejections and fixes are exercised by the workload.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cdcflow.rules import DEVICES, FIELDS, MAX_KEY_LENGTH, RULES_BY_CODE, Action

ZIPF_EXPONENT = 1.1
DEVICE_WEIGHTS = dict(zip(DEVICES, (36, 26, 16, 12, 7, 3), strict=True))
COUNTRY_WEIGHTS = {
    "US": 22, "IN": 14, "BR": 9, "GB": 6, "DE": 6, "FR": 5, "JP": 5, "MX": 4, "ID": 4, "PT": 3,
    "ES": 3, "CA": 3, "IT": 3, "KR": 3, "NG": 2, "AU": 2, "PL": 2, "TR": 2, "NL": 1, "SE": 1,
}  # fmt: skip


def _draw(cum_weights: tuple[float, ...], rng: random.Random) -> int:
    """An index drawn with the weights whose running sums are given: O(log n)."""
    return bisect.bisect(cum_weights, rng.random() * cum_weights[-1], 0, len(cum_weights) - 1)


_DEVICES, _COUNTRIES = tuple(DEVICE_WEIGHTS), tuple(COUNTRY_WEIGHTS)
_DEVICE_CUM = tuple(itertools.accumulate(DEVICE_WEIGHTS.values()))
_COUNTRY_CUM = tuple(itertools.accumulate(COUNTRY_WEIGHTS.values()))


def utc_now() -> dt.datetime:
    """Now, truncated to the millisecond BSON stores, so kept values equal stored ones."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# --- documents ------------------------------------------------------------------------


@dataclass(frozen=True)
class Catalog:
    """Videos ``vid_0000``…: a fixed length each, popularity falling with rank (Zipf)."""

    video_ids: tuple[str, ...]
    lengths: tuple[int, ...]  # seconds, same index as video_ids
    cum_weights: tuple[float, ...]  # running sums of 1 / rank ** exponent

    @classmethod
    def build(cls, size: int, seed: int, exponent: float = ZIPF_EXPONENT) -> Catalog:
        rng = random.Random(f"catalog:{seed}")
        width = max(4, len(str(size - 1)))
        # Log-normal lengths around 8 minutes: many clips, some films (15 s to 3 h).
        lengths = [round(rng.lognormvariate(math.log(480), 0.9)) for _ in range(size)]
        return cls(
            tuple(f"vid_{index:0{width}d}" for index in range(size)),
            tuple(min(10_800, max(15, length)) for length in lengths),
            tuple(itertools.accumulate(1 / rank**exponent for rank in range(1, size + 1))),
        )


class Viewing(NamedTuple):
    """The state of one viewing: a tuple, because the simulator keeps every live one."""

    video_id: str
    user_id: str
    device: str
    country: str
    started_at: dt.datetime
    watched_time: float
    total_video_time: int

    def document(self, doc_id: str, updated_at: dt.datetime) -> dict[str, Any]:
        """The MongoDB document: ``_id`` and exactly the fields of ``rules.FIELDS``."""
        return {"_id": doc_id, **self._asdict(), "updated_at": updated_at}

    def advance(self, rng: random.Random) -> Viewing:
        """The viewer kept watching: 5-35 % of the video more, never past its end."""
        watched = self.watched_time + rng.uniform(0.05, 0.35) * self.total_video_time
        return self._replace(watched_time=min(float(self.total_video_time), round(watched, 1)))


def new_viewing(rng: random.Random, catalog: Catalog, *, users: int, now: dt.datetime) -> Viewing:
    """A viewing that started up to 90 s before ``now``."""
    video = _draw(catalog.cum_weights, rng)
    total = catalog.lengths[video]
    watched = round(rng.uniform(0.0, min(total, 90)), 1)
    started = now - dt.timedelta(milliseconds=round(watched * 1000))
    user = f"user_{rng.randrange(users):0{max(5, len(str(users - 1)))}d}"
    device, country = _DEVICES[_draw(_DEVICE_CUM, rng)], _COUNTRIES[_draw(_COUNTRY_CUM, rng)]
    return Viewing(catalog.video_ids[video], user, device, country, started, watched, total)


def make_viewing(
    doc_id: str, rng: random.Random, catalog: Catalog, *, users: int, now: dt.datetime
) -> dict[str, Any]:
    """A good viewing document: every cleaning rule passes it unchanged."""
    return new_viewing(rng, catalog, users=users, now=now).document(doc_id, now)


# --- bad documents --------------------------------------------------------------------

_MISSING: Any = object()  # a value that means "remove the field"
_KEYS = ("video_id", "user_id")
_NUMBERS = ("watched_time", "total_video_time")
_REQUIRED = tuple(spec.name for spec in FIELDS if spec.required)
ValueMaker = Callable[[dict[str, Any], str, random.Random], Any]  # (good doc, field, rng)


@dataclass(frozen=True)
class BadKind:
    """One way a writer gets a document wrong, and the cleaning rule that catches it."""

    name: str
    rule: str  # the code in cdcflow.rules.RULES that fixes or rejects it
    fields: tuple[str, ...]  # one of them, drawn, is broken
    value: ValueMaker = field(repr=False, compare=False)

    @property
    def action(self) -> Action:
        return RULES_BY_CODE[self.rule].action


def _one_of(*choices: Any) -> ValueMaker:
    return lambda doc, name, rng: rng.choice(choices)


# NaN and Infinity are written as text: nx-27017 refuses non-finite doubles in an
# insert and stores null for them in a $set; as text they are rejected all the same.
BAD_KINDS: tuple[BadKind, ...] = (
    BadKind("missing_field", "missing_field", _REQUIRED, _one_of(_MISSING)),
    BadKind("null_field", "missing_field", _REQUIRED, _one_of(None)),
    BadKind("blank_key", "blank_key", _KEYS, _one_of("", "   ")),
    BadKind("key_too_long", "key_too_long", _KEYS, lambda d, n, r: f"{d[n]}{'x' * MAX_KEY_LENGTH}"),
    BadKind("key_as_number", "key_not_string", _KEYS,
            lambda d, n, r: int("0" + "".join(c for c in str(d[n]) if c.isdigit()))),
    BadKind("key_wrong_type", "key_wrong_type", _KEYS,
            lambda d, n, r: r.choice(({"id": d[n]}, [d[n]], True))),
    BadKind("padded_key", "padded_text", _KEYS, lambda d, n, r: f" {d[n]} "),
    BadKind("number_as_text", "number_as_text", _NUMBERS, lambda d, n, r: str(d[n])),
    BadKind("number_as_words", "number_not_numeric", _NUMBERS,
            _one_of("two minutes", "n/a", "1:30", "")),
    BadKind("number_as_boolean", "number_is_boolean", _NUMBERS, _one_of(True, False)),
    BadKind("number_not_finite", "number_not_finite", _NUMBERS,
            _one_of("NaN", "Infinity", "-Infinity", "1e999")),
    BadKind("total_not_positive", "total_video_time_not_positive", ("total_video_time",),
            lambda d, n, r: r.choice((0, -1, -d[n]))),
    BadKind("watched_negative", "watched_time_negative", ("watched_time",),
            lambda d, n, r: -round(r.uniform(1, 600), 1)),
    BadKind("watched_past_end", "watched_time_exceeds_total", ("watched_time",),
            lambda d, n, r: d["total_video_time"] + r.randint(1, 600)),
    BadKind("unknown_device", "device_unknown", ("device",),
            _one_of("smart-fridge", "vr-headset", "car", 7)),
    BadKind("bad_country", "country_invalid", ("country",),
            _one_of("Portugal", "pt", "USA", "", 351)),
    BadKind("bad_timestamp", "timestamp_invalid", ("started_at",),
            _one_of("yesterday", "2025-13-45T99:00", "", True)),
)  # fmt: skip
BAD_KINDS_BY_NAME = {kind.name: kind for kind in BAD_KINDS}


def make_bad_document(
    kind: BadKind | str, document: Mapping[str, Any], rng: random.Random | None = None
) -> dict[str, Any]:
    """A copy of a good ``document`` (as :func:`make_viewing` makes) with one field
    broken the way ``kind`` says; which field and value are drawn from ``rng``."""
    kind = BAD_KINDS_BY_NAME[kind] if isinstance(kind, str) else kind
    rng = rng or random.Random(0)
    bad = dict(document)
    name = rng.choice(kind.fields)
    value = kind.value(bad, name, rng)
    if value is _MISSING:
        del bad[name]
    else:
        bad[name] = value
    return bad
