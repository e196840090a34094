"""The state codec: what Redis stores for a document, and reading it back whatever wrote it."""

from __future__ import annotations

import orjson
import pytest
import zstandard
from hypothesis import given, settings, strategies as st

from engage.config import Settings
from engage.events import Event
from engage.state.codec import CodecError, Encoder, decode, decode_optional, is_compressed, train
from engage.state.customer import CustomerState, StateConfig

CFG = StateConfig.default()
T0 = 1_780_000_000_000


def _document() -> bytes:
    """A typical customer document: a few days of views, carts and an order."""
    s = CustomerState("c-1", CFG)
    for i in range(40):
        kind = ("product_view", "add_to_cart", "search")[i % 3]
        props: dict[str, object] = {"sku": f"sku-{i % 7}", "category": ("sofa", "bed", "lamp")[i % 3],
                                    "price": 120.0 + i}
        if kind == "add_to_cart":
            props["quantity"] = 1
        if kind == "search":
            props = {"query": "oak table"}
        s.apply(Event(f"e-{i}", kind, T0 + i * 3_600_000, "c-1", None, None, props), CFG)
    return orjson.dumps(s.to_doc(CFG))


def test_a_document_round_trips_and_shrinks_several_fold() -> None:
    doc = _document()
    stored = Encoder("zstd").encode(doc)
    assert is_compressed(stored) and decode(stored) == doc
    # The shipped dictionary knows the vocabulary: far better than zstd alone.
    assert len(stored) < len(doc) / 3
    assert len(stored) < len(zstandard.ZstdCompressor(level=3).compress(doc))


def test_encoding_is_deterministic_so_replays_write_the_same_bytes() -> None:
    doc = _document()
    assert Encoder("zstd").encode(doc) == Encoder("zstd").encode(doc)


def test_json_codec_and_plain_values_pass_through() -> None:
    doc = _document()
    assert Encoder("json").encode(doc) == doc
    assert decode(doc) == doc and decode(b"c-1") == b"c-1" and decode(b"") == b""
    assert decode_optional(None) is None


def test_an_unknown_codec_is_refused_with_its_name() -> None:
    with pytest.raises(ValueError, match="state codec 'lz4' is not one of zstd, json"):
        Encoder("lz4")
    with pytest.raises(ValueError, match="setting state_codec: 'gzip'"):
        Settings.load({"state_codec": "gzip"}, {})
    assert Settings.load({}, {"ENGAGE_STATE_CODEC": "json"}).state_codec == "json"


def test_a_document_from_an_unknown_dictionary_says_which_one_it_needs() -> None:
    other = zstandard.ZstdCompressionDict(train([_document()] * 8 + [b'{"id":"c-%d"}' % i
                                                                     for i in range(200)],
                                                size=2048, dict_id=99))
    stored = zstandard.ZstdCompressor(dict_data=other).compress(_document())
    with pytest.raises(CodecError, match="dictionary 99, which this version does not ship.*"
                                          "a newer engine wrote it, or the value is corrupt"):
        decode(stored)


def test_a_corrupt_frame_is_an_error_not_garbage() -> None:
    stored = Encoder("zstd").encode(_document())
    with pytest.raises(CodecError, match="zstd"):
        decode(stored[:4] + b"\x00" * 4)
    with pytest.raises(CodecError, match="could not be decompressed"):
        decode(stored[:-8])


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                                                       st.text(max_size=30)), max_size=30))
def test_any_json_document_round_trips(doc: dict[str, object]) -> None:
    raw = orjson.dumps(doc)
    assert decode(Encoder("zstd").encode(raw)) == raw
