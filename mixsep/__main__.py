import signal
import sys

from .cli import main

# A file name that is not UTF-8 (bytes Python keeps as surrogates) is printed back as the same bytes, not as
# a UnicodeEncodeError after the outputs were written: a UTF-8 locale's stdout is strict by default.
if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(errors="surrogateescape")
code = main(restore_signals=False)  # it ends on the defaults below, not on Python's own SIGINT handler
# The command is done and has saved what it made. A Ctrl-C while the interpreter shuts down raised
# KeyboardInterrupt inside an exit callback (torch's, tqdm's): a traceback, and exit 0. From here on a Ctrl-C
# or SIGTERM ends the process at once, as the operating system does by default, with no traceback.
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_DFL)
sys.exit(code)
