"""Write-ahead log: segment files of checksummed, hash-chained frames, group commit, recovery.

Moves bytes only; it never imports the ledger. See ``_frame`` for the record format,
``_segments`` for the recovery table and ``_writer`` for group commit.
"""

from typing import TYPE_CHECKING

from wal._frame import (
    CHECKSUM_BYTES,
    FRAME_VERSION,
    HEADER_BYTES,
    PAYLOAD_BYTES_MAX,
    ZERO_CHECKSUM,
    Frame,
    FrameError,
    decode,
    encode,
    peek_lsn,
)
from wal._mirror import Mirror, MirrorError
from wal._repair import RepairPlan, RepairRefused, apply_repair, plan_repair
from wal._segments import (
    DIRECTORY_MODE,
    FILE_MODE,
    SEGMENT_HEADER_BYTES,
    LogCorrupt,
    ScanResult,
    covered_segments,
    decode_segment_header,
    encode_segment_header,
    list_segments,
    scan,
    segment_name,
)
from wal._tail import Compacted, Tailer
from wal._thread import call_soon_threadsafe
from wal._writer import (
    BATCH_BUCKETS,
    BATCH_BYTES_MAX,
    BATCH_RECORDS_MAX,
    FSYNC_BUCKETS_S,
    REPLICATED_BATCH_BYTES_MAX,
    SEGMENT_BYTES_MAX,
    Replicate,
    Statistics,
    StorageFailed,
    WriteAheadLog,
    fsync_directory,
)

__all__ = [
    "BATCH_BUCKETS",
    "BATCH_BYTES_MAX",
    "BATCH_RECORDS_MAX",
    "CHECKSUM_BYTES",
    "DIRECTORY_MODE",
    "FILE_MODE",
    "FRAME_VERSION",
    "FSYNC_BUCKETS_S",
    "HEADER_BYTES",
    "PAYLOAD_BYTES_MAX",
    "REPLICATED_BATCH_BYTES_MAX",
    "SEGMENT_BYTES_MAX",
    "SEGMENT_HEADER_BYTES",
    "ZERO_CHECKSUM",
    "Compacted",
    "Fenced",
    "Frame",
    "FrameError",
    "LogCorrupt",
    "LogUnavailable",
    "Mirror",
    "MirrorError",
    "RepairPlan",
    "RepairRefused",
    "Replicate",
    "ScanResult",
    "Statistics",
    "StorageFailed",
    "StoredMessage",
    "StreamClient",
    "Tailer",
    "WriteAheadLog",
    "apply_repair",
    "call_soon_threadsafe",
    "covered_segments",
    "decode",
    "decode_segment_header",
    "encode",
    "encode_segment_header",
    "fsync_directory",
    "list_segments",
    "peek_lsn",
    "plan_repair",
    "scan",
    "segment_name",
]


if TYPE_CHECKING:
    from wal._jetstream import Fenced, LogUnavailable, StoredMessage, StreamClient

# The JetStream client (cluster mode only) is imported on first use: nats-py costs about 60 ms
# of every process's start, and only a cluster member needs it.
_JETSTREAM = ("Fenced", "LogUnavailable", "StoredMessage", "StreamClient")


def __getattr__(name: str) -> object:
    if name in _JETSTREAM:
        from wal import _jetstream

        return getattr(_jetstream, name)
    raise AttributeError(f"module 'wal' has no attribute {name!r}")
