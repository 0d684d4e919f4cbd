"""`train --compile` on this machine: what compiling costs once against what it saves every step.

    python bench/compile.py --data-root ../shared/data [--model faithful] [--batch-size 128] [--cpu-bf16]
                            [--rounds 5] [--steps 4] [--json OUT]

It builds two `mixsep.train.Training` objects of one config, one with `compile` and one without (the
trainer the CLI, the dashboard and the sweeps run), each training into a scratch run folder, and reads
their steps side by side:
- the first step of each, alone: the compiled one's, less the eager median step, is the compile time
  (inductor's cache starts empty, as on a first run; a later run finds the kernels there and compiles in
  seconds);
- then alternating rounds of `--steps` steps each, eager and compiled, and each side's median samples/s.
Break-even is the compile time over the time a compiled step saves: a run longer than that many steps
finishes sooner with `--compile`. The last line is
`compile: model=.. speedup=.. compile_s=.. step_ms_eager=.. step_ms_compiled=.. break_even_steps=..`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import (add_json_flags, at_least, command_line, data_root, json_output, machine,  # noqa: E402
                      machine_line, one_sentence, set_threads, write_output)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--model", default="faithful", help="any model of `python -m mixsep info` (default faithful)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-size", type=int, default=2048, help="training pairs per epoch (default 2048)")
    p.add_argument("--cpu-bf16", action="store_true", help="both sides under bf16 autocast on the CPU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--steps", type=int, default=4, help="steps per side in a round (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    add_json_flags(p, "the figures")
    return p


def timed_steps(steps, n: int) -> float:
    """Seconds for the next ``n`` steps of a training generator."""
    t = time.perf_counter()
    for _ in range(n):
        next(steps)
    return time.perf_counter() - t


@one_sentence
def main(argv=None) -> int:
    return measure(build_parser().parse_args(argv))


def measure(args) -> int:
    for flag, value in (("--rounds", args.rounds), ("--steps", args.steps)):
        at_least(flag, value)
    at_least("--threads", args.threads, 0, "0 (torch's default) or more")
    data_root(args.data_root)
    args.json_out = json_output(args.json, args.overwrite, args.data_root)  # found now, not after minutes of measuring
    scratch = Path(tempfile.mkdtemp(prefix="mixsep-compile-bench-"))
    # empty, as on a machine's first compile: inductor's cache, and the precompiled headers torch keeps under the
    # temporary folder outside that cache (152 MB, which also made a second run's compile faster); all removed after
    saved_env = {name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TMPDIR")}
    os.environ.update(TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"), TMPDIR=str(scratch))
    tempfile.tempdir = None
    try:
        return _measure(args, scratch)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = None


def _measure(args, scratch: Path) -> int:
    import dataclasses

    from mixsep import TrainConfig
    from mixsep.data import load_pairs
    from mixsep.train import Training

    threads = set_threads(args.threads)
    print(f"command: {command_line()}")
    print(machine_line(machine(threads)))
    cfg = TrainConfig(data_root=str(Path(args.data_root).resolve()), model=args.model, pretrained=False,
                      batch_size=args.batch_size, train_size=args.train_size, epochs=10_000, device=args.device,
                      cpu_bf16=args.cpu_bf16, checkpoint_every=10**9, checkpoint_seconds=3600.0).validate()
    data = load_pairs(Path(cfg.data_root), "train", size=cfg.train_size, seed=cfg.seed)
    sides = {name: Training(dataclasses.replace(cfg, compile=name == "compiled"), scratch / name, data=data)
             for name in ("eager", "compiled")}
    gens = {name: t.steps() for name, t in sides.items()}
    try:
        return _rounds(args, sides, gens, threads)
    finally:  # before the scratch folder goes: each run writes its status as it closes
        for gen in gens.values():
            gen.close()


def _rounds(args, sides: dict, gens: dict, threads: int) -> int:
    first = {name: timed_steps(gen, 1) for name, gen in gens.items()}
    warned = sides["compiled"].run.warnings
    if warned:
        print(f"compile failed here, so the compiled side trained eager: {warned[-1]}")
    times = {name: [] for name in gens}
    for r in range(args.rounds):
        for name, gen in (gens.items() if r % 2 == 0 else reversed(gens.items())):
            times[name].append(timed_steps(gen, args.steps) / args.steps)
        print(f"  round {r + 1}: eager {times['eager'][-1] * 1e3:.0f} ms/step, "
              f"compiled {times['compiled'][-1] * 1e3:.0f} ms/step")
    step = {name: statistics.median(t) for name, t in times.items()}
    compile_s = max(0.0, first["compiled"] - step["eager"])
    saved = step["eager"] - step["compiled"]
    even = math.ceil(compile_s / saved) if saved > 0 else math.inf  # the steps from which it pays, one figure
    if warned:  # both sides trained eager: no figure of compiling to give
        compile_s = even = math.nan
    out = {"model": args.model, "batch_size": args.batch_size, "cpu_bf16": args.cpu_bf16, "threads": threads,
           "first_step_s": first, "step_s": step, "rounds_s": times, "compile_s": compile_s,
           "speedup": math.nan if warned else step["eager"] / step["compiled"], "break_even_steps": even,
           "command": command_line(), "machine": machine(threads), "compile_failed": warned[-1] if warned else None}
    if warned:
        print(f"{args.model}, batch {args.batch_size}: compiling failed, so there is nothing to measure")
    else:
        print(f"{args.model}, batch {args.batch_size}{', bf16' if args.cpu_bf16 else ''}: first step {first['eager']:.1f} s "
              f"eager, {first['compiled']:.1f} s compiled; then {step['eager'] * 1e3:.0f} ms eager, "
              f"{step['compiled'] * 1e3:.0f} ms compiled ({out['speedup']:.2f}x, median of {args.rounds} rounds of "
              f"{args.steps} steps); " + (f"compiling pays for runs longer than {even:,} steps"
                                          if math.isfinite(even) else "compiling never pays: a compiled step is not faster"))
    if args.json_out:
        write_output(args.json_out, json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    print(f"compile: model={args.model} speedup={out['speedup']:.3f} compile_s={compile_s:.1f} "  # nan: it failed
          f"step_ms_eager={step['eager'] * 1e3:.1f} step_ms_compiled={step['compiled'] * 1e3:.1f} "
          f"break_even_steps={even:.0f}")
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # the scratch folder goes then too
    sys.exit(main())
