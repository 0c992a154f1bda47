"""AMQP basic properties and header tables as bytes: the router's own reader and splicer.

The router never decodes a whole header table. pika's codec recursed into every value and
turned some into Python objects that cannot go back (a ``T`` timestamp past year 9999 or
holding milliseconds raised inside the connection and dropped it; arrays nested thousands
deep hit the recursion limit; a double ``d`` came back as an int). Instead:

- ``Properties.parse`` splits a content header into its raw property fields;
- ``scan`` walks one table level, entry by entry, skipping each value by its length prefix
  (every variable-size AMQP field type carries one), so nothing is recursive and an entry
  it cannot size ends the scan with the rest kept as one opaque blob;
- only ``dlq-*`` values and the newest ``x-death`` entry are decoded (``read_value``, which
  never decodes nested tables or arrays: they stay ``Raw`` bytes);
- ``splice`` writes the table back: every foreign entry byte for byte, the router's entries
  encoded (or copied, when the router left a ``dlq-*`` value as it came), RabbitMQ's death
  headers cut out.

Field types are RabbitMQ's (rabbit_binary_parser) plus pika's extras (``U``, ``L``).
Nothing here raises on message content: truncated or unknown bytes are kept, not read.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar

from dlq_router.headers import BROKER_DEATH_HEADERS

BASIC_CLASS = 60  # the basic class: the only content class

# Basic properties in wire order: (name, flag bit, kind). Kinds: s shortstr, o octet,
# q 64-bit timestamp, t table (the headers).
FIELDS: tuple[tuple[str, int, str], ...] = (
    ("content_type", 1 << 15, "s"),
    ("content_encoding", 1 << 14, "s"),
    ("headers", 1 << 13, "t"),
    ("delivery_mode", 1 << 12, "o"),
    ("priority", 1 << 11, "o"),
    ("correlation_id", 1 << 10, "s"),
    ("reply_to", 1 << 9, "s"),
    ("expiration", 1 << 8, "s"),
    ("message_id", 1 << 7, "s"),
    ("timestamp", 1 << 6, "q"),
    ("type", 1 << 5, "s"),
    ("user_id", 1 << 4, "s"),
    ("app_id", 1 << 3, "s"),
    ("cluster_id", 1 << 2, "s"),
)
HEADERS = 2  # index of the headers table in FIELDS
EXPIRATION = 7
MESSAGE_ID = 8
USER_ID = 11

# Value sizes of the fixed-size field types; S x A F carry a 4-byte length instead.
_FIXED = {
    ord(kind): size
    for kinds, size in (("V", 0), ("tbB", 1), ("suU", 2), ("Iif", 4), ("D", 5), ("dlLT", 8))
    for kind in kinds
}
_SIZED = frozenset(map(ord, "SxAF"))
# Both in one list for the walks that run for every entry of every message (the router's
# ``Table``, replay's ``replaywire.walk``), indexed by type octet: 1 + the value's size for
# a fixed-size type, -1 when a 4-byte length follows, 0 for a type that cannot be sized.
STEP = [0] * 256
for _kind, _size in _FIXED.items():
    STEP[_kind] = 1 + _size
for _kind in _SIZED:
    STEP[_kind] = -1
_INT = {
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("s"): struct.Struct(">h"),
    ord("U"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("I"): struct.Struct(">i"),
    ord("i"): struct.Struct(">I"),
    ord("l"): struct.Struct(">q"),
    ord("L"): struct.Struct(">q"),
    ord("T"): struct.Struct(">Q"),  # seconds, kept an int: never a datetime
}
_FLOAT = {ord("f"): struct.Struct(">f"), ord("d"): struct.Struct(">d")}
_U32 = struct.Struct(">I")
_DEATH_NAMES = frozenset(n.encode() for n in BROKER_DEATH_HEADERS)
X_DEATH = b"x-death"
X_FIRST_DEATH_REASON = b"x-first-death-reason"
ROUTER_PREFIX = b"dlq-"
_D_OR_X = frozenset(b"dx")
# RabbitMQ's death headers for the table walk: 1 the record read, 2 the reason kept, 0 cut.
_DEATHS_READ = {
    name: 1 if name == X_DEATH else 2 if name == X_FIRST_DEATH_REASON else 0
    for name in _DEATH_NAMES
}
_CACHE_MAX = 4096  # entries in each of this module's caches (each is cleared when full)


class Raw:
    """A table value kept as its wire bytes (type octet included): nested tables and arrays,
    and anything the router does not read. Written back unchanged."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Raw) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        kind = chr(self.data[0]) if self.data else "?"
        return f"<AMQP {kind!r} value, {len(self.data)} bytes>"


# ---- reading ---------------------------------------------------------------------------


def value_end(buf: bytes, pos: int, end: int) -> int:
    """Where the value starting at ``pos`` (its type octet) ends; -1 if it cannot be sized
    or runs past ``end``."""
    if pos >= end:
        return -1
    kind = buf[pos]
    fixed = _FIXED.get(kind)
    if fixed is not None:
        stop = pos + 1 + fixed
    elif kind in _SIZED and pos + 5 <= end:
        stop = pos + 5 + _U32.unpack_from(buf, pos + 1)[0]
    else:
        return -1
    return stop if stop <= end else -1


def scan(buf: bytes, start: int, end: int) -> tuple[list[tuple[bytes, int, int, int]], int]:
    """One table level: ``(name, entry start, value start, entry end)`` per entry, and where
    readable entries stop (``end`` unless the rest could not be sized: it is then one
    opaque tail, ``buf[stop:end]``). ``value_end`` inlined: this runs for every entry of
    every dead letter."""
    entries: list[tuple[bytes, int, int, int]] = []
    append = entries.append
    fixed_sizes, sized, u32 = _FIXED, _SIZED, _U32.unpack_from
    pos = start
    while pos < end:
        value = pos + 1 + buf[pos]
        if value >= end:
            return entries, pos
        kind = buf[value]
        fixed = fixed_sizes.get(kind)
        if fixed is not None:
            stop = value + 1 + fixed
        elif kind in sized and value + 5 <= end:
            stop = value + 5 + u32(buf, value + 1)[0]
        else:
            return entries, pos
        if stop > end:
            return entries, pos
        append((buf[pos + 1 : value], pos, value, stop))
        pos = stop
    return entries, end


def read_value(buf: bytes, pos: int, stop: int) -> Any:
    """A scalar as Python (``S`` as str when it is UTF-8, else bytes; ``T`` as int seconds;
    ``d``/``f`` as float; ``D`` as Decimal); ``F``, ``A`` and the unknown as ``Raw``."""
    kind = buf[pos]
    if kind == 83:  # S
        data = buf[pos + 5 : stop]
        try:
            return data.decode()
        except UnicodeDecodeError:
            return data
    reader = _INT.get(kind)
    if reader is not None:
        return reader.unpack_from(buf, pos + 1)[0]
    if kind == 116:  # t
        return buf[pos + 1] != 0
    reader = _FLOAT.get(kind)
    if reader is not None:
        return reader.unpack_from(buf, pos + 1)[0]
    if kind == 86:  # V
        return None
    if kind == 120:  # x
        return buf[pos + 5 : stop]
    if kind == 68:  # D: scale octet, signed 32-bit value
        return Decimal(struct.unpack_from(">i", buf, pos + 2)[0]).scaleb(-buf[pos + 1])
    return Raw(buf[pos:stop])


def nesting_within(buf: bytes, pos: int, stop: int, limit: int) -> bool:
    """Whether the value at ``pos`` nests tables/arrays no deeper than ``limit`` and every
    nested value can be sized: a check before handing it to a recursive decoder. Iterative
    (a stack of (end, depth)); reads lengths only."""
    todo = [(pos, stop, 0)]
    while todo:
        start, end, depth = todo.pop()
        kind = buf[start]
        if kind not in _NESTING:
            continue
        if depth >= limit:
            return False
        inner, inner_end = start + 5, end
        if kind == 70:  # F: entries
            entries, readable = scan(buf, inner, inner_end)
            if readable != inner_end:
                return False
            todo.extend((value, e, depth + 1) for _name, _s, value, e in entries)
        else:  # A: values back to back
            at = inner
            while at < inner_end:
                value_stop = value_end(buf, at, inner_end)
                if value_stop < 0:
                    return False
                todo.append((at, value_stop, depth + 1))
                at = value_stop
    return True


_NESTING = frozenset(b"FA")


def text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None


_DEATH_FIELDS = {
    b"exchange": "exchange",
    b"queue": "queue",
    b"reason": "reason",
    b"original-expiration": "original-expiration",
}


def _short_text(buf: bytes, value: int, end: int) -> str | None:
    """An ``S`` value as text (lossy on bad UTF-8); None for any other type."""
    if buf[value] != 83:  # S
        return None
    return buf[value + 5 : end].decode("utf-8", "replace")


def newest_death(buf: bytes, pos: int, stop: int) -> dict[str, Any]:
    """Fields of the first (newest) table of an ``x-death`` array; {} if it is not one."""
    if buf[pos] != 65 or stop - pos < 10 or buf[pos + 5] != 70:  # A, then F
        return {}
    first_end = value_end(buf, pos + 5, stop)
    if first_end < 0:
        return {}
    out: dict[str, Any] = {}
    entries, _ = scan(buf, pos + 10, first_end)
    wanted = _DEATH_FIELDS
    for name, _start, value, end in entries:
        field = wanted.get(name)
        if field is not None:
            out[field] = _short_text(buf, value, end)
        elif name == b"routing-keys" and buf[value] == 65 and end - value > 5:
            key_end = value_end(buf, value + 5, end)  # the first key of the array
            if key_end > 0:
                out["routing-keys"] = _short_text(buf, value + 5, key_end)
    return out


# Newest death records by their ``x-death`` value's bytes. The broker writes the same bytes
# for every message of one queue dead-lettered in the same second for the same reason and
# count (its ``time`` field is in seconds), so a burst of dead letters reads it once.
# Bounded: cleared when full. The records are shared, hence typed read-only (Mapping).
_DEATHS: dict[bytes, Mapping[str, Any]] = {}
_NO_DEATH: Mapping[str, Any] = MappingProxyType({})  # (Mapping: read-only to mypy)


def death_record(buf: bytes, pos: int, stop: int) -> Mapping[str, Any]:
    """``newest_death`` of ``buf[pos:stop]``, decoded once per distinct value."""
    key = buf[pos:stop]
    found = _DEATHS.get(key)
    if found is None:
        if len(_DEATHS) >= _CACHE_MAX:
            _DEATHS.clear()
        found = _DEATHS[key] = newest_death(key, 0, len(key))
    return found


# Which fields a property flags word holds, in wire order: (index in FIELDS, kind). One
# producer sends the same flags for every message, so each word is worked out once.
_PLANS: dict[int, tuple[tuple[int, str], ...]] = {}


def _plan(flags: int) -> tuple[tuple[int, str], ...]:
    plan = _PLANS.get(flags)
    if plan is None:
        plan = tuple((i, kind) for i, (_n, bit, kind) in enumerate(FIELDS) if flags & bit)
        if len(_PLANS) < _CACHE_MAX:
            _PLANS[flags] = plan
    return plan


class Properties:
    """One content header's basic properties as raw fields, headers read as described above.

    ``fields[i]`` is the encoded field ``FIELDS[i]`` (shortstr with its length octet) or
    None; the headers table is ``table`` (without its length) and not in ``fields``.
    Mutable: the router drops ``expiration``/``user_id`` and replaces the table.

    Parsed properties also keep the bytes around the table (``before``: flags and the
    fields ahead of it; ``after``: the rest) and the fields as parsed: while the fields are
    unchanged, ``encode`` writes those bytes around the new table instead of rebuilding
    every field.
    """

    INDEX: ClassVar[int] = BASIC_CLASS  # what pika reads from the properties it publishes
    __slots__ = ("after", "before", "fields", "flag_tail", "parsed", "table", "unreadable")

    def __init__(
        self, fields: list[bytes | None], table: bytes | None, flag_tail: bytes = b""
    ) -> None:
        self.fields = fields
        self.table = table
        self.flag_tail = flag_tail  # continuation flag words, kept as they came
        self.unreadable: bytes | None = None  # the property list, when it could not be split
        self.parsed: tuple[bytes | None, ...] | None = None  # fields as ``before``/``after`` hold
        self.before = self.after = b""

    @classmethod
    def parse_or_keep(cls, buf: bytes, pos: int, end: int) -> Properties:
        """``parse``, or (on bytes that do not split into fields) empty properties that
        keep the whole property list in ``unreadable``: reading never raises."""
        try:
            return cls.parse(buf, pos, end)
        except (IndexError, ValueError, struct.error):
            props = cls([None] * len(FIELDS), None)
            props.unreadable = buf[pos:end]
            return props

    @classmethod
    def parse(cls, buf: bytes, pos: int, end: int) -> Properties:
        """The property list in ``buf[pos:end]`` (after class, weight and body size).
        Raises ValueError when the fields overrun ``end`` (RabbitMQ never sends that)."""
        first = pos
        flags = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
        tail_start = pos
        word = flags
        while word & 1:  # flag continuation (none defined for basic; kept verbatim)
            word = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        flag_tail = buf[tail_start:pos]
        fields: list[bytes | None] = [None] * len(FIELDS)
        table = None
        table_at = table_end = -1
        for i, kind in _plan(flags):
            if kind == "s":
                stop = pos + 1 + buf[pos]
            elif kind == "o":
                stop = pos + 1
            elif kind == "q":
                stop = pos + 8
            else:
                length = _U32.unpack_from(buf, pos)[0]
                stop = pos + 4 + length
                if stop > end:
                    raise ValueError("header table runs past the content header")
                table = buf[pos + 4 : stop]
                table_at, table_end = pos, stop
                pos = stop
                continue
            if stop > end:
                raise ValueError(f"property {FIELDS[i][0]} runs past the content header")
            fields[i] = buf[pos:stop]
            pos = stop
        props = cls(fields, table, flag_tail)
        if table_at >= 0 and pos == end:
            props.parsed = tuple(fields)
            props.before = buf[first:table_at]
            props.after = buf[table_end:end]
        return props

    def copy(self) -> Properties:
        return Properties(list(self.fields), self.table, self.flag_tail)

    def short(self, index: int) -> str | None:
        raw = self.fields[index]
        return None if raw is None else raw[1:].decode("utf-8", "replace")

    @property
    def message_id(self) -> str | None:
        return self.short(MESSAGE_ID)

    def encode(self) -> list[bytes]:
        """The property list (pika's ``Header.marshal`` prefixes class, weight and size)."""
        table = self.table
        if table is not None and self.parsed is not None and tuple(self.fields) == self.parsed:
            return [b"".join((self.before, _U32.pack(len(table)), table, self.after))]
        flags = 1 if self.flag_tail else 0
        pieces: list[bytes] = [b"", self.flag_tail]
        for i, (_name, bit, _kind) in enumerate(FIELDS):
            if i == HEADERS:
                if table is not None:
                    flags |= bit
                    pieces.append(_U32.pack(len(table)))
                    pieces.append(table)
                continue
            raw = self.fields[i]
            if raw is not None:
                flags |= bit
                pieces.append(raw)
        pieces[0] = flags.to_bytes(2, "big")
        return [b"".join(pieces)]


# ---- writing ---------------------------------------------------------------------------


def encode_value(value: Any) -> bytes:
    """A router value on the wire. Never raises: what has no AMQP type goes as text."""
    if type(value) is int and -(2**31) <= value < 2**31:  # the common cases first
        return b"I" + value.to_bytes(4, "big", signed=True)
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, str):
        data = value.encode("utf-8", "replace")
        return b"S" + _U32.pack(len(data)) + data
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + value.to_bytes(4, "big", signed=True)
        if -(2**63) <= value < 2**63:
            return b"l" + value.to_bytes(8, "big", signed=True)
        return encode_value(str(value))
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if value is None:
        return b"V"
    if isinstance(value, bytes | bytearray):
        return b"S" + _U32.pack(len(value)) + bytes(value)
    return encode_value(str(value))


# Entries whose value repeats from message to message (route, origin, tier names): encoded
# once. Bounded: cleared when full (the values come from the topology and from headers).
_TEXT_ENTRIES: dict[tuple[str, str], bytes] = {}
_NAMES: dict[str, bytes] = {}


def encode_entry(name: str, value: Any) -> bytes:
    if type(value) is str and len(value) <= 256:
        cached = _TEXT_ENTRIES.get((name, value))
        if cached is None:
            if len(_TEXT_ENTRIES) >= _CACHE_MAX:
                _TEXT_ENTRIES.clear()
            cached = _TEXT_ENTRIES[name, value] = _name(name) + encode_value(value)
        return cached
    return _name(name) + encode_value(value)


def _name(name: str) -> bytes:
    prefix = _NAMES.get(name)
    if prefix is None:
        key = name.encode("utf-8", "replace")[:255]
        prefix = bytes((len(key),)) + key
        if len(_NAMES) < _CACHE_MAX:
            _NAMES[name] = prefix
    return prefix


_MISSING = object()


class Table:
    """A header table split for the router: foreign entries (bytes), ``dlq-*`` values
    (decoded, with their wire bytes), the newest death record."""

    __slots__ = ("death", "foreign", "ours", "ours_raw", "reason_at", "table", "tail")

    def __init__(self, table: bytes | None) -> None:
        self.foreign: list[bytes] = []  # whole entries, in order
        self.ours: dict[str, Any] = {}  # dlq-* name -> value
        self.ours_raw: dict[str, bytes] = {}  # dlq-* name -> whole entry as it came
        self.death: Mapping[str, Any] = _NO_DEATH  # shared and read-only (death_record)
        self.table = table
        self.reason_at: tuple[int, int] | None = None  # x-first-death-reason, read if asked
        self.tail = b""  # bytes past the last entry that could be sized (kept last)
        if not table:
            return
        # ``scan`` inlined, classifying as it goes: this is most of the router's reading.
        # Only a name starting with "d" or "x" can be the router's or a death header.
        steps, u32, d_or_x, deaths = STEP, _U32.unpack_from, _D_OR_X, _DEATHS_READ
        foreign = self.foreign
        run_start = run_end = 0  # a run of adjacent foreign entries is copied as one slice
        pos, end = 0, len(table)
        while pos < end:
            start = pos
            value = pos + 1 + table[pos]
            if value >= end:
                break
            step = steps[table[value]]
            if step > 0:
                stop = value + step
            elif step < 0 and value + 5 <= end:
                stop = value + 5 + u32(table, value + 1)[0]
            else:
                break
            if stop > end:
                break
            pos = stop
            if value > start + 1 and table[start + 1] in d_or_x:
                name = table[start + 1 : value]
                death = deaths.get(name)
                if death is not None:  # RabbitMQ's: cut out
                    if death == 1:
                        self.death = death_record(table, value, stop)
                    elif death == 2:
                        self.reason_at = (value, stop)
                    continue
                if name[:4] == ROUTER_PREFIX:
                    key = name.decode("utf-8", "replace")
                    self.ours[key] = read_value(table, value, stop)
                    self.ours_raw[key] = table[start:stop]
                    continue
            if start != run_end:
                if run_end > run_start:
                    foreign.append(table[run_start:run_end])
                run_start = start
            run_end = stop
        if run_end > run_start:
            foreign.append(table[run_start:run_end])
        self.tail = table[pos:]

    @property
    def first_death_reason(self) -> str | None:
        """``x-first-death-reason`` as text (read only when asked: with an ``x-death``
        record, nobody asks)."""
        if self.reason_at is None or self.table is None:
            return None
        return text(read_value(self.table, *self.reason_at))

    def splice(self, headers: Mapping[str, Any], foreign: list[bytes] | None = None) -> bytes:
        """The table to publish: foreign entries byte for byte, then ``headers`` (values the
        router left as they came are copied, the others encoded), then any opaque tail."""
        ours, raw = self.ours, self.ours_raw
        pieces = list(self.foreign if foreign is None else foreign)
        append, missing, texts = pieces.append, _MISSING, _TEXT_ENTRIES
        for name, value in headers.items():
            if ours and ours.get(name, missing) is value:
                append(raw[name])
                continue
            kind = type(value)
            if kind is str:
                append(texts.get((name, value)) or encode_entry(name, value))
            elif kind is int and -(2**31) <= value < 2**31:
                append(_name(name) + b"I" + value.to_bytes(4, "big", signed=True))
            elif kind is int and -(2**63) <= value < 2**63:  # ms timestamps
                append(_name(name) + b"l" + value.to_bytes(8, "big", signed=True))
            else:
                append(encode_entry(name, value))
        pieces.append(self.tail)
        return b"".join(pieces)

    def foreign_entries(self) -> list[tuple[bytes, int]]:
        """Each foreign entry's name and size (for choosing what to drop when too big)."""
        out: list[tuple[bytes, int]] = []
        for run in self.foreign:
            entries, _ = scan(run, 0, len(run))
            out.extend((name, e - s) for name, s, _v, e in entries)
        return out

    def without(self, names: set[bytes]) -> list[bytes]:
        """Foreign entries minus those named ``names``."""
        kept: list[bytes] = []
        for run in self.foreign:
            entries, _ = scan(run, 0, len(run))
            kept.extend(run[s:e] for name, s, _v, e in entries if name not in names)
        return kept


def publish_id(table: bytes | None) -> int | None:
    """The router's ``dlq-publish-id`` in a returned message's header table."""
    if not table:
        return None
    entries, _ = scan(table, 0, len(table))
    for name, _start, value, end in entries:
        if name == b"dlq-publish-id":
            found = read_value(table, value, end)
            return found if isinstance(found, int) and not isinstance(found, bool) else None
    return None
