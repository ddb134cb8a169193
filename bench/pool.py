"""Worker processes, the parent's side: a trial runs in a child (bench.child) that cannot take
the sweep down with it.

A worker imports torch & co. once (~10 s on a GPU host) and then runs trials sent over a pipe.
So that no allocator state from one trial leaks into the next, a worker goes on after a trial
only when the caching allocator is back, segment for segment and block for block, in the state
its model's load left (trial.ModelSlot.restore: checked after every trial that fit or ran out
of memory); it then keeps the model for the next trial of that model. Any other outcome (an
error, a crash, an allocator that did not come back) discards the worker, and so does a trial
of another model (a worker loads one model in its life). Segfaults, aborts and the OS killing
the worker show up as a dead pipe; hangs as a timeout, after which the worker is killed. A spare
worker can be started in the background so that replacing one costs no import time (and, asked
to, its CUDA context: no allocator memory), and it can load the model of a trial still to come
(a preload), so that a change of model costs no load either.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time

from bench import messages as msg
from bench.child import BAD_FORK_EXIT, worker_main


def _start_method() -> str:
    """forkserver with the heavy imports preloaded (bench.zygote) on Linux; spawn elsewhere or
    when QLORA_BENCH_WORKER_START=spawn."""
    wanted = os.environ.get("QLORA_BENCH_WORKER_START", "forkserver")
    return "forkserver" if wanted == "forkserver" and sys.platform == "linux" else "spawn"


_CONTEXTS: dict[str, mp.context.BaseContext] = {}


def _context(method: str):
    if method not in _CONTEXTS:
        ctx = mp.get_context(method)
        if method == "forkserver":
            os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
            ctx.set_forkserver_preload(["bench.zygote"])
        _CONTEXTS[method] = ctx
    return _CONTEXTS[method]


def _death_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker died with {name}"
    return f"worker exited with code {exitcode}"


class BadFork(RuntimeError):
    """A forked worker found CUDA already initialised in the zygote."""


class WorkerStartFailed(RuntimeError):
    """A worker died or hung before it was ready: no trial ran in it (the pool starts another in
    its place once). A SIGKILL there comes from the kernel's OOM killer when host memory (not the
    GPU's) runs short, or from another process: on the H200, 5 workers of 8 Unsloth slots were
    killed so with host memory not short (docs/published-results.md)."""


class Worker:
    def __init__(self, method: str = "spawn", gpu: int | None = None):
        ctx = _context(method)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, gpu), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.preloading: str | None = None  # model identity of a preload sent to this worker
        self._preload_pending = False

    def wait_ready(self, timeout: float) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.stop()
            raise WorkerStartFailed(f"worker did not start within {timeout:.0f} s")
        try:
            ready = self.conn.recv()
        except EOFError:
            self.process.join(5)
            exitcode = self.process.exitcode
            self.stop()  # its pipe too, wherever the caller holds it (a spare, the current worker)
            if exitcode == BAD_FORK_EXIT:
                raise BadFork() from None
            reason = _death_reason(exitcode)
            if exitcode == -signal.SIGKILL:
                reason += " (the OOM killer if host memory ran short, or another process;"
                reason += " --parallel runs fewer slots)"
            raise WorkerStartFailed(f"worker failed to start: {reason}") from None
        assert isinstance(ready, msg.Ready)
        self.ready, self.visible_devices = True, ready.visible_devices

    def preload(self, request: msg.TrialRequest) -> None:
        """Have this (spare) worker load the model of `request` now, before the trial."""
        self.conn.send(msg.Preload(request))
        self.preloading, self._preload_pending = request.model, True

    def settle(self, startup_timeout: float, timeout: float) -> bool:
        """Wait for the worker to start and for a preload sent to it to end; False when the
        preload failed (the worker then holds no model and goes)."""
        self.wait_ready(startup_timeout)
        if not self._preload_pending:
            return True
        self._preload_pending = False
        if not self.conn.poll(timeout):
            return False
        try:
            answer = self.conn.recv()
        except (EOFError, OSError):
            return False
        return isinstance(answer, msg.Preloaded) and answer.ok

    def ask(self, message, timeout: float):
        """Send a message and wait for its answer; a dead or silent worker answers with a row
        of status error or timeout."""
        self.conn.send(message)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                return msg.TrialReply(
                    {"status": "timeout", "reason": f"no result within {timeout:g} s; worker killed"}
                )
            if self.conn.poll(min(left, 1.0)):
                try:
                    return self.conn.recv()
                except (EOFError, OSError):
                    self.process.join(5)
                    return msg.TrialReply({"status": "error", "reason": _death_reason(self.process.exitcode)})
            if not self.process.is_alive():
                self.process.join(5)
                return msg.TrialReply({"status": "error", "reason": _death_reason(self.process.exitcode)})

    def stop(self, wait: bool = True) -> None:
        """Kill the process; without `wait`, a thread reaps it while the caller goes on (the
        driver's teardown of a CUDA context takes a moment nobody needs to wait for)."""
        if self.process.is_alive():
            self.process.kill()
        if wait:
            self.process.join(10)
        else:
            threading.Thread(target=self.process.join, args=(10,), daemon=True).start()
        self.conn.close()


class WorkerPool:
    """Hands out a warm worker, and keeps it while its trials leave the allocator clean.

    A worker loads one model in its life. After each trial that fit or ran out of memory it
    frees all but the model and compares the caching allocator with its state right after the
    load, segment for segment and block for block (trial.ModelSlot.restore); when they are
    equal, the next trial of that model runs on it as on a fresh load. A trial of another model,
    an allocator that did not come back, or a trial that failed otherwise (error, crash,
    timeout) hands over to a new worker. `spares` workers start in the background (imports,
    and with `cuda` their CUDA context, which holds no allocator memory) so that one is ready;
    told which models come next (`expect`), a spare loads the next one while the current
    worker's trials run, so that a change of model costs no load.
    """

    def __init__(
        self, spares: int = 0, startup_timeout: float = 600.0, cuda: bool = False, gpu: int | None = None
    ):
        self.gpu = gpu  # every worker pinned to this GPU (bench.gpus); None: CUDA's default
        self.spares = spares
        self.startup_timeout = startup_timeout
        self.cuda = cuda
        self.method = _start_method()
        self._current: Worker | None = None
        self._holds: str | None = None  # model identity of the current worker's model
        self._spare: list[Worker] = []
        self._coming: list[msg.TrialRequest] = []  # the models to come, one request each

    def expect(self, requests: list[msg.TrialRequest]) -> None:
        """The trials' models to come, in order, one request each (the current one may lead):
        from the next run on, a spare loads the first of them the current worker does not
        hold. A spare holding a model not among them is stopped; [] stops every such spare."""
        self._coming = list(requests)
        models = {r.model for r in self._coming}
        for worker in [w for w in self._spare if w.preloading not in (None, *models)]:
            worker.stop(wait=False)
            self._spare.remove(worker)

    def run(self, request: msg.TrialRequest, timeout: float, fresh: bool = False) -> msg.TrialReply:
        """Run one trial; the reply's row holds its measurements or how it failed. `fresh`: in a
        worker that ran no trial before (a spare that preloaded the model, or a new one), with a
        spare preloading the model again for the next such trial."""
        model = request.model
        if self._current is not None and (fresh or self._holds not in (None, model)):
            self.retire()  # another model (or a fresh load asked for): another worker
        worker = self._ready_worker(model, timeout)
        self._refill(model, request if fresh else None)
        reply = worker.ask(request, timeout)
        if reply.kept:
            self._holds = model
        else:
            worker.stop(wait=False)
            self._current = None
        return reply

    def prepare(self, message: msg.PrepareWeights, timeout: float) -> msg.Prepared:
        """Build a random-weight checkpoint in a worker (which goes on to the next message)."""
        worker = self._ready_worker(None, timeout)
        answer = worker.ask(message, timeout)
        if isinstance(answer, msg.TrialReply):  # the worker died or hung
            answer = msg.Prepared(False, answer.row["reason"])
        if not answer.ok:
            self.retire()
        return answer

    def _ready_worker(self, model: str | None, timeout: float, retry: bool = True) -> Worker:
        """The current worker, ready; a worker that fails to start is replaced once (a second
        failure raises WorkerStartFailed: the caller gives up this pool)."""
        try:
            if self._current is None:
                self._current, self._holds = self._take(model, timeout), None
            self._current.wait_ready(self.startup_timeout)
            return self._current
        except BadFork:
            self._fall_back_to_spawn()
            return self._ready_worker(model, timeout, retry)
        except WorkerStartFailed as failed:
            self.retire()
            if not retry:
                raise
            print(f"qlora-bench: {failed}; starting another in its place", file=sys.stderr)
            return self._ready_worker(model, timeout, retry=False)

    def _take(self, model: str | None, timeout: float) -> Worker:
        """A worker for a trial of `model`: the spare that preloaded it, else a spare that
        holds nothing, else a new one (spares preloading other models stay for them)."""
        for worker in [w for w in self._spare if model is not None and w.preloading == model]:
            self._spare.remove(worker)
            if worker.settle(self.startup_timeout, timeout):
                return worker
            worker.stop(wait=False)  # the preload failed: the trial loads in a clean worker
        for worker in [w for w in self._spare if w.preloading is None]:
            self._spare.remove(worker)
            return worker
        return Worker(self.method, self.gpu)

    def _refill(self, model: str | None, again: msg.TrialRequest | None = None) -> None:
        """Start spares up to `spares`; have one preload the next model to come after `model`
        (`again`: this request's model first, for a fresh trial of it next)."""
        models = [r.model for r in self._coming]
        if model in models:
            self._coming = self._coming[models.index(model) + 1 :]
        while len(self._spare) < self.spares:
            self._spare.append(Worker(self.method, self.gpu))
            if self.cuda:
                self._spare[-1].conn.send(msg.InitCuda())
        coming = ([again] if again else []) + [r for r in self._coming if r.model != model]
        if not coming or any(w.preloading == coming[0].model for w in self._spare):
            return
        idle = [w for w in self._spare if w.preloading is None]
        if idle:
            idle[0].preload(coming[0])

    def _fall_back_to_spawn(self) -> None:
        print(
            "qlora-bench: forked workers found CUDA initialised; spawning fresh ones instead "
            "(slower start, same measurements)",
            file=sys.stderr,
        )
        for worker in self._spare:
            worker.stop()
        self._current, self._spare, self.method = None, [], "spawn"

    def retire(self) -> None:
        """Stop the current worker so the next trial runs in a fresh process."""
        if self._current is not None:
            self._current.stop(wait=False)
            self._current = None

    def kill(self) -> None:
        """SIGKILL every worker now, from another thread (Ctrl-C, SIGTERM): a trial in flight
        ends as a dead worker's row, which a stopped run does not record; the thread using the
        pool goes on to close it."""
        for worker in [self._current, *self._spare]:
            if worker is not None and worker.process.is_alive():
                worker.process.kill()

    def close(self, graceful: bool = True) -> None:
        """Stop every worker: asked to exit (up to 5 s each), or killed at once."""
        for worker in [self._current, *self._spare]:
            if worker is None:
                continue
            if graceful:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
                worker.process.join(5)
            worker.stop(wait=graceful)
        self._current, self._spare = None, []
