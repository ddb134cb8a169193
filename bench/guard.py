"""How a command ends: a usage error is its message and exit 2, Ctrl-C exit 130, SIGTERM exit 143
(`timeout`, `docker stop`, a batch system's time limit), each with what was finished recorded."""

from __future__ import annotations

import signal
import sys
import threading

import click

from bench.errors import BenchUsageError

EXIT_USAGE = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `docker stop`, a batch system's time limit), raised where Ctrl-C's
    KeyboardInterrupt is, so that it stops a command the same way: every finished trial recorded,
    a boundary run's line written and its lock released (the workers ignore both signals)."""


def _terminate(signum, frame):
    raise Terminated


def guard(run):
    """Run a command: a usage error is its message and exit 2, Ctrl-C exit 130, SIGTERM exit
    143 (even while torch & co. are still importing)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = run()
    except BenchUsageError as exc:
        click.echo(f"qlora-bench: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except Terminated:
        click.echo("qlora-bench: terminated (SIGTERM); every finished trial is recorded", err=True)
        sys.exit(143)
    except KeyboardInterrupt:
        click.echo("qlora-bench: interrupted; every finished trial is recorded", err=True)
        sys.exit(130)
    sys.exit(code or 0)
