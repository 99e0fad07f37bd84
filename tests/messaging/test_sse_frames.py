"""messaging.sse's response helper, shared by every SSE door: the frames byte for byte (the doors'
own tests check each protocol's frames end to end) and the response headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from messaging.sse import KEEPALIVE_FRAME, sse_frame, sse_json, sse_response


def test_a_frame_writes_its_fields_in_order_and_ends_with_a_blank_line() -> None:
    assert sse_frame("{}", id="thr_a:1", event="chatMessageAdded") == (
        "id: thr_a:1\nevent: chatMessageAdded\ndata: {}\n\n"
    )
    assert sse_frame(retry=2000, id="thr_a:0", comment="connected") == (
        "retry: 2000\nid: thr_a:0\n: connected\n\n"
    )
    assert sse_frame(retry=2000, comment="connected") == "retry: 2000\n: connected\n\n"
    assert KEEPALIVE_FRAME == ": keep-alive\n\n"


def test_multi_line_data_is_one_data_line_per_line() -> None:
    assert sse_frame("one\ntwo", event="x") == "event: x\ndata: one\ndata: two\n\n"


def test_json_data_is_compact() -> None:
    assert sse_json("delta", {"messageId": "msg_1", "offset": 0, "text": "Hé\n"}) == (
        'event: delta\ndata: {"messageId":"msg_1","offset":0,"text":"H\\u00e9\\n"}\n\n'
    )


def test_the_response_is_an_unbuffered_uncached_event_stream() -> None:
    async def frames() -> AsyncIterator[str]:
        yield KEEPALIVE_FRAME

    response = sse_response(frames())
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
