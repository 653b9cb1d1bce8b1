"""Frame and segment-header format: round trips, every single-bit flip is detected, chunked
decoding equals one-shot decoding, and damaged bytes only ever raise FrameError."""

from __future__ import annotations

import itertools
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wal
from wal import (
    CHECKSUM_BYTES,
    FRAME_VERSION,
    HEADER_BYTES,
    PAYLOAD_BYTES_MAX,
    SEGMENT_HEADER_BYTES,
    ZERO_CHECKSUM,
    Frame,
    FrameError,
    decode,
    decode_segment_header,
    encode,
    encode_segment_header,
)
from wal._frame import checksum

# The part of the header the checksum covers (everything after the checksum), to craft frames
# that verify but carry values ``encode`` refuses to produce.
COVERED = struct.Struct("<16sQQIHH")
SIZE_FIELD = slice(48, 52)


def craft(*, parent: bytes = ZERO_CHECKSUM, lsn: int = 1, batch_lsn: int = 1, size: int | None = None,
          version: int = FRAME_VERSION, flags: int = 0, payload: bytes = b"") -> bytes:
    covered = COVERED.pack(parent, lsn, batch_lsn, len(payload) if size is None else size,
                           version, flags) + payload
    return checksum(covered) + covered


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


payloads = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    st.builds(random_bytes, st.integers(min_value=1_000, max_value=300_000), st.integers(0, 2**32)),
)
checksums = st.binary(min_size=CHECKSUM_BYTES, max_size=CHECKSUM_BYTES)


def build_log(payload_list: list[bytes], *, first_lsn: int = 1, parent: bytes = ZERO_CHECKSUM,
              batch_every: int = 3) -> tuple[bytes, list[Frame]]:
    """A chained run of frames (no segment header), and the frames it must decode to."""
    chunks: list[bytes] = []
    expected: list[Frame] = []
    batch_lsn = first_lsn
    for index, payload in enumerate(payload_list):
        lsn = first_lsn + index
        if index % batch_every == 0:
            batch_lsn = lsn
        data, digest = encode(lsn=lsn, batch_lsn=batch_lsn, parent=parent, payload=payload)
        expected.append(Frame(lsn=lsn, batch_lsn=batch_lsn, parent=parent, checksum=digest,
                              payload=payload))
        chunks.append(data)
        parent = digest
    return b"".join(chunks), expected


def decode_all(buffer: bytes) -> list[Frame]:
    """Decodes back-to-back frames that fill ``buffer`` exactly."""
    frames: list[Frame] = []
    offset = 0
    while offset < len(buffer):
        frame = decode(buffer, offset)
        frames.append(frame)
        offset += frame.size
    assert offset == len(buffer)
    return frames


class StreamDecoder:
    """Decodes sequential frames from a buffer that grows: stops at an incomplete frame and
    resumes when more bytes arrive. Damage (a complete frame that does not verify) raises."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.frames: list[Frame] = []

    def _incomplete(self) -> bool:
        if len(self.buffer) < HEADER_BYTES:
            return True
        (size,) = struct.unpack_from("<I", self.buffer, SIZE_FIELD.start)
        return size <= PAYLOAD_BYTES_MAX and len(self.buffer) < HEADER_BYTES + size

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        decoded: list[Frame] = []
        while self.buffer and not self._incomplete():
            frame = decode(bytes(self.buffer), 0)
            del self.buffer[: frame.size]
            decoded.append(frame)
        self.frames.extend(decoded)
        return decoded

    @property
    def pending_bytes(self) -> int:
        return len(self.buffer)


# -- round trip ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=payloads,
    lsn=st.integers(min_value=1, max_value=2**64 - 1),
    batch_back=st.integers(min_value=0, max_value=1000),
    parent=checksums,
)
def test_encode_decode_round_trip(payload: bytes, lsn: int, batch_back: int, parent: bytes) -> None:
    batch_lsn = max(1, lsn - batch_back)
    data, digest = encode(lsn=lsn, batch_lsn=batch_lsn, parent=parent, payload=payload)
    assert len(data) == HEADER_BYTES + len(payload)
    assert data[:CHECKSUM_BYTES] == digest
    assert digest == checksum(data[CHECKSUM_BYTES:])
    frame = decode(data, 0)
    assert frame == Frame(lsn=lsn, batch_lsn=batch_lsn, parent=parent, checksum=digest,
                          payload=payload)
    assert frame.size == len(data)
    # At an offset inside a bigger buffer, with unrelated bytes around it.
    framed = b"\xff" * 13 + data + b"\x00" * 7
    assert decode(framed, 13) == frame
    assert decode(memoryview(framed), 13) == frame
    assert decode(memoryview(bytearray(framed)), 13) == frame


def test_round_trip_of_the_largest_payload() -> None:
    payload = random_bytes(PAYLOAD_BYTES_MAX, seed=7)
    data, digest = encode(lsn=5, batch_lsn=3, parent=ZERO_CHECKSUM, payload=payload)
    frame = decode(data, 0)
    assert frame.payload == payload
    assert frame.checksum == digest
    with pytest.raises(FrameError, match="incomplete payload"):
        decode(data[:-1], 0)


def test_size_field_above_the_limit_is_refused_even_when_the_bytes_are_there() -> None:
    size = PAYLOAD_BYTES_MAX + 1
    data = craft(size=size, payload=bytes(size))
    with pytest.raises(FrameError, match="exceeds the limit"):
        decode(data, 0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": FRAME_VERSION + 1}, "unknown frame version"),
        ({"version": 0}, "unknown frame version"),
        ({"flags": 1}, "unknown flags"),
        ({"flags": 0x8000}, "unknown flags"),
        ({"lsn": 0, "batch_lsn": 0}, "impossible lsn"),
        ({"lsn": 5, "batch_lsn": 0}, "impossible lsn"),
        ({"lsn": 5, "batch_lsn": 6}, "impossible lsn"),
    ],
)
def test_frames_that_verify_but_carry_impossible_fields_are_refused(
    fields: dict[str, Any], message: str
) -> None:
    data = craft(payload=b"payload", **fields)
    assert checksum(data[CHECKSUM_BYTES:]) == data[:CHECKSUM_BYTES]
    with pytest.raises(FrameError, match=message):
        decode(data, 0)


def test_cut_frames_are_refused_at_every_length() -> None:
    data, _ = encode(lsn=1, batch_lsn=1, parent=ZERO_CHECKSUM, payload=b"x" * 40)
    for length in range(len(data)):
        with pytest.raises(FrameError, match="incomplete"):
            decode(data[:length], 0)
    assert decode(data, 0).payload == b"x" * 40


# -- every single-bit flip -------------------------------------------------------------------

FLIP_CASES = [
    pytest.param(b"", id="empty-payload"),
    pytest.param(b"\x00", id="one-byte"),
    pytest.param(bytes(range(40)), id="40-bytes"),
    pytest.param(random_bytes(301, seed=1), id="301-random-bytes"),
]


def flipped(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


@pytest.mark.parametrize("payload", FLIP_CASES)
def test_every_single_bit_flip_of_a_lone_frame_is_detected(payload: bytes) -> None:
    parent = checksum(b"the previous record")
    data, _ = encode(lsn=1234, batch_lsn=1200, parent=parent, payload=payload)
    assert decode(data, 0).payload == payload
    bits = len(data) * 8
    assert bits == (HEADER_BYTES + len(payload)) * 8
    for bit in range(bits):
        with pytest.raises(FrameError):
            decode(flipped(data, bit), 0)


@pytest.mark.parametrize("payload", FLIP_CASES)
def test_every_single_bit_flip_is_detected_when_more_frames_follow(payload: bytes) -> None:
    # With bytes after the frame, a flip that enlarges the size field does not run past the
    # buffer: only the checksum can catch it.
    data, digest = encode(lsn=7, batch_lsn=7, parent=ZERO_CHECKSUM, payload=payload)
    follower, _ = encode(lsn=8, batch_lsn=7, parent=digest, payload=bytes(PAYLOAD_BYTES_MAX // 1024))
    buffer = b"\xaa" * 5 + data + follower
    assert decode(buffer, 5).payload == payload
    for bit in range(len(data) * 8):
        damaged = buffer[:5] + flipped(data, bit) + follower
        with pytest.raises(FrameError):
            decode(damaged, 5)


def test_flip_in_the_size_field_that_runs_past_the_buffer_is_a_frame_error() -> None:
    data, _ = encode(lsn=1, batch_lsn=1, parent=ZERO_CHECKSUM, payload=bytes(40))
    seen = set()
    for bit in range(SIZE_FIELD.start * 8, SIZE_FIELD.stop * 8):
        with pytest.raises(FrameError) as caught:
            decode(flipped(data, bit), 0)
        seen.add(str(caught.value).split(":")[0].split(" ")[0])
    # Shrinking the size fails the checksum, growing it runs past the buffer or the limit.
    assert {"checksum", "incomplete", "payload"} <= seen


# -- one chunk versus byte by byte -----------------------------------------------------------

LOG_PAYLOADS = [
    b"", b"a", bytes(range(256)), random_bytes(5000, seed=3), b"\x01\x00\x00\x00" * 30,
    *[random_bytes(n, seed=n) for n in range(0, 200, 17)],
]


def test_stream_decoder_fed_one_chunk_and_byte_by_byte_agree() -> None:
    log, expected = build_log(LOG_PAYLOADS, first_lsn=41, parent=checksum(b"x"))
    assert decode_all(log) == expected

    whole = StreamDecoder()
    assert whole.feed(log) == expected
    assert whole.pending_bytes == 0

    byte_by_byte = StreamDecoder()
    completed_at: list[int] = []
    for index in range(len(log)):
        if byte_by_byte.feed(log[index : index + 1]):
            completed_at.append(index + 1)
    assert byte_by_byte.frames == expected
    assert byte_by_byte.pending_bytes == 0
    # A frame is produced exactly when its last byte arrives, never earlier.
    ends = []
    position = 0
    for frame in expected:
        position += frame.size
        ends.append(position)
    assert completed_at == ends


@settings(max_examples=60, deadline=None)
@given(
    payload_list=st.lists(st.binary(max_size=120), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
)
def test_stream_decoder_gives_the_same_frames_for_any_chunking(
    payload_list: list[bytes], cuts: list[int]
) -> None:
    log, expected = build_log(payload_list)
    points = sorted({min(cut, len(log)) for cut in cuts} | {0, len(log)})
    decoder = StreamDecoder()
    for start, end in itertools.pairwise(points):
        decoder.feed(log[start:end])
    assert decoder.frames == expected == decode_all(log)
    assert decoder.pending_bytes == 0


def test_stream_decoder_stops_at_a_torn_frame_and_raises_on_a_damaged_one() -> None:
    log, expected = build_log([b"one", b"two", b"three"])
    decoder = StreamDecoder()
    assert decoder.feed(log[:-1]) == expected[:2]
    assert decoder.pending_bytes == expected[2].size - 1
    damaged = flipped(log, (expected[0].size + 20) * 8)
    with pytest.raises(FrameError):
        StreamDecoder().feed(damaged)


# -- random and mutated bytes ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), offset=st.integers(min_value=0, max_value=460))
def test_random_bytes_only_ever_raise_frame_error(data: bytes, offset: int) -> None:
    try:
        frame = decode(data, offset)
    except FrameError:
        return
    # Only possible if the random bytes happen to verify; then the frame must be consistent.
    assert frame.size <= len(data) - offset
    assert checksum(data[offset + CHECKSUM_BYTES : offset + frame.size]) == frame.checksum


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=200),
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255)),
        min_size=1, max_size=6,
    ),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
)
def test_mutated_frames_raise_frame_error_and_nothing_else(
    payload: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data, _ = encode(lsn=99, batch_lsn=90, parent=checksum(b"p"), payload=payload)
    damaged = bytearray(data)
    for position, value in edits:
        damaged[position % len(data)] = value
    if cut is not None:
        del damaged[cut % (len(data) + 1) :]
    if bytes(damaged) == data:
        assert decode(bytes(damaged), 0).payload == payload
        return
    with pytest.raises(FrameError):
        decode(bytes(damaged), 0)


# -- the segment header ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(first_lsn=st.integers(min_value=1, max_value=2**64 - 1), parent=checksums)
def test_segment_header_round_trip(first_lsn: int, parent: bytes) -> None:
    header = encode_segment_header(first_lsn=first_lsn, parent=parent)
    assert len(header) == SEGMENT_HEADER_BYTES
    assert header[:8] == b"WLEDGWAL"
    assert decode_segment_header(header) == (first_lsn, parent)
    # Frames follow the header in a file; the decoder reads the header only.
    assert decode_segment_header(header + b"\x00" * 100) == (first_lsn, parent)


@pytest.mark.parametrize("first_lsn", [1, 2, 1000, 2**63 + 5])
def test_every_single_bit_flip_of_a_segment_header_is_detected(first_lsn: int) -> None:
    parent = ZERO_CHECKSUM if first_lsn == 1 else checksum(first_lsn.to_bytes(8, "little"))
    header = encode_segment_header(first_lsn=first_lsn, parent=parent)
    for bit in range(SEGMENT_HEADER_BYTES * 8):
        with pytest.raises(FrameError):
            decode_segment_header(flipped(header, bit))


def test_cut_segment_header_is_refused() -> None:
    header = encode_segment_header(first_lsn=3, parent=checksum(b"2"))
    for length in range(SEGMENT_HEADER_BYTES):
        with pytest.raises(FrameError, match="cut"):
            decode_segment_header(header[:length])


@pytest.mark.parametrize(
    ("magic", "version", "message"),
    [(b"NOTAWAL!", 1, "bad magic"), (b"WLEDGWAL", 2, "unknown segment version")],
)
def test_segment_header_that_verifies_but_is_not_ours_is_refused(
    magic: bytes, version: int, message: str
) -> None:
    head = struct.pack("<8sH6sQ16s", magic, version, bytes(6), 1, ZERO_CHECKSUM)
    header = head + checksum(head)
    with pytest.raises(FrameError, match=message):
        decode_segment_header(header)


def test_segment_names_sort_by_first_lsn() -> None:
    names = [wal.segment_name(lsn) for lsn in (1, 9, 10, 11, 100, 2**40)]
    assert names == sorted(names)
    assert wal.segment_name(11) == "00000000000000000011.wal"
