"""Benchmark: reading scalar events from TensorBoard event files, nero against tbparse and
TensorBoard's own EventAccumulator, on the same files, in one run.

The files (`--events` scalar events, 1,000,000 by default, over `--files` event files of
four tags each, written once by tensorboardX's SummaryWriter) are cached in a temporary
folder and reused. nero reads them as a poll does: chunks of the read window (8 MiB) through
`orchestrator.metric_files.read_sources`, the offsets carried from chunk to chunk, so the
figure includes the tag → name mapping and the point objects. tbparse (`SummaryReader(...).scalars`,
a pandas DataFrame) and EventAccumulator (`size_guidance={"scalars": 0}`: every point kept)
read the same folder. Every reader must return every event, else the benchmark fails.

Also measured: what checking every record's data CRC in pure Python would add (the reason
nero checks it only near a file's end: tfevents.py), and google-crc32c's speed if installed.

    python bench/bench_tfevents.py [--events 1000000] [--files 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from orchestrator.metric_files import read_sources  # noqa: E402
from orchestrator.model import SourceChunk, SourceOffset  # noqa: E402
from orchestrator.tfevents import masked_crc  # noqa: E402

WINDOW = 8 << 20
TAGS = ("train/loss", "train/lr", "val/loss", "val/acc")


def write_files(folder: Path, events: int, files: int) -> None:
    from tensorboardX import SummaryWriter

    per_file = events // files
    for k in range(files):
        w = SummaryWriter(str(folder / f"run{k}"), max_queue=10_000, flush_secs=3600)
        for i in range(per_file):
            w.add_scalar(TAGS[i % 4], 1.0 / (i + 1), i // 4)
        w.close()
    (folder / "done").write_text(str(events))


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def nero_read(folder: Path) -> int:
    """Every point of every file, read in windows as successive polls do."""
    n = 0
    for path in event_files(folder):
        rel, size = str(path.relative_to(folder)), path.stat().st_size
        known: tuple[SourceOffset, ...] = ()
        with path.open("rb") as f:
            while True:
                at = known[0].offset if known else 0
                if at >= size:
                    break
                f.seek(at)
                r = read_sources([SourceChunk(rel, at, f.read(WINDOW), size)], known, None, final=True,
                                 window=WINDOW)
                if r.offsets == known:
                    break
                known = r.offsets
                n += len(r.points)
    return n


def tbparse_read(folder: Path) -> int:
    from tbparse import SummaryReader

    return len(SummaryReader(str(folder)).scalars)


def accumulator_read(folder: Path) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    n = 0
    for path in event_files(folder):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        n += sum(len(acc.Scalars(t)) for t in acc.Tags()["scalars"])
    return n


def data_crc_seconds(folder: Path) -> tuple[float, int]:
    """Seconds to check every record's data CRC in pure Python, and the bytes checked."""
    t0, total = time.perf_counter(), 0
    for path in event_files(folder):
        data = path.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, i)
            body = data[i + 12:i + 12 + length]
            if struct.unpack_from("<I", data, i + 12 + length)[0] != masked_crc(body):
                raise SystemExit(f"{path}: a data CRC does not match at byte {i}")
            total += length
            i += 16 + length
    return time.perf_counter() - t0, total


def best(fn, folder: Path, rounds: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        n = fn(folder)
        times.append(time.perf_counter() - t0)
    return min(times), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    folder = Path(tempfile.gettempdir()) / f"nero-bench-tfevents-{args.events}-{args.files}"
    if not (folder / "done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_files(folder, args.events, args.files)
        print(f"wrote {args.events} events with tensorboardX in {time.perf_counter() - t0:.1f} s into {folder}")
    size = sum(p.stat().st_size for p in event_files(folder))
    expected = args.events // args.files * args.files
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {expected} scalar events in "
          f"{len(event_files(folder))} files, {size / 1e6:.1f} MB; best of {args.rounds}")
    rows = []
    for name, fn in (("nero", nero_read), ("tbparse", tbparse_read), ("EventAccumulator", accumulator_read)):
        try:
            seconds, n = best(fn, folder, args.rounds)
        except ImportError as e:
            print(f"{name}: not installed ({e.name}); pip install 'nero[bench]'")
            continue
        if n != expected:
            raise SystemExit(f"{name} read {n} points, not {expected}: nothing comparable was measured")
        rows.append((name, seconds, n))
    if not rows or rows[0][0] != "nero":
        raise SystemExit("nero's reader measured nothing")
    print(f"{'reader':<18} {'seconds':>8} {'points/s':>12} {'nero is':>10}")
    ours = rows[0][1]
    for name, seconds, n in rows:
        print(f"{name:<18} {seconds:>8.2f} {n / seconds:>12,.0f} {seconds / ours:>9.1f}x")
    crc_s, checked = data_crc_seconds(folder)
    print(f"every data CRC in pure Python: {crc_s:.2f} s ({checked / crc_s / 1e6:.1f} MB/s), "
          f"{crc_s / ours:.0%} of nero's read")
    try:
        import google_crc32c
    except ImportError:
        print("google-crc32c: not installed")
    else:
        data = b"".join(p.read_bytes() for p in event_files(folder))
        t0 = time.perf_counter()
        google_crc32c.value(data)
        print(f"google-crc32c over the files at once: {len(data) / (time.perf_counter() - t0) / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
