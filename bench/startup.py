"""What a command costs before it does anything: a cold `python -m mixsep ARGS`, timed at two source trees.

    python bench/startup.py --before /tmp/before -- separate RUN mix0.png mix1.png --out OUT [--rounds 4]

`--before` is another checkout of mixsep (`git clone -q . /tmp/before && git -C /tmp/before checkout -q REV`);
the other is this one. Each round runs the command once with each tree first on PYTHONPATH, alternating, in
fresh interpreters, and removes OUT (an `--out` folder, or a file after `--json`/`--markdown`) before each run
so that neither finds the other's files: an OUT that exists before the first round is refused, so what is
removed is only ever what an earlier round wrote. It prints every time, each tree's median and the ratio,
after/before: docs/benchmarks.md, "A cold `separate`", measured `separate` this way before and after
torchmetrics was imported only to score.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="python bench/startup.py --before DIR [--rounds N] -- MIXSEP_ARGS ...")
    p.add_argument("--before", required=True, help="the other checkout of mixsep (its root folder)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the mixsep command and its arguments, after --")
    return p


FLAGS = ("--out", "--json", "--markdown")


class ChildFailed(Exception):
    """The timed command failed: the sentence to print, and the exit code to pass on."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _option(token: str, options) -> str | None:
    """The option a command-line token names, as argparse reads it: in full, or abbreviated to a unique prefix."""
    if not token.startswith("--"):
        return None
    name = token.split("=", 1)[0]
    found = [o for o in options if o.startswith(name)]
    return name if name in options else found[0] if len(found) == 1 else None


def outputs(command: list[str]) -> list[tuple[str, Path]]:
    """What the command writes, to remove before each run: (flag, value) of --out, --json and --markdown, also
    as `--flag=value` and abbreviated (`--ou`), which mixsep's parser takes too."""
    from mixsep.cli import build_parser

    commands = next((a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)), {})
    sub = commands.get(command[0]) if command else None
    options = list(sub._option_string_actions) if sub is not None else list(FLAGS)
    named = []
    for i, token in enumerate(command):
        flag = _option(token, options)
        if flag in FLAGS and "=" in token:
            named.append((flag, token.split("=", 1)[1]))
        elif flag in FLAGS and i + 1 < len(command):
            named.append((flag, command[i + 1]))
    return [(flag, Path(value)) for flag, value in named]


def timed(tree: Path, command: list[str]) -> float:
    for _, out in outputs(command):  # main refused any that existed before the first round: this is a round's
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    # -P: the working folder is not put first on sys.path (`python -m` does so), or a run from a checkout would
    # import that checkout's mixsep at both trees
    done = subprocess.run([sys.executable, "-P", "-m", "mixsep", *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1].removeprefix("error: ")
        raise ChildFailed(f"error: `mixsep {' '.join(command)}` failed at {tree} (exit {done.returncode}): {tail}",
                          done.returncode)
    return seconds


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    before = Path(args.before).resolve()
    if not command:
        print("error: give the mixsep command to time after --, such as -- separate RUN mix.png --out OUT.",
              file=sys.stderr)
        return 2
    if not (before / "mixsep" / "__main__.py").is_file():
        print(f"error: {before} is not a checkout of mixsep (no mixsep/__main__.py in it).", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"error: --rounds must be at least 1 (got {args.rounds}).", file=sys.stderr)
        return 2
    for flag, out in outputs(command):  # each round removes it: never a file or folder that was there before
        if out.exists() or out.is_symlink():
            print(f"error: {flag} {out} exists already, and startup.py removes what the command wrote there before "
                  "each round; move it away or name a new path.", file=sys.stderr)
            return 2
    times = {"before": [], "after": []}
    try:
        for r in range(args.rounds):
            for name, tree in (("before", before), ("after", HERE)):
                times[name].append(timed(tree, command))
                print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    except ChildFailed as e:
        print(e, file=sys.stderr)
        return 2 if e.code == 2 else 1  # the command refused its input (a user's mistake), or it failed
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"median: before {medians['before']:.2f} s, after {medians['after']:.2f} s")
    print(f"startup: after/before={medians['after'] / medians['before']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
