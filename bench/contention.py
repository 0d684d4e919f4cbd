"""Training beside other work: how the trainer's OpenMP threads wait decides what sharing the cores costs.

    python bench/contention.py [--model faithful] [--rounds 4] [--steps 8] [--json OUT]

torch runs each operation on its threads (OpenMP, GNU libgomp in the pip wheels) and they meet
at a barrier when it ends. libgomp's default lets a thread that arrives first spin for about
300,000 pause loops before it sleeps. Alone on the machine that is the quickest hand-over;
with one more runnable process than cores, the spinning thread holds a core that the late
thread, or the other process, needs. ``OMP_WAIT_POLICY=PASSIVE`` sleeps at once.

Each measurement is a fresh child process training ``--model`` (random 32x32 batches of
``--batch-size``, Adam, the two-head MSE: the step's compute does not depend on the pixels)
for ``--steps`` timed steps after 3 untimed ones, its environment naming the wait policy:

- ``spin``: ``GOMP_SPINCOUNT=300000``, libgomp's own default (torch's behaviour before mixsep
  chose one);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, what mixsep sets unless the user set either.

and one of three neighbours on the same cores:

- ``alone``;
- ``browser``: a process that computes for 12 ms every 200 ms (0.06 of a core: what headless
  Chromium took with the Train page open, bench/dashboard_bench.py);
- ``trainer``: a second training child of the same model and policy (two runs at once, or a
  test suite beside a run).

Rounds alternate the order of the six cells; figures are medians over rounds, so only ratios
measured side by side mean anything. The last line:
contention: passive_vs_spin_alone=.. passive_vs_spin_browser=.. passive_vs_spin_trainer=.. browser_overhead_spin=.. browser_overhead_passive=..
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import add_json_flags, at_least, json_output, one_sentence  # noqa: E402

from mixsep import MixsepError  # noqa: E402
from mixsep.model import MODELS  # noqa: E402

POLICIES = {"spin": {"GOMP_SPINCOUNT": "300000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
            "short": {"GOMP_SPINCOUNT": "30000"}}  # what libgomp itself spins when threads outnumber CPUs
NEIGHBOURS = ("alone", "browser", "trainer")
BURST_S, PERIOD_S = 0.012, 0.2
MAX_BATCH = 4096  # the figures are ratios: larger batches only take a child gigabytes and minutes a step

TRAINER = r"""
import os, sys, time
import torch, torch.nn.functional as F
from mixsep.model import build_model
model_name, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = build_model(model_name, pretrained=False)
opt = torch.optim.Adam(model.parameters(), 1e-3)
mean = torch.rand(batch, 3, 32, 32)
def step():
    a, b = model(mean)
    loss = F.mse_loss(a, mean) + F.mse_loss(b, mean)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(3):
    step()
start, parent = time.perf_counter(), os.getppid()
for _ in range(steps if steps > 0 else 10**9):
    step()
    if os.getppid() != parent:  # a neighbour outlives no bench
        break
print(batch * steps / (time.perf_counter() - start), flush=True)
"""

BROWSER = r"""
import sys, time
burst, period = float(sys.argv[1]), float(sys.argv[2])
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < burst:
        pass
    time.sleep(period - burst)
"""


def child_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy], PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def measure(model: str, batch: int, steps: int, policy: str, neighbour: str) -> float:
    """samples/s of one trainer child with ``neighbour`` beside it."""
    env = child_env(policy)
    side = None
    if neighbour == "browser":
        side = subprocess.Popen([sys.executable, "-c", BROWSER, str(BURST_S), str(PERIOD_S)])
    elif neighbour == "trainer":  # trains until killed
        side = subprocess.Popen([sys.executable, "-c", TRAINER, model, str(batch), "0"], env=env,
                                stdout=subprocess.DEVNULL)
    try:
        out = subprocess.run([sys.executable, "-c", TRAINER, model, str(batch), str(steps)], env=env,
                             capture_output=True, text=True)
    finally:
        if side is not None:
            side.kill()
            side.wait()
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise MixsepError(f"The trainer child failed (exit {out.returncode}): {said.rstrip('.')}.")
    return float(out.stdout.strip())


@one_sentence
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="faithful", choices=sorted(MODELS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--neighbour", action="append", choices=NEIGHBOURS, default=[],
                   help="measure only these neighbours (repeat; default: all three)")
    p.add_argument("--policy", action="append", choices=sorted(POLICIES), default=[],
                   help="wait policies to compare (repeat; default: spin and passive)")
    add_json_flags(p, "every measurement")
    args = p.parse_args(argv)
    for flag in ("batch_size", "steps", "rounds"):
        at_least(f"--{flag.replace('_', '-')}", getattr(args, flag))
    if args.batch_size > MAX_BATCH:
        raise MixsepError(f"--batch-size must be at most {MAX_BATCH} (got {args.batch_size}): the figures are "
                          "ratios, and a larger batch only makes each child slower; choose a smaller one.")
    json_out = json_output(args.json, args.overwrite, suffix=".json")  # before the rounds, not after them
    neighbours = [n for n in NEIGHBOURS if n in args.neighbour] or list(NEIGHBOURS)
    policies = [p_ for p_ in POLICIES if p_ in args.policy] or ["spin", "passive"]
    if "spin" not in policies:
        raise MixsepError("--policy must include spin, the baseline the others are compared with.")
    cells = [(p_, n) for n in neighbours for p_ in policies]
    got: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
    print(f"{args.model}, batch {args.batch_size}, {args.steps} timed steps per child, {os.cpu_count()} CPUs "
          f"({len(os.sched_getaffinity(0))} usable); samples/s per round:", flush=True)
    for r in range(args.rounds):
        for cell in (cells if r % 2 == 0 else cells[::-1]):
            got[cell].append(measure(args.model, args.batch_size, args.steps, *cell))
        print(f"  round {r + 1}: " + "  ".join(f"{p_}/{n} {got[(p_, n)][-1]:.1f}" for p_, n in cells), flush=True)
    med = {c: statistics.median(v) for c, v in got.items()}
    others = [p_ for p_ in policies if p_ != "spin"]
    print(f"{'neighbour':10s} " + " ".join(f"{p_:>9s}" for p_ in policies) + "".join(f" {p_ + '/spin':>13s}" for p_ in others))
    for n in neighbours:
        print(f"{n:10s} " + " ".join(f"{med[(p_, n)]:9.1f}" for p_ in policies)
              + "".join(f" {med[(p_, n)] / med[('spin', n)]:12.2f}x" for p_ in others))
    res = {f"{p_}_vs_spin_{n}": med[(p_, n)] / med[("spin", n)] for p_ in others for n in neighbours}
    if {"alone", "browser"} <= set(neighbours):
        for pol in policies:
            res[f"browser_overhead_{pol}"] = 1 - med[(pol, "browser")] / med[(pol, "alone")]
    if json_out:
        from mixsep.run import write_json
        write_json(json_out, {"command": "python " + " ".join(sys.argv), "model": args.model,
                              "batch_size": args.batch_size, "steps": args.steps,
                              "samples_per_s": {f"{p_}/{n}": v for (p_, n), v in got.items()}, **res})
    print("contention: " + " ".join(f"{k}={v:.3f}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
