"""A helper process that export work runs in: started on first use, reused, replaced after a crash.

Two kinds of export work never run in the user's process: OpenVINO's converter (native code that
can crash, see `openvino.py`) and, on a backend other than TensorFlow, writing the SavedModel (it
needs Keras on the TensorFlow backend, fixed per process at `import keras`, see `saved_model.py`).
Each runs in a `JobProcess`: a Python program that reads one JSON job per line on stdin and answers
one JSON line per job on its original stdout (whatever else it prints goes to stderr, so it never
mixes with the replies). The program is started on the first job and kept for the next ones, so its
start-up (Python, its imports) is paid once per user process; when it dies during a job, the job
raises the error the owner chose and the next job starts a new process.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

__all__ = ["JobProcess", "SERVE_LOOP", "describe_exit"]

#: The loop a job program runs after its imports: `handle(job) -> dict` is defined before it. Its
#: replies go to the original stdout; the program's own output (and its libraries') to stderr.
SERVE_LOOP = r"""
for line in sys.stdin:
    job = json.loads(line)
    try:
        reply = {"ok": True, **(handle(job) or {})}
    except Exception as err:
        reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""

#: The start of every job program: replies on a duplicate of stdout, stdout sent to stderr.
PROLOGUE = r"""
import json, os, sys
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
"""


def describe_exit(code: int | None) -> str:
    """`killed by signal SIGSEGV` or `exit status 1`: how a process ended."""
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class JobProcess:
    """One reusable helper process running `program` (one job at a time).

    Args:
        program: the Python code of the process, after `PROLOGUE`: its imports, then a `handle(job)`
            function and `SERVE_LOOP`; or a function returning it, read each time a process starts.
        on_crash: `fn(exit_code, source) -> Exception`: what a job raises when the process ended
            without answering.
        env: extra environment variables of the process (None values remove a variable), or a
            function returning them, called each time a process starts.
    """

    def __init__(self, program: str | Callable[[], str], on_crash: Callable[[int | None, str], Exception],
                 env: dict | Callable[[], dict] | None = None):  # fmt: skip
        self.program = program
        self.on_crash = on_crash
        self.env = env
        self.process = None
        self.lock = threading.Lock()
        atexit.register(self.close)

    def _start(self):
        if self.process is None or self.process.poll() is not None:
            env = dict(os.environ)
            extra = self.env() if callable(self.env) else (self.env or {})
            for key, value in extra.items():
                if value is None:
                    env.pop(key, None)
                else:
                    env[key] = value
            program = self.program() if callable(self.program) else self.program
            self.process = subprocess.Popen(
                [sys.executable, "-c", PROLOGUE + program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
            )
        return self.process

    def run(self, job: dict, source: str) -> dict:
        """Sends `job`, waits for the reply and returns it (`{"ok": bool, ...}`).

        Raises:
            Exception: `on_crash(exit_code, source)` when the process ended without answering.
        """
        with self.lock:
            process = self._start()
            try:
                process.stdin.write(json.dumps(job) + "\n")
                process.stdin.flush()
                line = process.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                code = process.wait()
                self.process = None
                raise self.on_crash(code, source)
        return json.loads(line)

    def close(self):
        """Ends the process (at interpreter exit)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                process.stdin.close()
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()
