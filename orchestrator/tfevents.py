"""TensorBoard event files, decoded (pure: no I/O, no protobuf library).

An event file (`events.out.tfevents.*`, written by tensorboardX, `torch.utils.tensorboard`,
Lightning's and Keras' TensorBoard loggers, Hugging Face's Trainer, TensorFlow) is a stream
of records, each

    uint64 length (little-endian) · uint32 masked CRC-32C of those 8 bytes ·
    `length` bytes of data (one serialized `Event` protobuf) · uint32 masked CRC-32C of the data

`read_events` decodes the records of a chunk read from some offset of such a file and says
how many bytes it consumed: whole records only. A record not yet whole (the file is being
written) is left for the next read, so reading a growing file in any chunking yields exactly
the points of reading it whole, as the printed-output parsers do (`monitor.py`).

Of each `Event` (wall_time = 1 double, step = 2 int64, summary = 5) the summary's values
(`Summary.value` = 1: tag = 1, simple_value = 2 float, tensor = 8) that are scalars become
points: a `simple_value` (what tensorboardX and torch write) or a tensor of rank 0 with one
number (TensorFlow 2's `tf.summary.scalar`: `float_val` = 5, `double_val` = 6, `int_val` = 7,
`int64_val` = 10, or `tensor_content` = 4, by its `dtype` = 1). Images, histograms, text and
every other summary give nothing. The tag is the metric's name, unchanged (`train/loss`);
the point's step is the event's, its time the event's wall time; its source `tensorboard`.

CRCs (measured, bench/README.md "TensorBoard event files"): the length's CRC is checked on
every record (a table keyed by the 8 length bytes: scalar records share a few lengths, so a
check costs one dict lookup); the data's CRC, in pure Python ~10 MB/s and as costly as the
decoding itself, is checked only for records in the last `VERIFY_TAIL` bytes of the file as
it was when read: where a record being written, or a network file system's not yet filled
page, shows. A record there that fails its check waits for the next read (after the job
ended it is skipped, with a problem); a record elsewhere is decoded without the check (a
protobuf that does not parse gives nothing). A record too long for the read window (a large
image) is skipped without being read, once the file holds it whole (`size`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .model import MetricPoint

__all__ = ["SOURCE", "VERIFY_TAIL", "EventsRead", "crc32c", "masked_crc", "read_events"]

SOURCE = "tensorboard"
VERIFY_TAIL = 16 << 10  # bytes at the end of the file whose records' data CRC is checked


def _table() -> list[int]:
    out = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return out


_CRC_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, in pure Python (table-driven)."""
    t = _CRC_TABLE
    c = 0xFFFFFFFF
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC: the CRC-32C rotated right by 15 bits plus a constant."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


_LENGTH_OK: dict[bytes, bool] = {}  # 12 header bytes -> whether the length's CRC matches


def _length_ok(header: bytes) -> bool:
    ok = _LENGTH_OK.get(header)
    if ok is None:
        ok = struct.unpack_from("<I", header, 8)[0] == masked_crc(header[:8])
        if len(_LENGTH_OK) < 65536:
            _LENGTH_OK[header] = ok
    return ok


@dataclass(frozen=True)
class EventsRead:
    """What one chunk of an event file gave: its points, the bytes consumed (may pass the
    chunk's end: a record too long to read, skipped) and problems worth a warning."""

    points: list[MetricPoint]
    consumed: int
    problems: tuple[str, ...] = ()


def read_events(data: bytes, offset: int = 0, size: int | None = None, *, final: bool = False,
                window: int = 0) -> EventsRead:
    """The scalar points of the whole records in `data`, read at byte `offset` of a file
    then `size` bytes long (None: `offset + len(data)`). `final`: the file is complete (its
    job ended), so a record failing its check at the end is skipped instead of awaited.
    `window`: the most bytes one read returns (0: no limit); a record longer is skipped."""
    size = offset + len(data) if size is None else size
    tail_from = size - VERIFY_TAIL - offset  # records ending after this position are verified
    points: list[MetricPoint] = []
    problems: list[str] = []
    seen: dict[bytes, float] = {}  # float32 bytes -> value: a steady value (a learning rate) decodes once
    unpack_q = struct.Struct("<Q").unpack_from
    unpack_i = struct.Struct("<I").unpack_from
    i, n = 0, len(data)
    while n - i >= 12:
        header = data[i:i + 12]
        if not _length_ok(header):
            if final or offset + i + VERIFY_TAIL < size:
                problems.append(f"a corrupt record at byte {offset + i} (its length fails its CRC): "
                                "the rest of the file is skipped")
                return EventsRead(points, max(n, size - offset), tuple(problems))
            break  # being written: read again next time
        length = unpack_q(header)[0]
        end = i + 12 + length + 4
        if end > n:
            if window and end - i > window and offset + end <= size:  # longer than a read: skipped unread
                problems.append(f"a record of {length} bytes at byte {offset + i} is longer than a read "
                                "and was skipped (an image or other large summary)")
                i = end
                break
            break  # not yet whole (or the read window ends inside it): next time
        body = data[i + 12:i + 12 + length]
        if end > tail_from and unpack_i(data, i + 12 + length)[0] != masked_crc(body):
            if not final:
                break  # a record still being written: next time
            problems.append(f"a record at byte {offset + i} fails its CRC and was skipped")
        else:
            try:
                _event_points(body, points, seen)
            except (IndexError, struct.error, ValueError, UnicodeDecodeError):
                pass  # not an Event protobuf: nothing in it
        i = end
    return EventsRead(points, i, tuple(problems))


# ---------------------------------------------------------------------------- protobuf
def _varint(b: bytes, i: int) -> tuple[int, int]:
    x = b[i]
    if x < 0x80:
        return x, i + 1
    result, shift = x & 0x7F, 7
    while True:
        i += 1
        x = b[i]
        result |= (x & 0x7F) << shift
        if x < 0x80:
            return result, i + 1
        shift += 7


def _skip(b: bytes, i: int, wire: int) -> int:
    """The position after a field's value of wire type `wire` starting at `i`."""
    if wire == 0:
        return _varint(b, i)[1]
    if wire == 1:
        return i + 8
    if wire == 2:
        n, i = _varint(b, i)
        return i + n
    if wire == 5:
        return i + 4
    raise ValueError(f"wire type {wire}")


_WALL = struct.Struct("<d").unpack_from


def _event_points(b: bytes, out: list[MetricPoint], seen: dict[bytes, float]) -> None:
    """Append the scalar points of one serialized Event to `out`."""
    # The common record first (tensorboardX's and torch's add_scalar): wall_time, step, then a
    # summary of one simple_value with a short tag, every length one byte; anything else (or
    # anything unexpected here) takes the general path below.
    n = len(b)
    if n > 16 and b[0] == 0x09:
        i, step = 9, 0
        if b[i] == 0x10:
            step, i = _varint(b, i + 1)
            if step >= 1 << 63:
                step -= 1 << 64
        if i + 6 < n and b[i] == 0x2A and b[i + 1] == n - i - 2 and b[i + 2] == 0x0A and b[i + 3] == n - i - 4 \
                and b[i + 4] == 0x0A:
            m = i + 6 + b[i + 5]
            if m + 5 == n and b[m] == 0x15 and b[i + 5] < 0x80:
                out.append(MetricPoint(b[i + 6:m].decode("utf-8"), _float32(b, m + 1, seen), step,
                                       _WALL(b, 1)[0], SOURCE))
                return
    wall: float | None = None
    step = 0  # proto3: a step of 0 is not written
    summary: tuple[int, int] | None = None
    i, n = 0, len(b)
    while i < n:
        key = b[i]
        i += 1
        if key == 0x09:  # wall_time
            wall = struct.unpack_from("<d", b, i)[0]
            i += 8
        elif key == 0x10:  # step
            step, i = _varint(b, i)
            if step >= 1 << 63:
                step -= 1 << 64
        elif key == 0x2A:  # summary
            length, i = _varint(b, i)
            summary = (i, i + length)
            i += length
        else:
            if key >= 0x80:
                key, i = _varint(b, i - 1)
            i = _skip(b, i, key & 7)
    if summary is None:
        return
    i, end = summary
    while i < end:
        key = b[i]
        i += 1
        if key == 0x0A:  # value
            length, i = _varint(b, i)
            found = _value(b, i, i + length, seen)
            if found is not None:
                out.append(MetricPoint(found[0], found[1], step, wall, SOURCE))
            i += length
        else:
            if key >= 0x80:
                key, i = _varint(b, i - 1)
            i = _skip(b, i, key & 7)


def _value(b: bytes, i: int, end: int, seen: dict[bytes, float]) -> tuple[str, float] | None:
    """(tag, value) of one Summary.Value that holds a scalar, else None."""
    tag = ""
    value: float | None = None
    while i < end:
        key = b[i]
        i += 1
        if key == 0x0A:  # tag
            length, i = _varint(b, i)
            tag = b[i:i + length].decode("utf-8")
            i += length
        elif key == 0x15:  # simple_value
            value = _float32(b, i, seen)
            i += 4
        elif key == 0x42:  # tensor
            length, i = _varint(b, i)
            value = _scalar_tensor(b, i, i + length, seen)
            i += length
        else:
            if key >= 0x80:
                key, i = _varint(b, i - 1)
            i = _skip(b, i, key & 7)
    return (tag, value) if tag and value is not None else None


def _float32(b: bytes, i: int, seen: dict[bytes, float]) -> float:
    """The float32 at b[i:i+4] as a short decimal that reads back as it (0.1, not
    0.10000000149011612): what the program logged, as TensorBoard shows it, so a rule's
    `val_acc >= 0.9` holds for a logged 0.9. Seven significant digits first (a value logged
    with up to seven is read back exactly), then eight, then nine (always enough)."""
    raw = b[i:i + 4]
    v = seen.get(raw)
    if v is not None:
        return v
    v = struct.unpack("<f", raw)[0]
    if v == v and v not in (_INF, -_INF):
        for digits in ("%.7g", "%.8g", "%.9g"):
            r = float(digits % v)
            if struct.pack("<f", r) == raw:
                v = r
                break
    seen[raw] = v
    return v
_INF = float("inf")

# DataType -> (struct format of one element in tensor_content, the repeated field holding it)
_DTYPES = {1: ("<f", 5), 2: ("<d", 6), 3: ("<i", 7), 9: ("<q", 10), 10: ("<?", 11), 4: ("<B", 7),
           5: ("<h", 7), 6: ("<b", 7), 17: ("<H", 7), 22: ("<I", 10), 23: ("<Q", 10)}


def _scalar_tensor(b: bytes, i: int, end: int, seen: dict[bytes, float]) -> float | None:
    """The number in a TensorProto of rank 0 and a numeric dtype, else None."""
    dtype = 0
    content: bytes | None = None
    values: dict[int, list[float]] = {}
    while i < end:
        key = b[i]
        i += 1
        field, wire = key >> 3, key & 7
        if key >= 0x80:
            key, i = _varint(b, i - 1)
            field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            dtype, i = _varint(b, i)
        elif field == 2 and wire == 2:  # tensor_shape: any dim makes it no scalar
            length, i = _varint(b, i)
            if length and b[i] == 0x0A:
                return None
            i += length
        elif field == 4 and wire == 2:
            length, i = _varint(b, i)
            content = b[i:i + length]
            i += length
        elif field in (5, 6, 7, 10, 11):
            values.setdefault(field, []).extend(_repeated(b, i, field, wire))
            i = _skip(b, i, wire)
        else:
            i = _skip(b, i, wire)
    kind = _DTYPES.get(dtype)
    if kind is None:
        return None
    fmt, field = kind
    if content is not None:
        width = struct.calcsize(fmt)
        if len(content) != width:
            return None
        return _float32(content, 0, seen) if fmt == "<f" else float(struct.unpack_from(fmt, content)[0])
    got = values.get(field)
    if not got or len(got) != 1:
        return None
    return _float32(struct.pack("<f", got[0]), 0, seen) if field == 5 else float(got[0])


def _repeated(b: bytes, i: int, field: int, wire: int) -> list[float]:
    """The numbers of one occurrence of a repeated numeric field (packed or not)."""
    fixed = {5: "<f", 6: "<d"}.get(field)
    if wire == 2:  # packed
        length, i = _varint(b, i)
        end = i + length
        if fixed:
            return [float(x) for x in struct.unpack_from(f"<{length // struct.calcsize(fixed)}{fixed[1]}", b, i)]
        out: list[float] = []
        while i < end:
            v, i = _varint(b, i)
            out.append(float(v - (1 << 64) if v >= 1 << 63 else v))
        return out
    if wire == 5:
        return [struct.unpack_from("<f", b, i)[0]]
    if wire == 1:
        return [struct.unpack_from("<d", b, i)[0]]
    v = _varint(b, i)[0]
    return [float(v - (1 << 64) if v >= 1 << 63 else v)]
