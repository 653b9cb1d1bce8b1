"""The snapshot store: round trips, every single-bit flip in the header and a sample in the body
are detected, truncation is refused, a crash at each write step leaves the previous snapshot
intact, ``load_newest`` falls back past damage and says so, ``prune`` keeps the newest valid
ones, and any bytes at all raise ``SnapshotCorrupt`` or nothing. One test per row of the failure
table in ``snapshots/_store.py``."""

from __future__ import annotations

import hashlib
import random
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snapshots
from snapshots import (
    CHECKSUM_BYTES,
    FORMAT_VERSION,
    HEADER_BYTES,
    MAGIC,
    STEPS,
    TEMP_SUFFIX,
    ZERO_CHECKSUM,
    Header,
    SnapshotCorrupt,
    SnapshotTooLarge,
    list_snapshots,
    load_newest,
    prune,
    read_header,
    read_snapshot,
    snapshot_name,
    write_snapshot,
)

LOG_CHECKSUM = bytes(range(1, 17))
DIGEST = bytes(range(100, 116))
# The header without its checksum, to craft headers that verify but carry impossible values.
COVERED = struct.Struct("<8sIIQQQ16s16s16sq")


class SimulatedCrash(BaseException):
    """A crash: a BaseException, so ``write_snapshot`` runs no clean-up, like a killed process."""


def body_of(lsn: int, size: int = 300) -> list[bytes]:
    """A body of ``size`` bytes, unique to ``lsn``, in uneven chunks."""
    data = random.Random(lsn).randbytes(size)
    return [data[:7], b"", data[7:100], data[100:]]


def write(directory: Path, lsn: int, size: int = 300, **overrides: object) -> Path:
    arguments: dict[str, object] = {
        "lsn": lsn,
        "records": lsn * 10,
        "log_checksum": LOG_CHECKSUM if lsn else ZERO_CHECKSUM,
        "state_digest": DIGEST,
        "created_at_us": 1_700_000_000_000_000 + lsn,
        "chunks": body_of(lsn, size),
    }
    arguments.update(overrides)
    info = write_snapshot(directory, **arguments)  # type: ignore[arg-type]
    assert info.valid
    return info.path


def craft(*, lsn: int = 7, version: int = FORMAT_VERSION, flags: int = 0, body: bytes = b"body",
          body_bytes: int | None = None, log_checksum: bytes = LOG_CHECKSUM) -> bytes:
    covered = COVERED.pack(
        MAGIC, version, flags, lsn, 1, len(body) if body_bytes is None else body_bytes,
        hashlib.blake2b(body, digest_size=16).digest(), log_checksum, DIGEST, 5,
    )
    return covered + hashlib.blake2b(covered, digest_size=16).digest() + body


def flip(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def reason(path: Path) -> str:
    with pytest.raises(SnapshotCorrupt) as caught:
        read_snapshot(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    return caught.value.reason


# -- round trip ----------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    info = write_snapshot(
        tmp_path, lsn=42, records=3, log_checksum=LOG_CHECKSUM, state_digest=DIGEST,
        created_at_us=-5, chunks=iter(body_of(42)),
    )
    body = b"".join(body_of(42))
    expected = Header(
        lsn=42, records=3, body_bytes=len(body), body_checksum=hashlib.blake2b(body, digest_size=16).digest(),
        log_checksum=LOG_CHECKSUM, state_digest=DIGEST, created_at_us=-5,
    )
    assert info.path == tmp_path / "00000000000000000042.snap"
    assert info.path.name == snapshot_name(42)
    assert info.lsn == 42
    assert info.size == HEADER_BYTES + len(body) == info.path.stat().st_size
    assert info.header == expected
    assert info.reason is None
    assert read_header(info.path) == expected
    assert read_snapshot(info.path) == (expected, body)
    assert list_snapshots(tmp_path) == [info]
    loaded = load_newest(tmp_path)
    assert loaded.skipped == ()
    assert loaded.snapshot is not None
    assert (loaded.snapshot.path, loaded.snapshot.header, loaded.snapshot.body) == (info.path, expected, body)
    assert sorted(p.name for p in tmp_path.iterdir()) == [info.path.name]  # no temp file left


def test_empty_body_at_lsn_zero(tmp_path: Path) -> None:
    path = write(tmp_path, 0, chunks=[])
    header, body = read_snapshot(path)
    assert (header.lsn, header.body_bytes, header.log_checksum, body) == (0, 0, ZERO_CHECKSUM, b"")


def test_rewriting_the_same_lsn_replaces_the_file(tmp_path: Path) -> None:
    write(tmp_path, 3)
    path = write(tmp_path, 3, chunks=[b"other"])
    assert read_snapshot(path)[1] == b"other"
    assert [info.lsn for info in list_snapshots(tmp_path)] == [3]


def test_header_layout_matches_the_docstring(tmp_path: Path) -> None:
    path = write(tmp_path, 9, chunks=[b"abc"])
    data = path.read_bytes()
    assert data[0:8] == MAGIC
    assert struct.unpack_from("<IIQQQ", data, 8) == (FORMAT_VERSION, 0, 9, 90, 3)
    assert data[40:56] == hashlib.blake2b(b"abc", digest_size=16).digest()
    assert data[56:72] == LOG_CHECKSUM
    assert data[72:88] == DIGEST
    assert struct.unpack_from("<q", data, 88) == (1_700_000_000_000_000 + 9,)
    assert data[96:112] == hashlib.blake2b(data[:96], digest_size=16).digest()
    assert data[112:] == b"abc"


# -- damage: one test per row of the failure table -----------------------------------------


def test_every_header_bit_flip_is_detected(tmp_path: Path) -> None:
    original = write(tmp_path, 5).read_bytes()
    path = tmp_path / snapshot_name(5)
    for bit in range(HEADER_BYTES * 8):
        path.write_bytes(original)
        flip(path, bit)
        with pytest.raises(SnapshotCorrupt):
            read_header(path)
        with pytest.raises(SnapshotCorrupt):
            read_snapshot(path)
        [info] = list_snapshots(tmp_path)
        assert not info.valid
        assert info.reason


def test_body_bit_flips_are_detected(tmp_path: Path) -> None:
    original = write(tmp_path, 5, size=5000).read_bytes()
    path = tmp_path / snapshot_name(5)
    bits = range(HEADER_BYTES * 8, len(original) * 8)
    for bit in [bits[0], bits[-1], *random.Random(1).sample(bits, 300)]:
        path.write_bytes(original)
        flip(path, bit)
        read_header(path)  # the header is fine: only the body check catches it
        assert reason(path) == "body checksum mismatch"


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    original = write(tmp_path, 5, size=40).read_bytes()
    path = tmp_path / snapshot_name(5)
    for size in range(len(original)):
        path.write_bytes(original[:size])
        with pytest.raises(SnapshotCorrupt):
            read_header(path)
        with pytest.raises(SnapshotCorrupt):
            read_snapshot(path)
    path.write_bytes(original[:50])
    assert "too short for the header" in reason(path)
    path.write_bytes(original[:-1])
    assert "truncated" in reason(path)
    path.write_bytes(original + b"\0")
    assert "truncated" in reason(path)  # too long: the size does not match either


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / snapshot_name(7)
    path.write_bytes(b"NOTASNAP" + craft()[8:])
    assert reason(path) == "wrong magic: not a snapshot file"


def test_header_checksum_mismatch(tmp_path: Path) -> None:
    path = tmp_path / snapshot_name(7)
    data = bytearray(craft())
    data[30] ^= 4  # inside the record count
    path.write_bytes(bytes(data))
    assert reason(path) == "header checksum mismatch"


@pytest.mark.parametrize(
    ("name_lsn", "header", "expected"),
    [
        (7, craft(version=FORMAT_VERSION + 1), "unknown format version 2"),
        (7, craft(flags=1), "unknown flags 0x1"),
        (7, craft(lsn=8), "the file is named for LSN 7 but holds LSN 8"),
        (0, craft(lsn=0, log_checksum=LOG_CHECKSUM), "LSN 0 with a non-zero log checksum"),
        (7, craft(body_bytes=snapshots.BODY_BYTES_MAX + 1), "exceeds the limit"),
        (7, craft(body_bytes=3), "truncated"),
    ],
    ids=["version", "flags", "misnamed", "lsn-0-checksum", "too-large", "size-mismatch"],
)
def test_headers_that_verify_but_are_impossible(
    tmp_path: Path, name_lsn: int, header: bytes, expected: str
) -> None:
    path = tmp_path / snapshot_name(name_lsn)
    path.write_bytes(header)
    assert expected in reason(path)
    with pytest.raises(SnapshotCorrupt):
        read_header(path)


def test_a_crafted_header_outside_the_naming_scheme_is_read(tmp_path: Path) -> None:
    # The name check applies to snapshot names only, so a copy can be inspected elsewhere.
    path = tmp_path / "copy.bin"
    path.write_bytes(craft(lsn=8))
    assert read_snapshot(path)[0].lsn == 8


def test_unreadable_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / snapshot_name(7)
    path.mkdir()  # reading a directory fails with an OSError
    assert reason(path).startswith("unreadable:")
    assert reason(tmp_path / "missing.snap").startswith("unreadable:")


# -- writing -------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_each_step_keeps_the_previous_snapshot(tmp_path: Path, step: str) -> None:
    previous = write(tmp_path, 5)
    previous_bytes = previous.read_bytes()

    def crash(at: str) -> None:
        if at == step:
            raise SimulatedCrash(at)

    with pytest.raises(SimulatedCrash):
        write(tmp_path, 9, _crash_hook=crash)

    assert previous.read_bytes() == previous_bytes
    loaded = load_newest(tmp_path)
    assert loaded.skipped == ()
    assert loaded.snapshot is not None
    final = tmp_path / snapshot_name(9)
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    if step == "renamed":
        # The file was complete and synced before the rename: the new snapshot is whole.
        assert loaded.snapshot.header.lsn == 9
        assert temps == []
    else:
        # The final name never holds a partial file; the temp file is ignored by readers.
        assert not final.exists()
        assert loaded.snapshot.header.lsn == 5
        assert len(temps) == 1
        assert [info.lsn for info in list_snapshots(tmp_path)] == [5]

    # A later write succeeds, and prune removes the leftover.
    write(tmp_path, 9)
    removed = prune(tmp_path)
    assert set(removed) == set(temps)
    assert sorted(p.name for p in tmp_path.iterdir()) == [snapshot_name(5), snapshot_name(9)]
    loaded = load_newest(tmp_path)
    assert loaded.snapshot is not None
    assert loaded.snapshot.header.lsn == 9


def test_the_hook_sees_every_step_in_order(tmp_path: Path) -> None:
    seen: list[str] = []
    write(tmp_path, 1, _crash_hook=seen.append)
    assert seen == list(STEPS)


def test_an_error_while_writing_removes_the_temp_file(tmp_path: Path) -> None:
    previous = write(tmp_path, 5)

    def chunks() -> Iterator[bytes]:
        yield b"x" * 100
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write(tmp_path, 9, chunks=chunks())
    assert list(tmp_path.iterdir()) == [previous]


def test_a_body_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots._store, "BODY_BYTES_MAX", 250)
    with pytest.raises(SnapshotTooLarge):
        write(tmp_path, 9, size=251)
    assert list(tmp_path.iterdir()) == []
    write(tmp_path, 9, size=250)


# -- listing, loading, pruning -------------------------------------------------------------


def test_list_is_newest_first_and_ignores_other_names(tmp_path: Path) -> None:
    for lsn in (3, 12, 1, 100):
        write(tmp_path, lsn)
    (tmp_path / ("00000000000000000200" + TEMP_SUFFIX)).write_bytes(b"half")
    (tmp_path / "notes.txt").write_bytes(b"hello")
    (tmp_path / "12.snap").write_bytes(b"not the fixed-width name")
    damaged = tmp_path / snapshot_name(50)
    damaged.write_bytes(b"garbage")
    infos = list_snapshots(tmp_path)
    assert [info.lsn for info in infos] == [100, 50, 12, 3, 1]
    assert [info.valid for info in infos] == [True, False, True, True, True]
    assert infos[1].reason is not None
    assert infos[1].size == len(b"garbage")


def test_a_missing_directory_is_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert list_snapshots(missing) == []
    assert load_newest(missing).snapshot is None
    assert prune(missing) == []


def test_load_newest_falls_back_past_damage_and_reports_it(tmp_path: Path) -> None:
    paths = {lsn: write(tmp_path, lsn) for lsn in (1, 2, 3)}
    flip(paths[3], (HEADER_BYTES + 10) * 8)  # body damage: the header still verifies
    loaded = load_newest(tmp_path)
    assert loaded.snapshot is not None
    assert loaded.snapshot.header.lsn == 2
    assert loaded.snapshot.body == b"".join(body_of(2))
    assert loaded.skipped == ((paths[3], "body checksum mismatch"),)

    flip(paths[2], 20 * 8)  # header damage
    loaded = load_newest(tmp_path)
    assert loaded.snapshot is not None
    assert loaded.snapshot.header.lsn == 1
    assert loaded.skipped == ((paths[3], "body checksum mismatch"), (paths[2], "header checksum mismatch"))

    paths[1].write_bytes(paths[1].read_bytes()[:-1])
    loaded = load_newest(tmp_path)
    assert loaded.snapshot is None
    assert [path for path, _ in loaded.skipped] == [paths[3], paths[2], paths[1]]


def test_load_newest_of_nothing(tmp_path: Path) -> None:
    (tmp_path / ("00000000000000000001" + TEMP_SUFFIX)).write_bytes(b"half")
    assert load_newest(tmp_path) == snapshots.Loaded(snapshot=None, skipped=())


def test_prune_keeps_the_newest_two_and_removes_temp_files(tmp_path: Path) -> None:
    paths = {lsn: write(tmp_path, lsn) for lsn in range(1, 6)}
    temp = tmp_path / ("00000000000000000009.x" + TEMP_SUFFIX)
    temp.write_bytes(b"half")
    other = tmp_path / "keep-me.txt"
    other.write_bytes(b"")
    removed = prune(tmp_path)
    assert sorted(removed) == sorted([temp, paths[1], paths[2], paths[3]])
    assert sorted(tmp_path.iterdir()) == sorted([other, paths[4], paths[5]])
    assert prune(tmp_path) == []


def test_prune_counts_only_fully_valid_snapshots(tmp_path: Path) -> None:
    paths = {lsn: write(tmp_path, lsn) for lsn in range(1, 6)}
    flip(paths[5], (HEADER_BYTES + 1) * 8)  # body damage
    flip(paths[3], 0)  # header damage
    removed = prune(tmp_path)
    assert sorted(removed) == sorted([paths[5], paths[3], paths[1]])
    assert sorted(tmp_path.iterdir()) == sorted([paths[4], paths[2]])


def test_prune_never_removes_the_newest_valid_one(tmp_path: Path) -> None:
    paths = {lsn: write(tmp_path, lsn) for lsn in range(1, 4)}
    assert sorted(prune(tmp_path, keep=1)) == sorted([paths[1], paths[2]])
    assert list(tmp_path.iterdir()) == [paths[3]]
    paths[3].write_bytes(b"rotten")
    assert prune(tmp_path, keep=1) == [paths[3]]  # nothing valid is left to protect
    assert list(tmp_path.iterdir()) == []


# -- any bytes at all ----------------------------------------------------------------------


def _refuses_or_reads(path: Path) -> None:
    """Reading returns or raises SnapshotCorrupt; any other exception escapes the test."""
    for read in (read_header, read_snapshot):
        try:
            read(path)
        except SnapshotCorrupt:
            pass
    list_snapshots(path.parent)
    load_newest(path.parent)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), with_magic=st.booleans())
def test_random_bytes_only_raise_snapshot_corrupt(data: bytes, with_magic: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / snapshot_name(7)
        path.write_bytes(MAGIC + data if with_magic else data)
        _refuses_or_reads(path)
        with pytest.raises(SnapshotCorrupt):
            read_snapshot(path)


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=HEADER_BYTES + 80), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=4,
    ),
    cut=st.none() | st.integers(min_value=0, max_value=HEADER_BYTES + 80),
)
def test_edited_snapshots_are_refused_or_unchanged(edits: list[tuple[int, bytes]], cut: int | None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write(Path(directory), 7, size=80)
        original = path.read_bytes()
        data = bytearray(original)
        for offset, replacement in edits:
            data[offset : offset + len(replacement)] = replacement
        if cut is not None:
            del data[cut:]
        path.write_bytes(bytes(data))
        try:
            header, body = read_snapshot(path)
        except SnapshotCorrupt:
            return
        # Only an edit that changed nothing can pass.
        assert bytes(data) == original
        assert body == original[HEADER_BYTES:]
        assert header.body_bytes == len(body)
        assert len(header.body_checksum) == CHECKSUM_BYTES


@pytest.mark.usefixtures("usual_umask")
def test_a_snapshot_and_its_temp_file_are_private(tmp_path: Path) -> None:
    modes: list[int] = []

    def look(step: str) -> None:
        if step == "temp-written":
            (temp,) = [path for path in tmp_path.iterdir() if path.name.endswith(TEMP_SUFFIX)]
            modes.append(stat.S_IMODE(temp.stat().st_mode))

    path = write(tmp_path, 3, _crash_hook=look)
    assert modes == [snapshots.FILE_MODE] == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
