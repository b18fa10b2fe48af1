"""Parallel decoding for `dae extract`: worker processes turn videos into clip tensors in shared-memory slots.

Each worker process opens its own readers (never the parent), decodes with `threads` decoder threads and
one torch thread, and writes the protocol's clips of one video into a slot of a shared tensor allocated
once by the parent; only tiny messages (position, slot, error) travel through pipes. A coordinator
thread in the parent assigns tasks, watches the workers, and hands results to the caller strictly in
task order. A worker that dies (a decoder crashing in C code on a hostile file) or hangs past
`timeout_s` fails only the video it was decoding, with a reason; a fresh worker takes over its queue.
Slots bound memory: at most `slots` videos are decoded ahead of the consumer. They live in shared memory
(/dev/shm on Linux), which containers and some clusters keep small: the pool sizes itself to the free space
(fewer videos ahead, then, for a sequence protocol, fewer clips per slot, then fewer workers) and refuses to
start, with a one-line error, when even three slots do not fit; a write past a full /dev/shm would otherwise
kill the run with SIGBUS.

Sequence protocols (stride:T) give as many clips as the video is long, known only once a worker has opened it.
A slot holds `slot_clips` clips (SEQUENCE_SLOT_FRAMES frames' worth, the size of a uniform:10x16 slot); a longer
video comes in pieces through its one slot: the worker writes a piece, the consumer takes it and releases it,
then the worker writes the next. A fixed protocol's video is always one piece. `timeout_s` then bounds each
piece (the clock stops while the consumer holds one); a death or hang after some pieces fails the video, and the
consumer leaves out the clips it already took.
"""
from __future__ import annotations

import heapq
import multiprocessing
import multiprocessing.connection as mpc
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from dae.errors import DaeError
from dae.features.clips import ClipProtocol, check_range, clip_indices, read_clips
from dae.features.decode import VideoDecodeError, open_video
from dae.features.extract_defaults import DECODE_THREADS, VIDEO_TIMEOUT_S
from dae.pause import pause_point

_POLL_SECONDS = 0.2
SHM_DIR = "/dev/shm"
# DAE_SHM_LIMIT_BYTES caps what decoding may use of /dev/shm (for a node shared with other jobs; the tests use it)
SHM_LIMIT_ENV = "DAE_SHM_LIMIT_BYTES"
_SHM_HEADROOM_BYTES = 64 << 20  # left free for everything else that uses /dev/shm


SEQUENCE_SLOT_FRAMES = 160  # frames per slot for sequence protocols: a uniform:10x16 slot, 96 MB at 224 px


def clip_bytes(protocol: ClipProtocol) -> int:
    """Bytes of one preprocessed clip, float32."""
    return 4 * 3 * protocol.frames_per_clip * protocol.crop_size * protocol.crop_size


def default_slot_clips(protocol: ClipProtocol) -> int:
    """Clips per slot: a fixed protocol's whole video; for a sequence, SEQUENCE_SLOT_FRAMES frames' worth."""
    if protocol.variable_length:
        return max(1, SEQUENCE_SLOT_FRAMES // protocol.frames_per_clip)
    return protocol.num_clips


def slot_bytes(protocol: ClipProtocol, slot_clips: int | None = None) -> int:
    """Bytes of one slot: `slot_clips` clips (default: `default_slot_clips`), float32."""
    return clip_bytes(protocol) * (slot_clips or default_slot_clips(protocol))


def slot_count(workers: int, prefetch: int) -> int:
    # the consumer holds one slot while it copies clips out; one more keeps the next video in order unblocked
    return workers * prefetch + 2


def shm_free_bytes(env=os.environ) -> int | None:
    """Free bytes of /dev/shm (capped by $DAE_SHM_LIMIT_BYTES); None where there is no /dev/shm to check."""
    free = None
    try:
        stat = os.statvfs(SHM_DIR)
        free = stat.f_bavail * stat.f_frsize
    except (OSError, AttributeError):
        pass
    if env.get(SHM_LIMIT_ENV):
        try:
            limit = int(float(env[SHM_LIMIT_ENV]))
        except ValueError:
            raise DaeError(f"${SHM_LIMIT_ENV}={env[SHM_LIMIT_ENV]!r} is not a number of bytes") from None
        free = limit if free is None else min(free, limit)
    return free


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def plan_slots(protocol: ClipProtocol, workers: int, prefetch: int,
               free_bytes: int | None) -> tuple[int, int, int]:
    """(workers, prefetch, slot_clips) whose slots fit `free_bytes` of shared memory: fewer videos ahead first,
    then (sequence protocols) fewer clips per slot, down to one, then fewer workers."""
    slot_clips = default_slot_clips(protocol)
    if free_bytes is None:
        return workers, prefetch, slot_clips
    budget = free_bytes - _SHM_HEADROOM_BYTES

    def fits() -> bool:
        return slot_count(workers, prefetch) * slot_bytes(protocol, slot_clips) <= budget

    while not fits() and prefetch > 1:
        prefetch -= 1
    if protocol.variable_length and not fits():
        slot_clips = max(1, min(slot_clips, budget // (slot_count(workers, prefetch) * clip_bytes(protocol))))
    while not fits() and workers > 1:
        workers -= 1
    if not fits():
        size = slot_bytes(protocol, slot_clips)
        unit = "slots of one clip" if protocol.variable_length else "slots"
        raise DaeError(f"decoding needs {_gb(slot_count(1, 1) * size + _SHM_HEADROOM_BYTES)} of shared memory "
                       f"(/dev/shm) at least: 3 {unit} of {_gb(size)} for {protocol.name} at {protocol.crop_size} px, "
                       f"and {_gb(free_bytes)} is free; make /dev/shm larger (docker run --shm-size) or free it, or "
                       "use a protocol with fewer clips")
    return workers, prefetch, slot_clips


@dataclass(frozen=True)
class VideoTask:
    """One video (or segment) to extract: `position` orders the run; `error` set means it fails without decoding."""

    position: int
    video_id: str
    path: str  # the file to open
    rel_path: str  # as recorded in failure lists (relative to --videos when possible)
    start_frame: int | None = None
    end_frame: int | None = None
    error: str | None = None


@dataclass
class Decoded:
    """A decoded video, or a piece of one: clips first_clip .. first_clip + n - 1 of its `total_clips`, as an
    (n, 3, T, S, S) tensor in a shared slot until `release()`; or its failure reason. `last` marks the video's
    final piece (a failure is always last, even after pieces that came through)."""

    task: VideoTask
    clips: torch.Tensor | None
    error: str | None
    _release: object = field(default=None, repr=False)
    first_clip: int = 0
    total_clips: int = 0
    last: bool = True

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


def failure_reason(exc: BaseException) -> str:
    """A one-line reason for a video that could not be turned into clips (no path: the failure list has it)."""
    if isinstance(exc, VideoDecodeError):
        return exc.reason
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    if isinstance(exc, DaeError):
        return text
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    return f"{exc.__class__.__name__}: {text}"[:300]


CONTINUE = "continue"  # parent -> worker: the consumer has taken the piece in your slot, write the next


def _worker_main(tasks, results, slots, protocol: ClipProtocol, decoder: str, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    torch.set_num_threads(1)
    results.send(("ready",))
    # decord logs every unreadable file on stderr from C++ even at QUIET; each failure's reason is recorded
    # in the failure list instead, so the workers' stderr goes quiet once they are up.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    queued: deque = deque()  # tasks that arrived while waiting for CONTINUE

    def receive():
        return queued.popleft() if queued else tasks.recv()

    def wait_for_continue(position: int) -> bool:
        while True:
            message = tasks.recv()
            if message == (CONTINUE, position):
                return True
            if message is None:
                return False
            queued.append(message)

    while True:
        try:
            message = receive()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        position, path, start_frame, end_frame, slot = message
        pause_point(f"decode-{os.path.basename(path)}")  # tests: a worker killed or hung while on this video
        try:
            if not _decode_pieces(position, path, start_frame, end_frame, slots[slot], protocol, decoder, threads,
                                  results, wait_for_continue):
                return
        except (BrokenPipeError, EOFError, OSError):  # the parent is gone
            return


def _decode_pieces(position, path, start_frame, end_frame, slot, protocol, decoder, threads, results,
                   wait_for_continue) -> bool:
    """Write one video's clips into `slot`, `len(slot)` clips at a time, announcing each piece as
    (position, error, first clip, clips, total clips); False when told to stop."""
    first, total = 0, 0
    try:
        with open_video(path, decoder, threads, *protocol.segment(start_frame, end_frame)) as reader:
            check_range(reader, protocol, start_frame, end_frame)
            indices = clip_indices(protocol, reader.num_frames)
            total = len(indices)
            while first < total:
                n = min(len(slot), total - first)
                slot[:n].copy_(read_clips(reader, protocol, indices[first:first + n]))
                results.send((position, None, first, n, total))
                first += n
                if first < total:
                    pause_point(f"piece-{os.path.basename(path)}-{first}")  # tests: held between two pieces
                    if not wait_for_continue(position):
                        return False
    except (BrokenPipeError, EOFError):
        raise
    except Exception as exc:  # every failure is the video's, reported with its reason
        results.send((position, failure_reason(exc), first, 0, total))
    return True


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    # forkserver: workers are forked from a clean server process, never from a parent whose OpenMP
    # thread pool is running (forking that can deadlock the child); spawn where there is no forkserver.
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


@dataclass
class _Worker:
    process: object
    tasks: object
    results: object
    assigned: deque = field(default_factory=deque)  # (position, slot) in the order the worker runs them
    started: float = 0.0  # when the head of `assigned` began
    ready: bool = False  # the process got as far as its loop (a death before that is not a video's fault)
    waiting: bool = False  # a piece of its head video is with the consumer; no timeout runs meanwhile


class DecodePool:
    """`workers` decoding processes; iterate `decode(tasks)` to get `Decoded` items in task order."""

    def __init__(self, protocol: ClipProtocol, decoder: str, workers: int, *, threads: int = DECODE_THREADS,
                 prefetch: int = 2, timeout_s: float = VIDEO_TIMEOUT_S, note=None):
        self.protocol, self.decoder, self.threads = protocol, decoder, max(1, int(threads))
        asked = max(1, int(workers)), max(1, int(prefetch))
        free = shm_free_bytes()
        self.n_workers, self.prefetch, self.slot_clips = plan_slots(protocol, *asked, free)
        if (self.n_workers, self.prefetch, self.slot_clips) != (*asked, default_slot_clips(protocol)) \
                and note is not None:
            pieces = (f", {self.slot_clips} clips per slot (longer videos come in pieces)"
                      if protocol.variable_length else "")
            note(f"note: /dev/shm has {_gb(free)} free, not the {_gb(slot_count(*asked) * slot_bytes(protocol))} "
                 f"that {asked[0]} decoding workers need: decoding with {self.n_workers} workers, "
                 f"{self.prefetch} video(s) ahead each{pieces} (make /dev/shm larger for more)")
        self.timeout_s = float(timeout_s)
        # The consumer holds one slot at a time (it copies clips out and releases); the rest bound the
        # look-ahead, so the next video in order always finds a free slot.
        self.window = self.n_workers * self.prefetch + 1
        self.n_slots = slot_count(self.n_workers, self.prefetch)
        shape = (self.n_slots, self.slot_clips, 3, protocol.frames_per_clip, protocol.crop_size, protocol.crop_size)
        # share_memory_() copies into /dev/shm, so every page is in place before a worker writes (checked to fit)
        self.slots = torch.empty(shape, dtype=torch.float32).share_memory_()
        self._ctx = _mp_context()
        if self._ctx.get_start_method() == "forkserver":
            self._ctx.set_forkserver_preload(["dae.features.decode_pool"])
        self._workers: list[_Worker | None] = [None] * self.n_workers
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for slot in range(self.n_slots):
            self._free.put(slot)
        self._out: queue.SimpleQueue = queue.SimpleQueue()
        # the consumer's releases of non-final pieces, by task index; the coordinator waits on this pipe too
        self._taken_reader, self._taken_writer = mpc.Pipe(duplex=False)
        self._orphans: dict[int, int] = {}  # task index -> slot whose worker died while the consumer held a piece
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.crashes = 0

    # -- worker processes ---------------------------------------------------------------------------

    def _spawn(self, wid: int) -> None:
        task_reader, task_writer = self._ctx.Pipe(duplex=False)
        result_reader, result_writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_worker_main, name=f"dae-decode-{wid}", daemon=True,
                                    args=(task_reader, result_writer, self.slots, self.protocol, self.decoder,
                                          self.threads))
        process.start()
        task_reader.close()
        result_writer.close()
        self._workers[wid] = _Worker(process, task_writer, result_reader)

    def _retire(self, wid: int, kill: bool) -> None:
        worker = self._workers[wid]
        self._workers[wid] = None
        if worker is None:
            return
        if kill and worker.process.is_alive():
            worker.process.kill()
        else:
            try:
                worker.tasks.send(None)
            except OSError:
                pass
        worker.process.join(timeout=5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        for conn in (worker.tasks, worker.results):
            conn.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the live decoding workers (for monitoring)."""
        return [w.process.pid for w in list(self._workers) if w is not None and w.process.pid is not None]

    def close(self) -> None:
        """Stop the coordinator and every worker (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for wid in range(self.n_workers):
            self._retire(wid, kill=True)
        for conn in (self._taken_reader, self._taken_writer):
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- coordination -------------------------------------------------------------------------------

    def decode(self, tasks: list[VideoTask]):
        """Yield one `Decoded` per task, in the order given; call `release()` on each when done with its clips."""
        if self._thread is not None:
            raise RuntimeError("a DecodePool decodes one task list")
        for wid in range(self.n_workers):
            self._spawn(wid)
        self._thread = threading.Thread(target=self._coordinate_safely, args=(list(tasks),),
                                        name="dae-decode-coordinator", daemon=True)
        self._thread.start()
        try:
            done = 0
            while done < len(tasks):
                item = self._out.get()
                if isinstance(item, BaseException):
                    raise item
                done += item.last
                yield item
        finally:
            self.close()

    def _coordinate_safely(self, tasks):
        try:
            self._coordinate(tasks)
        except BaseException as exc:  # hand it to the consuming thread
            self._out.put(exc if isinstance(exc, DaeError) else DaeError(
                f"decoding coordinator failed: {exc.__class__.__name__}: {exc}"))

    def _coordinate(self, tasks: list[VideoTask]) -> None:
        waiting = [(i, task) for i, task in enumerate(tasks)]  # heap by output order
        heapq.heapify(waiting)
        finished: dict[int, deque] = {}  # task index -> its pieces not yet handed out, in order
        next_out = 0
        while next_out < len(tasks) and not self._stop.is_set():
            self._assign(waiting, next_out, tasks, finished)
            self._collect(tasks, finished, waiting)
            while finished.get(next_out):
                item = finished[next_out].popleft()
                self._out.put(item)
                if item.last:
                    del finished[next_out]
                    next_out += 1

    def _finish(self, finished, i: int, item: Decoded) -> None:
        finished.setdefault(i, deque()).append(item)

    def _decoded(self, task: VideoTask, slot: int | None, error: str | None, first: int = 0, n: int = 0,
                 total: int = 0, index: int = 0) -> Decoded:
        if slot is None:
            return Decoded(task, None, error)
        if error is not None:
            self._free.put(slot)
            return Decoded(task, None, error, first_clip=first, total_clips=total)
        if first + n < total:  # a piece: releasing it lets the worker write the next into the same slot
            return Decoded(task, self.slots[slot][:n], None, _release=lambda: self._taken(index),
                           first_clip=first, total_clips=total, last=False)
        return Decoded(task, self.slots[slot][:n], None, _release=lambda: self._free.put(slot), first_clip=first,
                       total_clips=total)

    def _taken(self, index: int) -> None:
        try:
            self._taken_writer.send(index)
        except OSError:  # the pool is closed: nobody waits for the piece any more
            pass

    def _continue_taken(self) -> None:
        """Tell each worker whose piece the consumer has released to write the next one."""
        while self._taken_reader.poll():
            position = self._taken_reader.recv()
            if position in self._orphans:  # its worker died meanwhile: the slot is free now
                self._free.put(self._orphans.pop(position))
                continue
            for worker in self._workers:
                if worker is not None and worker.waiting and worker.assigned and worker.assigned[0][0] == position:
                    worker.waiting = False
                    worker.started = time.monotonic()
                    try:
                        worker.tasks.send((CONTINUE, position))
                    except OSError:  # it died: _collect finds out and fails the video
                        pass

    def _assign(self, waiting, next_out, tasks, finished) -> None:
        while waiting and waiting[0][0] < next_out + self.window:
            i, task = waiting[0]
            if task.error is not None:  # known before decoding (e.g. no file for a manifest row)
                heapq.heappop(waiting)
                self._finish(finished, i, self._decoded(task, None, task.error))
                continue
            idle = [w for w in range(self.n_workers)
                    if self._workers[w] is not None and len(self._workers[w].assigned) < self.prefetch]
            if not idle:
                return
            try:
                slot = self._free.get_nowait()
            except queue.Empty:
                return
            wid = min(idle, key=lambda w: len(self._workers[w].assigned))
            worker = self._workers[wid]
            try:
                if not worker.assigned and not worker.process.is_alive():
                    raise BrokenPipeError  # died while idle (killed from outside): no video to blame
                worker.tasks.send((i, task.path, task.start_frame, task.end_frame, slot))
            except (BrokenPipeError, OSError):
                self._free.put(slot)
                if worker.assigned:  # its queue fails or returns through _collect
                    return
                self._retire(wid, kill=True)
                self._spawn(wid)
                continue
            heapq.heappop(waiting)
            if not worker.assigned:
                worker.started = time.monotonic()
            worker.assigned.append((i, slot))

    def _collect(self, tasks, finished, waiting) -> None:
        live = [w for w in self._workers if w is not None and w.assigned]
        if not live:
            time.sleep(0.01)  # waiting on the consumer to release a slot
            return
        mpc.wait([w.results for w in live] + [w.process.sentinel for w in live] + [self._taken_reader],
                 timeout=_POLL_SECONDS)
        self._continue_taken()
        for wid, worker in enumerate(self._workers):
            if worker is None or not worker.assigned:
                continue
            lost = None
            try:
                while worker.assigned and worker.results.poll():
                    message = worker.results.recv()
                    if message == ("ready",):
                        worker.ready = True
                        continue
                    i, error, first, n, total = message
                    head, slot = worker.assigned[0]
                    if head != i:
                        raise DaeError(f"decode worker answered task {i} while running {head}")
                    item = self._decoded(tasks[i], slot, error, first, n, total, index=i)
                    if item.last:
                        worker.assigned.popleft()
                    else:
                        worker.waiting = True
                    self._finish(finished, i, item)
                    worker.started = time.monotonic()
            except (EOFError, OSError):  # the pipe closed: the process is gone or going
                worker.process.join(timeout=5)
                lost = "the decoding process died"
            if not worker.assigned:
                continue
            if not worker.process.is_alive():
                code = worker.process.exitcode
                lost = (f"the decoding process crashed (signal {-code})" if code is not None and code < 0
                        else f"the decoding process exited with code {code}")
            if lost is None and not worker.waiting and time.monotonic() - worker.started > self.timeout_s:
                lost = f"decoding did not finish within {self.timeout_s:g} s (a hanging decoder); the process was stopped"
            if lost is not None and not worker.ready:
                raise DaeError(f"a decoding worker process failed to start ({lost}); if you call dae from a "
                               "script, guard it with `if __name__ == '__main__':`")
            if lost is not None:
                self._replace(wid, lost, tasks, finished, waiting)

    def _replace(self, wid, reason, tasks, finished, waiting) -> None:
        """The worker's current video fails with `reason`; the rest of its queue goes back to waiting."""
        worker = self._workers[wid]
        (head, slot), rest = worker.assigned[0], list(worker.assigned)[1:]
        worker.assigned.clear()
        self._retire(wid, kill=True)
        self.crashes += 1
        if worker.waiting:  # the consumer holds a piece in the slot: it is freed when the consumer releases it
            self._orphans[head] = slot
            slot = None
        self._finish(finished, head, self._decoded(tasks[head], slot, reason))
        for i, other_slot in rest:
            self._free.put(other_slot)
            heapq.heappush(waiting, (i, tasks[i]))
        self._spawn(wid)


def default_workers(device_type: str) -> int:
    """All cores but one decode for a GPU; on a CPU the model needs the cores, and decoding is cheap beside it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1) if device_type == "cuda" else max(1, cores // 8)
