"""How state documents are stored in Redis: JSON, compressed with zstd and a shared dictionary.

A customer document is about 1.5 KB of JSON, most of it the same words in
every document (event types, categories, field names, bucket keys of the
same days). Compressed one by one, small documents gain little (zstd alone:
~560 bytes); against a dictionary trained on typical documents they shrink
to ~300 bytes, which is what brings Redis memory per customer within its
budget (see benchmarks/RESULTS.md). The dictionary ships with the engine
(``state/state-v1.zdict``) and is never changed in place: a retrained one gets
a new id, and :func:`decode` keeps reading every id it knows, so documents
written by any earlier version stay readable. The reverse does not hold: an
engine older than this codec reads JSON only, so a rollback to one starts
with ``engage recode-state --codec json`` (``redis_store.recode``).

Which codec writes is a setting (``ENGAGE_STATE_CODEC``: ``zstd`` or
``json``, readable with ``redis-cli GET``); reading takes either, whatever
the setting, because a zstd frame and a JSON document cannot be confused
(a frame starts with the zstd magic number, a document with ``{``). Values
that are neither (a device link holds a customer id) pass through unchanged.

Encoding happens at the edge, in the Redis writer, never in the shards: the
dataflow, its recovery snapshots and every test of the logic see plain JSON.
"""

from __future__ import annotations

import threading
from pathlib import Path

import zstandard

#: The codecs a deployment may write with.
CODECS = ("zstd", "json")
#: The dictionary new documents are compressed with, and its zstd dictionary id.
DICTIONARY_ID = 1
_DIR = Path(__file__).resolve().parent
_DICTIONARIES = {DICTIONARY_ID: _DIR / "state-v1.zdict"}
#: Every zstd frame starts with these four bytes (RFC 8878, 3.1.1).
_MAGIC = b"\x28\xb5\x2f\xfd"
#: Level 3 compresses these documents ~8% smaller than level 1 at the same speed.
_LEVEL = 3

_local = threading.local()


class CodecError(ValueError):
    """A stored value that cannot be decoded (says which dictionary it needs)."""


def _dictionary(dict_id: int) -> zstandard.ZstdCompressionDict:
    cache: dict[int, zstandard.ZstdCompressionDict] = _local.__dict__.setdefault("dicts", {})
    found = cache.get(dict_id)
    if found is None:
        path = _DICTIONARIES.get(dict_id)
        if path is None:
            raise CodecError(f"state document compressed with zstd dictionary {dict_id}, which "
                             f"this version does not ship (it knows {sorted(_DICTIONARIES)}): "
                             f"a newer engine wrote it, or the value is corrupt")
        found = cache[dict_id] = zstandard.ZstdCompressionDict(path.read_bytes())
    return found


class Encoder:
    """Encodes documents for Redis with one codec. Not thread-safe: one per writer thread."""

    def __init__(self, codec: str = "zstd") -> None:
        if codec not in CODECS:
            raise ValueError(f"state codec {codec!r} is not one of {', '.join(CODECS)}")
        self.codec = codec
        self._zstd = zstandard.ZstdCompressor(
            level=_LEVEL, dict_data=_dictionary(DICTIONARY_ID), write_checksum=False,
            write_content_size=True, write_dict_id=True) if codec == "zstd" else None

    def encode(self, doc: bytes) -> bytes:
        """``doc`` (JSON bytes) as stored: compressed, or as it is for ``json``."""
        return doc if self._zstd is None else self._zstd.compress(doc)


def is_compressed(raw: bytes) -> bool:
    """Whether ``raw`` is a zstd frame (as opposed to plain JSON or a plain value)."""
    return raw[:4] == _MAGIC


def decode(raw: bytes) -> bytes:
    """A stored value as JSON bytes: zstd frames decompressed, anything else as it is.

    >>> decode(Encoder("zstd").encode(b'{"id":"c-1"}'))
    b'{"id":"c-1"}'
    >>> decode(b'{"id":"c-1"}'), decode(b"c-1")
    (b'{"id":"c-1"}', b'c-1')
    """
    if raw[:4] != _MAGIC:
        return raw
    try:
        dict_id = zstandard.get_frame_parameters(raw).dict_id
    except zstandard.ZstdError as exc:
        raise CodecError(f"a stored value starts like a zstd frame but is not one: {exc}") \
            from None
    decompressors: dict[int, zstandard.ZstdDecompressor] = \
        _local.__dict__.setdefault("decompressors", {})
    d = decompressors.get(dict_id)
    if d is None:
        d = decompressors[dict_id] = zstandard.ZstdDecompressor(
            dict_data=_dictionary(dict_id) if dict_id else None)
    try:
        return d.decompress(raw)
    except zstandard.ZstdError as exc:
        raise CodecError(f"a stored zstd document could not be decompressed: {exc}") from None


def decode_optional(raw: bytes | None) -> bytes | None:
    """:func:`decode`, passing None (a missing key) through."""
    return None if raw is None else decode(raw)


def train(samples: list[bytes], size: int = 16_384, dict_id: int = DICTIONARY_ID) -> bytes:
    """A zstd dictionary of ``size`` bytes trained on sample documents (for a new version)."""
    return zstandard.train_dictionary(size, samples, dict_id=dict_id, level=_LEVEL).as_bytes()
