"""Run a function in a child process with a memory and a time limit, and get its result back.

Parsing an uploaded file is the one step whose cost the uploader controls: a 1.5 MB PDF whose content stream inflates
to 1.5 GB pushed a worker from 0.7 to 3.2 GB, and one that kills its worker was redelivered for ever. In a child, the
worst such a file can do is end that child. Any parser works here (PDF today, other formats later): the function
is named by its module and qualified name, imported afresh in the child, and its return value and exceptions come
back pickled. No Django in here: the child starts quickly and only imports the function's module.

The child is a new interpreter (not a fork): the workers and web processes that call this hold threads and locks a
fork would copy in a half-held state. It sets its own limits (RLIMIT_AS, RLIMIT_CPU) before importing anything.
"""

from __future__ import annotations

import importlib
import pickle
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")


class BoundedProcessFailed(Exception):
    """The function did not return: the child ran out of memory or time, or died."""


class MemoryLimitExceeded(BoundedProcessFailed):
    pass


class TimeLimitExceeded(BoundedProcessFailed):
    pass


class ChildProcessDied(BoundedProcessFailed):
    """Ended without an answer (killed by a signal, or the native code under it aborted: often memory again)."""


def run_in_bounded_process(
    function: Callable[..., Result],
    *arguments: Any,
    memory_limit_bytes: int,
    time_limit_seconds: float,
) -> Result:
    """`function(*arguments)` in a child process limited to `memory_limit_bytes` of address space and
    `time_limit_seconds` of wall-clock time. Returns its result or raises what it raised (both must pickle); raises
    MemoryLimitExceeded, TimeLimitExceeded or ChildProcessDied when it could not finish."""
    request = pickle.dumps((function.__module__, function.__qualname__, arguments, memory_limit_bytes))
    try:
        completed = subprocess.run(
            [sys.executable, "-m", __name__, str(int(time_limit_seconds) + 1)],
            input=request,
            capture_output=True,
            timeout=time_limit_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:  # subprocess.run has killed the child
        raise TimeLimitExceeded(f"{function.__qualname__} took longer than {time_limit_seconds:g} s") from None
    if completed.returncode != 0 or not completed.stdout:
        stderr = completed.stderr.decode(errors="replace")[-500:]
        if "MemoryError" in stderr:
            raise MemoryLimitExceeded(f"{function.__qualname__} needed more than {memory_limit_bytes:,} bytes")
        raise ChildProcessDied(f"{function.__qualname__} ended with exit status {completed.returncode}: {stderr}")
    outcome, value = pickle.loads(completed.stdout)
    if outcome == "returned":
        return value
    if isinstance(value, MemoryError):
        raise MemoryLimitExceeded(f"{function.__qualname__} needed more than {memory_limit_bytes:,} bytes")
    raise value


def _child(cpu_seconds: int) -> None:
    module_name, qualified_name, arguments, memory_limit_bytes = pickle.loads(sys.stdin.buffer.read())
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    # CPU time too, in case the parent's wall-clock kill never comes (the parent itself died).
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    target: Any = importlib.import_module(module_name)
    for name in qualified_name.split("."):
        target = getattr(target, name)
    try:
        outcome = ("returned", target(*arguments))
    except Exception as error:  # whatever it raised goes back to the caller, who decides what it means
        outcome = ("raised", error)
    try:
        answer = pickle.dumps(outcome)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        answer = pickle.dumps(("raised", RuntimeError(f"{qualified_name}: unpicklable outcome: {error!r}")))
    sys.stdout.buffer.write(answer)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _child(int(sys.argv[1]))
