"""Tests for bridge.protocol.sse: one table of streams drives the decoder and the encoder.

Every table case is decoded whole, byte by byte, split in two at every offset, and followed
by trailing data (as h11's tests/test_io.py does). Hypothesis then checks the invariants in
the module docstring over generated events and over arbitrary bytes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bridge.protocol.sse import (
    END_OF_STREAM,
    NEED_DATA,
    Decoder,
    Event,
    SSEProtocolError,
    encode,
    encode_comment,
    frame,
)

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Case:
    """A stream, the events it must decode to, and two facts about its shape."""

    name: str
    wire: bytes
    events: tuple[Event, ...]
    # wire == the concatenated encode() of the events, so the encoder must reproduce it.
    canonical: bool = False
    # The last event is dispatched only by the end of the stream (no final blank line).
    ends_at_eof: bool = False


def blocks_case(name: str, blocks: list[tuple[bytes, Event]], **kwargs: bool) -> Case:
    """A case whose wire is the blocks concatenated, each block the raw bytes of its event."""
    wire = b"".join(raw for raw, _ in blocks)
    return Case(name, wire, tuple(replace(event, raw=raw) for raw, event in blocks), **kwargs)


def one(name: str, wire: bytes, event: Event, **kwargs: bool) -> Case:
    """A case whose whole wire is one event."""
    return blocks_case(name, [(wire, event)], **kwargs)


def _anthropic_blocks() -> list[tuple[bytes, Event]]:
    messages = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-sonnet-4-5",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 25, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                # U+2028 unescaped inside a JSON string: it must not split the line.
                "delta": {"type": "text_delta", "text": "!\u2028How\u2029can I help?\x85"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    blocks = []
    for name, payload in messages:
        data = json.dumps(payload, ensure_ascii=False)
        blocks.append((f"event: {name}\ndata: {data}\n\n".encode(), Event(data, event=name)))
    return blocks


def _openai_blocks() -> list[tuple[bytes, Event]]:
    chunk = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    final = dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    datas = [json.dumps(chunk), json.dumps(final), "[DONE]"]
    return [(f"data: {data}\n\n".encode(), Event(data)) for data in datas]


CASES = [
    one("lf", b"data: hello\n\n", Event("hello"), canonical=True),
    one("crlf", b"data: hello\r\n\r\n", Event("hello")),
    one("cr", b"data: hello\r\r", Event("hello")),
    one("mixed endings", b"event: a\r\ndata: 1\rdata: 2\n\r\n", Event("1\n2", event="a")),
    one(
        "multi-line data",
        b"data: line one\ndata: line two\ndata: \ndata:three\n\n",
        Event("line one\nline two\n\nthree"),
    ),
    blocks_case(
        "two events",
        [(b"data: a\n\n", Event("a")), (b"event: e\ndata: b\n\n", Event("b", event="e"))],
        canonical=True,
    ),
    one(
        "event id retry",
        b"event: update\nid: 42\nretry: 3000\ndata: {}\n\n",
        Event("{}", event="update", id="42", retry=3000),
        canonical=True,
    ),
    Case(
        "comment-only blocks are skipped, comments inside an event are kept in raw",
        b": keep-alive\n\n:ping\n\n: first\ndata: x\n: inside\n\n",
        (Event("x", raw=b": first\ndata: x\n: inside\n\n"),),
    ),
    Case(
        "blocks without data are not dispatched and do not leak into the next event",
        b"event: lonely\n\nid: 7\n\nretry: 5\n\ndata: z\n\n",
        (Event("z", raw=b"data: z\n\n"),),
    ),
    Case(
        "extra blank lines",
        b"\n\r\n\rdata: x\n\n\n",
        (Event("x", raw=b"data: x\n\n"),),
    ),
    one("unknown field and no-colon field", b"foo: bar\nbaz\ndata: x\n\n", Event("x")),
    one("data without colon is an empty line of data", b"data\n\n", Event("")),
    one("data with empty value", b"data:\n\n", Event("")),
    one("two empty data lines", b"data\ndata\n\n", Event("\n")),
    one("one space after the colon is removed", b"data:x\ndata:  y\n\n", Event("x\n y")),
    one("field names are case sensitive", b"Data: x\nDATA: y\ndata: z\n\n", Event("z")),
    one(
        "the last event and id win",
        b"event: a\nevent: b\nid: 1\nid: 2\ndata: x\n\n",
        Event("x", event="b", id="2"),
    ),
    one("empty event and id", b"event\nid:\ndata: x\n\n", Event("x", event="", id="")),
    one("id containing NUL is ignored", b"id: 1\nid: a\x00b\ndata: x\n\n", Event("x", id="1")),
    one(
        "retry that is not all ASCII digits is ignored",
        # "\xd9\xa3" is ARABIC-INDIC DIGIT THREE: a digit for str.isdigit(), not for SSE.
        b"retry: 10\nretry: 1.5\nretry: -1\nretry:\nretry: \xd9\xa3\ndata: x\n\n",
        Event("x", retry=10),
    ),
    one(
        "retry with more digits than int() accepts is ignored",
        b"retry: " + b"9" * 5000 + b"\ndata: x\n\n",
        Event("x"),
    ),
    one(
        "invalid UTF-8 is replaced",
        b"event: \xff\ndata: \xe2\x80 ok\n\n",
        Event("\ufffd ok", "\ufffd"),
    ),
    one(
        "U+2028, U+2029 and U+0085 stay inside one line",
        '{"t": "a\u2028b\u2029c\x85d"}'.join(["data: ", "\n\n"]).encode(),
        Event('{"t": "a\u2028b\u2029c\x85d"}'),
        canonical=True,
    ),
    Case("BOM at the start is skipped", BOM + b"data: x\n\n", (Event("x", raw=b"data: x\n\n"),)),
    blocks_case(
        "BOM after the start is part of a field name",
        [(b"data: a\n\n", Event("a")), (BOM + b"data: b\ndata: c\n\n", Event("c"))],
    ),
    one("final blank line missing", b"data: [DONE]\n", Event("[DONE]"), ends_at_eof=True),
    one("final line terminator missing", b"data: [DONE]", Event("[DONE]"), ends_at_eof=True),
    one("final CR is a line terminator", b"data: x\r", Event("x"), ends_at_eof=True),
    Case(
        "a pending event without data is dropped at end of stream",
        b"data: a\n\nevent: x\n: bye",
        (Event("a", raw=b"data: a\n\n"),),
        ends_at_eof=True,
    ),
    Case("empty stream", b"", ()),
    Case("only a BOM", BOM, ()),
    blocks_case("anthropic messages stream", _anthropic_blocks(), canonical=True),
    blocks_case("openai chat stream ending with [DONE]", _openai_blocks(), canonical=True),
]

by_name = pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])


def decode(chunks: Iterable[bytes], *, max_event_size: int = 16 * 1024 * 1024) -> list[Event]:
    """Feed the chunks one by one, then the end of stream; every event, in order.

    Empty chunks are skipped: to the decoder, b"" means the end of the stream.
    """
    decoder = Decoder(max_event_size=max_event_size)
    events = []
    for chunk in filter(None, chunks):
        decoder.receive_data(chunk)
        events += decoder.events()
        assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"")
    events += decoder.events()
    assert decoder.next_event() is END_OF_STREAM
    assert decoder.next_event() is END_OF_STREAM
    return events


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets, without empty chunks."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def fields(event: Event) -> tuple[str, str | None, str | None, int | None]:
    return (event.data, event.event, event.id, event.retry)


# -- The table, through the decoder ------------------------------------------------------


@by_name
def test_decoder_reads_each_case_fed_whole(case: Case) -> None:
    assert decode(split(case.wire, [])) == list(case.events)


@by_name
def test_decoder_reads_each_case_fed_byte_by_byte(case: Case) -> None:
    assert decode(split(case.wire, range(len(case.wire)))) == list(case.events)


@by_name
def test_decoder_reads_each_case_split_in_two_anywhere(case: Case) -> None:
    for cut in range(1, len(case.wire)):
        assert decode(split(case.wire, [cut])) == list(case.events), f"cut at {cut}"


@pytest.mark.parametrize("case", [c for c in CASES if not c.ends_at_eof], ids=lambda c: c.name)
def test_decoder_leaves_trailing_data_for_the_next_event(case: Case) -> None:
    trailing = b"data: trailing"
    decoder = Decoder()
    decoder.receive_data(case.wire + trailing)
    assert decoder.events() == list(case.events)
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"\n\n")
    assert decoder.events() == [Event("trailing", raw=trailing + b"\n\n")]


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.events and not c.ends_at_eof], ids=lambda c: c.name
)
def test_each_event_comes_out_as_soon_as_its_blank_line_is_complete(case: Case) -> None:
    # Where each event's raw bytes end in the wire. An event ending in CR is complete only
    # when the next byte shows the CR is not half of a CRLF.
    ends = []
    offset = 0
    for event in case.events:
        offset = case.wire.index(event.raw, offset) + len(event.raw)
        ends.append(offset if event.raw.endswith(b"\n") else offset + 1)
    decoder = Decoder()
    seen_at = []
    for offset in range(len(case.wire)):
        decoder.receive_data(case.wire[offset : offset + 1])
        seen_at += [offset + 1] * len(decoder.events())
    decoder.receive_data(b"")
    seen_at += [len(case.wire) + 1] * len(decoder.events())
    assert seen_at == ends


# -- The table, through the encoder ------------------------------------------------------


@by_name
def test_encoded_table_events_decode_to_the_same_fields(case: Case) -> None:
    wire = b"".join(encode(event) for event in case.events)
    assert [fields(e) for e in decode([wire])] == [fields(e) for e in case.events]


@pytest.mark.parametrize("case", [c for c in CASES if c.canonical], ids=lambda c: c.name)
def test_canonical_cases_encode_to_their_raw_bytes(case: Case) -> None:
    assert [encode(event) for event in case.events] == [event.raw for event in case.events]


@by_name
def test_framed_raw_events_decode_to_the_same_events(case: Case) -> None:
    relayed = b"".join(frame(event.raw) for event in case.events)
    expected = [replace(event, raw=frame(event.raw)) for event in case.events]
    assert decode([relayed]) == expected


# -- Line terminators at chunk boundaries ------------------------------------------------


def test_cr_then_lf_in_the_next_chunk_is_one_line_terminator() -> None:
    decoder = Decoder()
    decoder.receive_data(b"data: a\r")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"\n")
    assert decoder.next_event() is NEED_DATA  # "\r" + "\n" is one CRLF, not a blank line
    decoder.receive_data(b"data: b\r\n\r")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"\n")
    assert decoder.events() == [Event("a\nb", raw=b"data: a\r\ndata: b\r\n\r\n")]


def test_a_final_cr_waits_for_the_next_byte() -> None:
    decoder = Decoder()
    decoder.receive_data(b"data: a\r\r")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"d")
    assert decoder.events() == [Event("a", raw=b"data: a\r\r")]


def test_a_bom_split_across_chunks_is_skipped() -> None:
    assert decode([BOM[:1], BOM[1:2], BOM[2:] + b"data: x\n\n"]) == [Event("x", raw=b"data: x\n\n")]


def test_a_partial_bom_at_end_of_stream_is_not_skipped() -> None:
    assert decode([BOM[:2]]) == []
    wire = BOM[:2] + b"\ndata: x\n\n"  # the first line is b"\xef\xbb", an unknown field
    assert decode([wire]) == [Event("x", raw=wire)]


# -- Sentinels, misuse and limits --------------------------------------------------------


def test_sentinels_have_readable_reprs() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(END_OF_STREAM) == "END_OF_STREAM"


def test_a_new_decoder_needs_data() -> None:
    assert Decoder().next_event() is NEED_DATA


def test_receiving_data_after_end_of_stream_raises() -> None:
    decoder = Decoder()
    decoder.receive_data(b"")
    decoder.receive_data(b"")  # a second end of stream is harmless
    with pytest.raises(
        RuntimeError,
        match=r"^receive_data\(\) got 3 more bytes after receive_data\(b''\) ended the stream; "
        r"use a new Decoder for a new stream$",
    ):
        decoder.receive_data(b"abc")


def test_an_unfinished_event_past_max_event_size_raises() -> None:
    decoder = Decoder(max_event_size=16)
    decoder.receive_data(b"data: 0123456789")  # 16 bytes: still allowed
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"a")
    message = (
        r"^an upstream SSE event grew past max_event_size=16 bytes without ending "
        r"\(17 bytes since the last blank line\); the upstream stream is broken or hostile, "
        r"or max_event_size is too small$"
    )
    with pytest.raises(SSEProtocolError, match=message):
        decoder.next_event()
    with pytest.raises(SSEProtocolError, match=message):  # the decoder stays broken
        decoder.next_event()


def test_comment_lines_without_a_blank_line_count_toward_max_event_size() -> None:
    decoder = Decoder(max_event_size=100)
    for _ in range(14):  # 98 bytes of comments, no blank line
        decoder.receive_data(b": ping\n")
        assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b": ping\n")
    with pytest.raises(SSEProtocolError, match=r"\(105 bytes since the last blank line\)"):
        decoder.next_event()


def test_max_event_size_bounds_each_event_not_the_chunk() -> None:
    decoder = Decoder(max_event_size=16)
    decoder.receive_data(b"data: 0123456789\n\n" * 10 + b": ping\n\n" * 10 + b"data: x")
    assert len(decoder.events()) == 10
    assert decoder.next_event() is NEED_DATA


def test_max_event_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^max_event_size must be >= 1 \(bytes\), got 0$"):
        Decoder(max_event_size=0)


# -- Encoder -----------------------------------------------------------------------------


def test_encode_writes_fields_then_one_data_line_per_line() -> None:
    event = Event("a\n\nb", event="e", id="7", retry=0)
    assert encode(event) == b"event: e\nid: 7\nretry: 0\ndata: a\ndata: \ndata: b\n\n"


def test_encode_comment_is_a_keep_alive_that_decodes_to_nothing() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment() == b": \n\n"
    assert decode([encode_comment("ping") + encode_comment()]) == []


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (Event("x", event="a\nb"), r"^SSE event name 'a\\nb' contains '\\n', "),
        (Event("x", id="1\r"), r"^SSE id '1\\r' contains '\\r', "),
        (Event("x", id="1\x00"), r"^SSE id '1\\x00' contains '\\x00', "),
        (Event("a\r\nb"), r"^SSE data 'a\\r\\nb' contains '\\r', "),
        (Event("x", retry=-1), r"^SSE retry must be a number of milliseconds >= 0, got -1$"),
    ],
)
def test_encode_refuses_values_that_would_inject_lines(event: Event, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode(event)


def test_encode_comment_refuses_a_line_break() -> None:
    with pytest.raises(ValueError, match=r"^SSE comment 'a\\ndata: x' contains '\\n', "):
        encode_comment("a\ndata: x")


@pytest.mark.parametrize(
    ("raw", "framed"),
    [
        (b"data: x\n\n", b"data: x\n\n"),
        (b"data: x\r\n\r\n", b"data: x\r\n\r\n"),
        (b"data: x\r\r", b"data: x\r\r"),
        (b"data: x\r\n\n", b"data: x\r\n\n"),
        (b"data: x\n", b"data: x\n\n"),
        (b"data: x\r\n", b"data: x\r\n\r\n"),
        (b"data: x\r", b"data: x\r\r"),
        (b"data: x", b"data: x\n\n"),
        (b"", b""),
    ],
)
def test_frame_completes_only_what_is_missing(raw: bytes, framed: bytes) -> None:
    assert frame(raw) == framed


# -- Properties --------------------------------------------------------------------------


def text_without(chars: str) -> st.SearchStrategy[str]:
    """Any text without `chars` and without lone surrogates, which UTF-8 cannot carry."""
    return st.text(st.characters(exclude_categories=["Cs"], exclude_characters=chars))


generated_events = st.builds(
    Event,
    data=text_without("\r"),
    event=st.none() | text_without("\r\n"),
    id=st.none() | text_without("\r\n\x00"),
    retry=st.none() | st.integers(min_value=0, max_value=2**64),
)
# Bytes that look like SSE often enough to reach every branch, and plain noise.
SSE_PIECES = [b"data", b"event", b"id", b"retry", b":", b" ", b"\r", b"\n", b"\r\n", BOM, b"x"]
ODD_PIECES = [b"1", b"\x00", b"\xff", b"\xe2\x80\xa8"]  # a digit, NUL, bad UTF-8, U+2028
sse_ish_bytes = st.lists(st.sampled_from(SSE_PIECES + ODD_PIECES)).map(b"".join) | st.binary()


@given(st.lists(generated_events), st.data())
def test_encoded_events_decode_to_themselves_under_any_chunking(
    events: list[Event], data: st.DataObject
) -> None:
    wire = b"".join(encode(event) for event in events)
    cuts = data.draw(st.lists(st.integers(0, len(wire))), label="cuts")
    whole = decode([wire])
    assert decode(split(wire, cuts)) == whole
    assert [fields(e) for e in whole] == [fields(e) for e in events]
    assert [e.raw for e in whole] == [encode(e) for e in events]


@given(sse_ish_bytes, st.data())
def test_any_bytes_under_any_chunking_decode_the_same_or_raise_protocol_error(
    wire: bytes, data: st.DataObject
) -> None:
    whole = decode([wire])
    chunks = split(wire, data.draw(st.lists(st.integers(0, len(wire))), label="cuts"))
    assert decode(chunks) == whole
    # With a small bound the decoder may refuse, but only with SSEProtocolError, and
    # only after a prefix of the right events.
    max_event_size = data.draw(st.integers(1, 64), label="max_event_size")
    decoder = Decoder(max_event_size=max_event_size)
    seen: list[Event] = []
    try:
        for chunk in [*chunks, b""]:
            decoder.receive_data(chunk)
            seen += decoder.events()
    except SSEProtocolError:
        assert seen == whole[: len(seen)]
    else:
        assert seen == whole


@given(sse_ish_bytes)
def test_framed_raw_bytes_of_decoded_events_decode_to_the_same_events(wire: bytes) -> None:
    events = decode([wire])
    # A raw event starting with a BOM would be read as a stream's BOM (see frame()).
    assume(not (events and events[0].raw.startswith(BOM)))
    relayed = b"".join(frame(event.raw) for event in events)
    assert decode([relayed]) == [replace(event, raw=frame(event.raw)) for event in events]
    for event in events:
        assert event.raw in wire
