"""The one exception type a user can cause.

Everything a user can get wrong (a path, a flag, a slider, a checkpoint) is
raised as a ``MixsepError`` carrying one sentence that says what is wrong and
what to do. The CLI prints that sentence instead of a stack trace; the
dashboard shows it with ``st.error``.
"""


class MixsepError(Exception):
    """A problem the user can fix; ``str(err)`` is the message to show."""
