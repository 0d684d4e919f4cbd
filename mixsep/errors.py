"""The one exception type a user can cause.

Everything a user can get wrong (a path, a flag, a slider, a checkpoint) is
raised as a ``MixsepError`` carrying one sentence that says what is wrong and
what to do. The CLI prints that sentence instead of a stack trace; the
dashboard shows it with ``st.error``.
"""


class MixsepError(Exception):
    """A problem the user can fix; ``str(err)`` is the message to show."""


class SecondInterrupt(KeyboardInterrupt):
    """A second Ctrl-C: quit at once (the first one asked to finish the step and stop)."""


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
