"""The worker process's side: import once, then answer the parent's messages (bench.messages)
one at a time. A trial's outcome, whatever it is, goes back as a row; the parent (bench.pool)
decides whether this process goes on."""

from __future__ import annotations

import os
import signal

from bench import messages as msg

BAD_FORK_EXIT = 3
HOST_FULL_GIB = 1.0


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the sweep dies, so no orphan keeps the GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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


def worker_main(conn, gpu: int | None = None) -> None:
    from bench.gpus import pin

    pin(gpu)  # before anything initialises CUDA: this worker's only GPU (boundary --gpus)
    _die_with_parent()
    # Ctrl-C reaches the whole process group (and so may SIGTERM: `docker stop`, `kill -TERM
    # -PGID`): the sweep stops and kills its workers; a worker must not turn it into a failed
    # trial's row first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
    conn.send(msg.Ready(os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")))
    slot = trial.ModelSlot()  # the model kept from the last trial, for the next
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        if isinstance(message, msg.InitCuda):
            torch.cuda.init()
            torch.cuda.synchronize()
        elif isinstance(message, msg.Preload):
            conn.send(_preload(message.request, slot))
        elif isinstance(message, msg.PrepareWeights):
            conn.send(_prepare(message))
        else:
            _run_trial(message, slot, conn)


def _preload(request: msg.TrialRequest, slot) -> msg.Preloaded:
    from bench import qlora, trial

    try:
        trial.preload(request, slot)
        return msg.Preloaded(True)
    except Exception as exc:
        reason = f"{'oom' if qlora.is_oom(exc) else 'error'}: {type(exc).__name__}: {exc}"
        del exc
        slot.drop(request.plan.device)
        qlora.cleanup(request.plan.device)
        return msg.Preloaded(False, reason)


def _prepare(message: msg.PrepareWeights) -> msg.Prepared:
    from bench import qlora

    try:
        qlora.random_weights_dir(message.name, message.config, message.device)
        return msg.Prepared(True)
    except Exception as exc:
        return msg.Prepared(False, f"{type(exc).__name__}: {exc}")
    finally:
        qlora.cleanup(message.device)


def _run_trial(request: msg.TrialRequest, slot, conn) -> None:
    from bench import faults, qlora, trial

    device = request.plan.device
    row: dict = {}
    keep = True
    carried = ""
    try:
        carried = faults.inject(request.spec, device)
        trial.measure(request, row, slot, carried)
        if request.spec.workload.kind != "step" and row.get("status") == "ok":
            from bench.workload import run_sft_workload

            keep = False  # the SFT run loaded and trained a model of its own
            run_sft_workload(request, row)
    except BaseException as exc:  # classified into a row; the parent decides what is fatal
        _classify(exc, row, request.plan)
        del exc
    row.update(_runtime_info(device))
    if carried == "unclean":  # test hook: as if the allocator kept a segment more
        slot.baseline = ("unclean",)
    # Keep the model (after a fit or an OOM) only when the allocator is back in the state
    # the load left, block for block: then no allocator state leaks into the next trial.
    kept = bool(keep and row.get("status") in ("ok", "oom") and slot.restore(device))
    conn.send(msg.TrialReply(row, kept))  # before cleaning up: the parent may retire this worker
    if not kept:
        slot.drop(device)
        qlora.cleanup(device)


def _classify(exc: BaseException, row: dict, plan) -> None:
    """An exception as a row. An OOM while the host GPU itself is nearly full is not the
    emulated card's limit (concurrent workers filled the host): an error, never a boundary."""
    from bench.qlora import is_oom

    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    row.update(status="oom" if is_oom(exc) else "error", reason=f"{type(exc).__name__}: {first_line}")
    if plan.device != "cuda":
        return
    import torch

    row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    row["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if row["status"] == "oom" and plan.cap_gib:
        free_gib = torch.cuda.mem_get_info()[0] / 2**30
        if free_gib < HOST_FULL_GIB:
            row.update(
                status="error",
                reason=f"host GPU out of memory ({free_gib:.2f} GiB free), not the "
                f"{plan.cap_gib} GiB cap: run fewer searches at once (--parallel)",
            )
