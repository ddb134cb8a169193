"""Worker processes: a trial runs in a child that cannot take the sweep down with it.

A worker imports torch & co. once (~10 s on a GPU host) and then runs trials sent over a pipe.
So that no allocator state from one trial leaks into the next, a worker goes on after a trial
only when the caching allocator is back, segment for segment and block for block, in the state
its model's load left (trial.ModelSlot.restore: checked after every trial that fit or ran out
of memory); it then keeps the model for the next trial of that model. Any other outcome
(an error, a crash, an allocator that did not come back) discards the worker, and so does a
trial of another model (a worker loads one model in its life). Segfaults, aborts
and the OS killing the worker show up as a dead pipe; hangs as a timeout, after which the
worker is killed. A spare worker can be started in the background so that replacing one costs
no import time (and, asked to, its CUDA context: no allocator memory), and it can load the
model of a trial still to come (a preload), so that a change of model costs no load either.

Test hook: QLORA_BENCH_INJECT="<substring of trial_key>:<fault>[,...]" makes the worker fail on
matching trials; "tokens>N:<fault>" matches trials with batch x seq above N (a simulated memory
limit for CPU tests of boundary search). Faults: oom (a real allocation far past the device),
segfault, abort, hang, raise, sigkill (the worker kills itself, as the OS's OOM killer would),
nan (the model's embeddings output inf, so the loss is not finite, as in an fp16 overflow),
unclean (after the trial the allocator is taken not to be back in its state after the load).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time

from bench.spec import model_key


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


BAD_FORK_EXIT = 3
FAULTS = ("oom", "segfault", "abort", "hang", "raise", "sigkill", "nan", "unclean")


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the sweep dies, so no orphan keeps the GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _inject(spec: dict, device: str) -> dict:
    """Fail as QLORA_BENCH_INJECT asks for this trial; returns the spec (with `inject` set for
    faults the trial itself carries out: nan)."""
    rules = os.environ.get("QLORA_BENCH_INJECT", "")
    for item in filter(None, rules.split(",")):
        needle, _, fault = item.rpartition(":")
        if needle.startswith("tokens>"):  # a simulated memory limit: batch x seq above N
            hit = spec["batch_size"] * spec["seq_len"] > int(needle[len("tokens>") :])
        else:
            hit = bool(needle) and needle in spec["key"]
        if hit:
            key = spec["key"]
            if fault == "oom":
                import torch

                torch.empty(2**60, dtype=torch.uint8, device=device)
            elif fault == "segfault":
                import ctypes

                ctypes.string_at(0)
            elif fault == "abort":
                os.abort()
            elif fault == "hang":
                time.sleep(10**6)
            elif fault == "raise":
                raise RuntimeError(f"injected failure for {key}")
            elif fault == "sigkill":  # the OS's OOM killer, or a user's kill -9
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault in ("nan", "unclean"):  # carried out by the trial / after it
                spec = {**spec, "inject": fault}
    return spec


def _runtime_info(device: str) -> dict:
    import torch

    info = {"cuda": torch.version.cuda or ""}
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(
            gpu_name=props.name,
            gpu_compute_capability=f"{props.major}.{props.minor}",
            gpu_total_gib=props.total_memory / 2**30,
        )
    return info


def worker_main(conn) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the sweep stops and kills its workers; a worker
    # must not turn it into a failed trial's row first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    if torch.cuda._is_in_bad_fork():  # the zygote initialised CUDA: this process cannot use it
        os._exit(BAD_FORK_EXIT)
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import bitsandbytes  # noqa: F401  (import cost paid once, before the first trial)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from bench import trial

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    conn.send(("ready", os.getpid()))
    slot = trial.ModelSlot()  # the model kept from the last trial, for the next
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        if message[0] == "cuda":  # a spare: create the CUDA context now, not in its first trial
            torch.cuda.init()
            torch.cuda.synchronize()
            continue
        if message[0] == "preload":  # load the model of a trial still to come, nothing measured
            _, spec, plan, source = message
            try:
                trial.preload(spec, plan, source, slot)
                conn.send(("preloaded", {"status": "ok"}))
            except Exception as exc:
                status = "oom" if trial.is_oom(exc) else "error"
                conn.send(("preloaded", {"status": status, "reason": f"{type(exc).__name__}: {exc}"}))
                del exc
                slot.drop(plan["device"])
                trial.cleanup(plan["device"])
            continue
        if message[0] == "prepare":  # build a random-weight checkpoint, nothing measured
            _, name, config, device = message
            try:
                trial.random_weights_dir(name, config, device)
                conn.send(("result", {"status": "ok"}))
            except Exception as exc:
                conn.send(("result", {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}))
            finally:
                trial.cleanup(device)
            continue
        spec, plan, source, keep = (*message, False)[:4]
        device = plan["device"]
        row: dict = {}
        try:
            spec = _inject(spec, device)
            trial.measure(spec, plan, source, row, slot)
            if spec.get("workload", "step") != "step" and row.get("status") == "ok":
                keep = False  # the SFT run loaded and trained a model of its own
                trial.run_sft_workload(spec, plan, source, row)
        except BaseException as exc:  # classified into a row; the parent decides what is fatal
            _classify(exc, row, plan)
            del exc
        row.update(_runtime_info(device))
        if spec.get("inject") == "unclean":  # test hook: as if the allocator kept a segment more
            slot.baseline = ("unclean",)
        # Keep the model (after a fit or an OOM) only when the allocator is back in the state
        # the load left, block for block: then no allocator state leaks into the next trial.
        row[KEPT] = bool(keep and row.get("status") in ("ok", "oom") and slot.restore(device))
        conn.send(("result", row))  # before cleaning up: the parent may retire this worker
        if not row[KEPT]:
            slot.drop(device)
            trial.cleanup(device)


KEPT = "_kept"  # a row's note to the pool (never written): the worker kept its model, clean
HOST_FULL_GIB = 1.0


def _classify(exc: BaseException, row: dict, plan: dict) -> None:
    """An exception as a row. An OOM while the host GPU itself is nearly full is not the
    emulated card's limit (concurrent workers filled the host): an error, never a boundary."""
    from bench import trial

    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    row.update(status="oom" if trial.is_oom(exc) else "error", reason=f"{type(exc).__name__}: {first_line}")
    if plan["device"] != "cuda":
        return
    import torch

    row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    row["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if row["status"] == "oom" and plan["cap_gib"]:
        free_gib = torch.cuda.mem_get_info()[0] / 2**30
        if free_gib < HOST_FULL_GIB:
            row.update(
                status="error",
                reason=f"host GPU out of memory ({free_gib:.2f} GiB free), not the "
                f"{plan['cap_gib']} GiB cap: run fewer searches at once (--parallel)",
            )


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


class Worker:
    def __init__(self, method: str = "spawn"):
        ctx = _context(method)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.preloading: str | None = None  # model key of a preload sent to this worker
        self._preload_pending = False

    def wait_ready(self, timeout: float) -> None:
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.stop()
            raise RuntimeError(f"worker did not start within {timeout:.0f} s")
        try:
            kind, _ = self.conn.recv()
        except EOFError:
            self.process.join(5)
            if self.process.exitcode == BAD_FORK_EXIT:
                raise BadFork() from None
            raise RuntimeError(f"worker failed to start: {_death_reason(self.process.exitcode)}") from None
        assert kind == "ready"
        self.ready = True

    def preload(self, payload: tuple) -> None:
        """Have this (spare) worker load the model of `payload`'s trial now, before the trial."""
        spec, plan, source = payload[:3]
        self.conn.send(("preload", spec, plan, source))
        self.preloading, self._preload_pending = model_key(spec, plan, source), True

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
            kind, answer = self.conn.recv()
        except (EOFError, OSError):
            return False
        return kind == "preloaded" and answer["status"] == "ok"

    def run(self, payload: tuple, timeout: float) -> dict:
        self.conn.send(payload)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                return {"status": "timeout", "reason": f"no result within {timeout:g} s; worker killed"}
            if self.conn.poll(min(left, 1.0)):
                try:
                    _, row = self.conn.recv()
                    return row
                except (EOFError, OSError):
                    self.process.join(5)
                    return {"status": "error", "reason": _death_reason(self.process.exitcode)}
            if not self.process.is_alive():
                self.process.join(5)
                return {"status": "error", "reason": _death_reason(self.process.exitcode)}

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


class BadFork(RuntimeError):
    """A forked worker found CUDA already initialised in the zygote."""


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

    def __init__(self, spares: int = 0, startup_timeout: float = 600.0, cuda: bool = False):
        self.spares = spares
        self.startup_timeout = startup_timeout
        self.cuda = cuda
        self.method = _start_method()
        self._current: Worker | None = None
        self._holds: str | None = None  # model key of the current worker's model
        self._spare: list[Worker] = []
        self._coming: list[tuple[str, tuple]] = []  # (model key, payload) of the models to come

    def expect(self, payloads: list[tuple]) -> None:
        """The trials' models to come, in order, one payload each (the current one may lead):
        from the next run on, a spare loads the first of them the current worker does not
        hold. A spare holding a model not among them is stopped; [] stops every such spare."""
        self._coming = [(model_key(*p[:3]), p[:3]) for p in payloads]
        keys = {key for key, _ in self._coming}
        for worker in [w for w in self._spare if w.preloading not in (None, *keys)]:
            worker.stop(wait=False)
            self._spare.remove(worker)

    def run(self, payload: tuple, timeout: float) -> dict:
        key = None if isinstance(payload[0], str) else model_key(*payload)  # str: a command
        if self._current is not None and self._holds not in (None, key):
            self.retire()  # another model: another worker
        try:
            if self._current is None:
                self._current, self._holds = self._take(key, timeout), None
            worker = self._current
            worker.wait_ready(self.startup_timeout)
        except BadFork:
            self._fall_back_to_spawn()
            return self.run(payload, timeout)
        self._refill(key)
        row = worker.run(payload if key is None else (*payload, True), timeout)
        kept = row.pop(KEPT, False)
        if kept:
            self._holds = key
        elif key is not None or row.get("status") != "ok":
            worker.stop(wait=False)
            self._current = None
        return row

    def _take(self, key: str | None, timeout: float) -> Worker:
        """A worker for a trial of model `key`: the spare that preloaded it, else a spare that
        holds nothing, else a new one (spares preloading other models stay for them)."""
        for worker in [w for w in self._spare if key is not None and w.preloading == key]:
            self._spare.remove(worker)
            if worker.settle(self.startup_timeout, timeout):
                return worker
            worker.stop(wait=False)  # the preload failed: the trial loads in a clean worker
        for worker in [w for w in self._spare if w.preloading is None]:
            self._spare.remove(worker)
            return worker
        return Worker(self.method)

    def _refill(self, key: str | None) -> None:
        """Start spares up to `spares`; have one preload the next model to come after `key`."""
        keys = [k for k, _ in self._coming]
        if key in keys:
            self._coming = self._coming[keys.index(key) + 1 :]
        while len(self._spare) < self.spares:
            self._spare.append(Worker(self.method))
            if self.cuda:
                self._spare[-1].conn.send(("cuda",))
        coming = [(k, p) for k, p in self._coming if k != key]
        if not coming or any(w.preloading == coming[0][0] for w in self._spare):
            return
        idle = [w for w in self._spare if w.preloading is None]
        if idle:
            idle[0].preload(coming[0][1])

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
