"""The one exception type a user can cause.

Everything a user can get wrong (a path, a flag, a slider, a checkpoint) is
raised as a ``MixsepError`` carrying one sentence that says what is wrong and
what to do. The CLI prints that sentence instead of a stack trace; the
dashboard shows it with ``st.error``.
"""
import contextlib
import numbers


class MixsepError(Exception):
    """A problem the user can fix; ``str(err)`` is the message to show."""


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))} | {0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t"}


def one_line(text: str) -> str:
    """``text`` with its control characters written out (a newline as \\n, ESC as \\x1b): a message that quotes a
    file named with a newline ran over two lines, and an ESC in a name recoloured the user's terminal."""
    return text.translate(_CONTROL)


def check_count(name: str, value, low: int) -> None:
    """Refuse, in one sentence, a count or batch size of the Python API that is not a whole number (Python's or
    numpy's; not a bool) of at least ``low``; a low of 0 means every pair."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise MixsepError(f"{name} must be a whole number of at least {low}{' (0: every pair)' if low == 0 else ''} "
                          f"(got {value!r}).")


def os_error_in(e: BaseException | None, errnos: tuple[int, ...] | None = None) -> OSError | None:
    """``e`` or the OSError it was raised while handling (of one of ``errnos``, when given), eight links deep at
    most: torch.save's zip writer meets a full disk with OSError, and its __exit__ then raises
    RuntimeError("unexpected pos ...") over it; torchvision's downloads wrap a read-only disk's."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and (errnos is None or e.errno in errnos):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


class MissingCheckpoint(MixsepError):
    """A checkpoint named (by --checkpoint, or as a path to read) that is not there."""

    def __init__(self, path):
        super().__init__(f"Checkpoint {path} does not exist.")


class ResumeRefused(MixsepError):
    """A run that cannot resume as it is (its last checkpoint, or the data it would read): found before anything
    was written, so the run is left as it was."""


def _dropped_interrupt_asked_again(previous):
    """A sys.unraisablehook: a stop its signal handler raised where Python cannot raise (inside a weakref callback
    of an import's lock, say: "Exception ignored in: <function _get_module_lock.<locals>.cb>", a traceback, and the
    Ctrl-C lost) is asked again with a real signal, which lands where the command takes it."""
    import os
    import signal
    import threading

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            if EARLY_SIGNALS:  # a stop in start-up, recorded as well as raised: the command raises it where it can
                return
            # sent a moment later, from a thread: sent here, its handler ran inside this hook, which Python
            # cannot raise from either ("Exception ignored in sys.unraisablehook")
            again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM if isinstance(
                unraisable.exc_value, Terminated) else signal.SIGINT))
            again.daemon = True
            again.start()
            return
        previous(unraisable)
    return hook


@contextlib.contextmanager
def interrupts_never_dropped():
    """While a command runs: see _dropped_interrupt_asked_again."""
    import sys

    previous = sys.unraisablehook
    sys.unraisablehook = _dropped_interrupt_asked_again(previous)
    try:
        yield
    finally:
        sys.unraisablehook = previous


class SecondInterrupt(KeyboardInterrupt):
    """A second Ctrl-C: quit at once (the first one asked to finish the step and stop)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM to a command that trains nothing (evaluate, grid, separate, info, download): it stops as at a
    Ctrl-C, removing what it had half written, where the default action killed it with its temp files left."""


class StoppedBeforeTraining(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a trainer still builds its model or loads its data: no step to finish."""


# Signals a command was sent before its own handler was in place (train's and sweep's start-up handler records
# them as well as raising): Python drops an exception raised inside a callback it cannot pass it out of (an
# import lock's weakref callback, a gc callback), and a Ctrl-C while torch loaded then went on to train.
EARLY_SIGNALS: list[int] = []


def make_folder(path, what: str, is_a_file: str):
    """``path`` as a folder, made if missing: ``is_a_file`` (a sentence) when a file is there, one
    sentence naming ``what`` ("the run folder", "the data root") when it cannot be made."""
    from pathlib import Path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MixsepError(is_a_file)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MixsepError(f"Cannot create {what} {path} ({e.strerror}); choose a writable place.") from None
    return path


def unreachable(path) -> str:
    """Why no file system call can take ``path``, in a clause ("is a link that leads back to itself", "has a name
    too long for the file system"), or '' when one can (the path may still be missing)."""
    import errno
    from pathlib import Path

    try:
        Path(path).resolve()
        Path(path).exists()  # raises for a name too long; resolve() does not
    except RuntimeError:  # pathlib's resolve() of a link that leads back to itself (Python 3.11)
        return "is a link that leads back to itself"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a link that leads back to itself"
        if e.errno == errno.ENAMETOOLONG:
            return "has a name too long for the file system"
        return f"cannot be reached ({e.strerror or e.__class__.__name__})"
    return ""


def network_timeout_seconds() -> float:
    """MIXSEP_NETWORK_TIMEOUT (default 60), or one sentence when it is not a number of seconds a socket takes."""
    import math
    import os

    given = os.environ.get("MIXSEP_NETWORK_TIMEOUT") or "60"
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 86400:  # nan, inf and the rest: socket takes no timeout past a time_t
        raise MixsepError(f"MIXSEP_NETWORK_TIMEOUT={given} is not a number of seconds in (0, 86400]; set it to "
                          "one, or unset it for the default, 60.")
    return seconds


@contextlib.contextmanager
def network_timeout():
    """A context in which a download gives up on a server that stops answering: urllib (which
    torchvision's and torch.hub's downloaders use) waits for ever by default, and a trainer stuck
    there cannot reach the step at which it would stop. MIXSEP_NETWORK_TIMEOUT seconds (default 60)
    per connect or read."""
    import socket

    seconds = network_timeout_seconds()
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)
