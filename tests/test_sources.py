"""sources.read_ahead: the batches scan scores, read one batch ahead in a thread; same frames, same order, errors
where the unbatched source raised them, and a reader that stops when the batches are closed."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from rsdetect.serve.sources import SourceError, read_ahead


def counting(n: int, fail_at: int | None = None, log: list | None = None) -> Iterator[int]:
    """0..n-1 (recording each value read and the reading thread), raising SourceError instead of `fail_at`."""
    for i in range(n):
        if i == fail_at:
            raise SourceError(f"ended early at {i}")
        if log is not None:
            log.append((i, threading.current_thread().name))
        yield i


@pytest.mark.parametrize("n,batch", [(10, 3), (9, 3), (0, 4), (1, 1), (5, 16)])
def test_batches_are_the_frames_in_order(n, batch):
    got = list(read_ahead(counting(n), batch))
    assert [i for chunk in got for i in chunk] == list(range(n))
    assert all(len(chunk) == batch for chunk in got[:-1]) and all(0 < len(c) <= batch for c in got)


def test_frames_are_read_in_another_thread_one_batch_ahead():
    log: list = []
    batches = read_ahead(counting(20, log=log), 4)
    with contextlib.closing(batches):
        first = next(batches)
        assert first == [0, 1, 2, 3]
        deadline = time.monotonic() + 5
        while len(log) < 8 and time.monotonic() < deadline:  # the reader goes on to the next batch unasked ...
            time.sleep(0.01)
        time.sleep(0.05)
        assert len(log) == 8  # ... and no further
    assert {name for _, name in log} != {threading.current_thread().name}


def test_a_source_error_comes_after_the_frames_read_before_it():
    batches = read_ahead(counting(10, fail_at=5), 3)
    assert next(batches) == [0, 1, 2]
    assert next(batches) == [3, 4]  # the partial batch is still scored
    with pytest.raises(SourceError, match="ended early at 5"):
        next(batches)


def test_closing_stops_the_reader_so_the_source_can_be_closed():
    log: list = []
    frames = counting(10_000, log=log)
    batches = read_ahead(frames, 8)
    with contextlib.closing(frames), contextlib.closing(batches):
        assert next(batches) == list(range(8))
    frames.close()  # not "generator already executing": the reader has finished
    assert len(log) <= 16
