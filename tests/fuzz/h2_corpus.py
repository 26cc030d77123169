#!/usr/bin/python3
"""Write the seed corpus of fuzz_h2 (tests/fuzz/corpus/h2): HTTP/2 frame sequences a client sends
after the connection preface, made with hyperframe and hpack (python3-h2's dependencies).

    tests/fuzz/h2_corpus.py tests/fuzz/corpus/h2
"""
import sys
from pathlib import Path

import hpack
import hyperframe.frame as hf


def head(enc, sid, path, method="GET", extra=(), end_stream=True, end_headers=True):
    block = enc.encode([(":method", method), (":scheme", "http"), (":authority", "f.test"), (":path", path)]
                       + list(extra))
    flags = (["END_HEADERS"] if end_headers else []) + (["END_STREAM"] if end_stream else [])
    return hf.HeadersFrame(sid, data=block, flags=flags)


def seeds():
    s = hf.SettingsFrame(0, settings={})
    ack = hf.SettingsFrame(0, flags=["ACK"])
    e = hpack.Encoder()
    yield "get", [s, ack, head(e, 1, "/r")]
    e = hpack.Encoder()
    yield "three_streams", [s, head(e, 1, "/r"), head(e, 3, "/files/a.txt"), head(e, 5, "/elsewhere")]
    e = hpack.Encoder()
    yield "post_body", [s, head(e, 1, "/r", "POST", [("content-length", "10")], end_stream=False),
                        hf.DataFrame(1, data=b"0123456789", flags=["END_STREAM"])]
    e = hpack.Encoder()
    yield "post_unknown_length", [s, head(e, 1, "/r", "POST", end_stream=False), hf.DataFrame(1, data=b"ab"),
                                  hf.DataFrame(1, data=b"cd", flags=["END_STREAM"])]
    e = hpack.Encoder()
    yield "reset", [s, head(e, 1, "/files/a.txt"), hf.RstStreamFrame(1, error_code=8), head(e, 3, "/r")]
    e = hpack.Encoder()
    yield "window", [hf.SettingsFrame(0, settings={4: 100}), head(e, 1, "/files/a.txt"),
                     hf.WindowUpdateFrame(1, window_increment=1000), hf.WindowUpdateFrame(0, window_increment=1000)]
    e = hpack.Encoder()
    blk = e.encode([(":method", "GET"), (":scheme", "http"), (":authority", "f.test"), (":path", "/r"),
                    ("cookie", "a=1"), ("cookie", "b=2")])
    yield "continuation", [s, hf.HeadersFrame(1, data=blk[:5], flags=["END_STREAM"]),
                           hf.ContinuationFrame(1, data=blk[5:], flags=["END_HEADERS"])]
    yield "ping_goaway", [s, hf.PingFrame(0, opaque_data=b"12345678"), hf.GoAwayFrame(0, last_stream_id=0)]
    e = hpack.Encoder()
    yield "priority_trailers", [s, hf.PriorityFrame(1, depends_on=0, stream_weight=16),
                                head(e, 1, "/r", "POST", end_stream=False), hf.DataFrame(1, data=b"x"),
                                hf.HeadersFrame(1, data=e.encode([("x-trailer", "1")]),
                                                flags=["END_HEADERS", "END_STREAM"])]
    e = hpack.Encoder()
    blk = e.encode([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                    (":authority", "f.test"), (":path", "/r"), ("sec-websocket-version", "13")])
    yield "extended_connect", [s, hf.HeadersFrame(1, data=blk, flags=["END_HEADERS"]), hf.DataFrame(1, data=b"ws"),
                               hf.RstStreamFrame(1, error_code=8)]
    e = hpack.Encoder()
    yield "head_and_big_headers", [s, head(e, 1, "/r", "HEAD", [("x-a", "v" * 3000), ("te", "trailers")])]


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus/h2")
    out.mkdir(parents=True, exist_ok=True)
    for name, frames in seeds():
        (out / name).write_bytes(b"".join(f.serialize() for f in frames))


if __name__ == "__main__":
    main()
