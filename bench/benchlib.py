"""Helpers the bench scripts share: scoring lines, tables and settings."""
from __future__ import annotations

import argparse
import copy
import functools
import os
import shlex
import sys
from pathlib import Path

import mixsep  # noqa: F401  first, before torch: how its threads wait (mixsep.config.THREAD_WAIT)
import torch

from mixsep import MixsepError
from mixsep.cli import _not_a_data_file, new_output, not_empty
from mixsep.config import default_data_root
from mixsep.metrics import Evaluation


def one_sentence(main):
    """A bench script's ``main(argv)``: a MixsepError it raises is printed as one sentence and exit code 2; a main
    that returns nothing has exit code 0."""
    @functools.wraps(main)
    def run(argv=None) -> int:
        try:
            code = main(argv)
        except MixsepError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0 if code is None else code
    return run


def add_json_flags(p: argparse.ArgumentParser, what: str = "every figure") -> None:
    """--json FILE and --overwrite, as every bench script takes them (json_output checks them)."""
    p.add_argument("--json", default=None, help=f"also write {what} to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")


def at_least(flag: str, value: int, least: int = 1, meaning: str = "") -> None:
    """A count checked before any work: a zero or negative one crashed after it, or was read as the default."""
    if value < least:
        raise MixsepError(f"{flag} must be {meaning or f'at least {least}'} (got {value}).")


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads (0 keeps torch's default); returns the count in use."""
    at_least("--threads", threads, 0, "0 (torch's default) or more")  # a negative count was read as 0
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def given(parser: argparse.ArgumentParser, argv=None) -> set[str]:
    """The options the command line names (abbreviated or equal to the default too), by dest: a flag that a mode
    ignores is refused rather than dropped without a word."""
    shadow = copy.deepcopy(parser)
    for action in shadow._actions:
        action.default = argparse.SUPPRESS
    return set(vars(shadow.parse_args(argv)))


def refuse_with(parser: argparse.ArgumentParser, names: set[str], mode: str, why: str) -> None:
    """One sentence naming the flags given that ``mode`` does not use (``names``: dests from given())."""
    flags = [a.option_strings[-1] for a in parser._actions if a.dest in names and a.option_strings]
    if flags:
        raise MixsepError(f"{mode} {why}, so {', '.join(flags)} would be ignored; leave "
                          f"{'it' if len(flags) == 1 else 'them'} out.")


def data_root(path) -> Path:
    """--data-root as a Path; "" is refused (Path("") is the current folder, shown as ".")."""
    not_empty(str(path) if isinstance(path, Path) else path, "--data-root", "a folder")
    return Path(path)


def json_output(path: str | None, overwrite: bool, root=None, run: str | None = None, inputs=(),
                suffix: str | None = None, flag: str = "--json") -> Path | None:
    """An output file of a bench script, by the CLI's rules and before any measuring: never a run's own file, a
    sweep's journal, an SQLite database, an input or a data file under the data root (the default one when the
    script reads none); an existing file only with --overwrite; its folder must take a new file."""
    not_empty(path, flag, "a file")
    out = new_output(path, flag, overwrite, run, inputs, suffix)
    if out is not None:
        _not_a_data_file(Path(root if root is not None else default_data_root()), (out, flag))
    return out


def write_output(path: Path, text: str, flag: str = "--json") -> None:
    """The results, written at the end: a folder that filled up or went away meanwhile is one sentence, not a
    traceback (json_output probed it before the measurement)."""
    try:
        path.write_text(text)
    except OSError as e:
        raise MixsepError(f"{flag} {path} could not be written ({e.strerror or e.__class__.__name__}); "
                          f"the figures are above on standard output.") from None


def command_line() -> str:
    """The command that reproduces this run, for the tables in docs/benchmarks.md."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def best(ev: Evaluation, source: str) -> dict:
    """The recovery mode with the highest mean PSNR for a source: Evaluation.best, the one definition."""
    return ev.best(source)


def summary(ev: Evaluation) -> dict:
    m, c = best(ev, "mnist"), best(ev, "cifar")
    return {"mnist_psnr": m["psnr_mean"], "mnist_ssim": m["ssim_mean"], "mnist_ssim_valid": m["ssim_valid_mean"],
            "mnist_mode": m["mode"], "cifar_psnr": c["psnr_mean"], "cifar_ssim": c["ssim_mean"],
            "cifar_ssim_valid": c["ssim_valid_mean"], "cifar_mode": c["mode"]}


def summary_line(prefix: str, s: dict, minutes: float) -> str:
    return (f"{prefix}: mnist_psnr={s['mnist_psnr']:.2f} mnist_ssim={s['mnist_ssim']:.4f} "
            f"cifar_psnr={s['cifar_psnr']:.2f} cifar_ssim={s['cifar_ssim']:.4f} minutes={minutes:.2f}")


def table(ev: Evaluation) -> str:
    """Every mode's means and CIs; SSIM is torchmetrics' (the headline), SSIM_valid scikit-image's valid windows."""
    lines = [f"{'source':6s} {'mode':19s} {'PSNR dB':>8s} {'+-95%':>6s} {'SSIM':>7s} {'+-95%':>7s} "
             f"{'SSIM_valid':>10s} {'+-95%':>7s}"]
    for r in ev.rows:
        lines.append(f"{r['source']:6s} {r['mode']:19s} {r['psnr_mean']:8.2f} {r['psnr_ci95']:6.2f} "
                     f"{r['ssim_mean']:7.4f} {r['ssim_ci95']:7.4f} {r['ssim_valid_mean']:10.4f} {r['ssim_valid_ci95']:7.4f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the machine

# fp32 FMA units per core, a documented guess by instruction set (the CPU does not report it):
# - AVX-512 on Intel: 2 (Xeon Gold 6xxx / Platinum, Skylake-SP to Sapphire Rapids; many Silver and
#   Gold 5xxx parts have 1, where this peak is 2x too high);
# - AVX-512 on AMD (Zen 4): 512-bit instructions run on 256-bit pipes, so counted as AVX2;
# - AVX2 with FMA: 2 (Intel Haswell and later, AMD Zen 2 and later; Zen 1's pipes are 128 bits wide);
# - neither: SSE, 4 lanes, one multiply and one add a cycle, counted as one FMA unit.
FMA_UNITS = {"avx512": 2, "avx2": 2, "sse": 1}
FP32_LANES = {"avx512": 16, "avx2": 8, "sse": 4}


def _cpuinfo() -> list[dict]:
    """/proc/cpuinfo as one dict per logical CPU (empty where there is no such file)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return []
    cpus = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        cpus.append({k.strip(): v.strip() for k, v in fields.items()})
    return cpus


def _max_clock_ghz() -> tuple[float, str]:
    """(clock, where it came from): cpufreq's maximum when the kernel exposes it, else cpuinfo's 'cpu MHz'."""
    try:
        return int(open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read()) / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    for cpu in _cpuinfo():
        if "cpu MHz" in cpu:
            return float(cpu["cpu MHz"]) / 1e3, "cpuinfo 'cpu MHz'; a VM reports its base clock, turbo may run faster"
    return float("nan"), "unknown"


def machine(threads: int) -> dict:
    """CPU model, cores usable here, ISA and the theoretical fp32 FMA peak for ``threads`` threads.

    peak = clock x fp32 lanes x FMA units x 2 (a multiply-add is two FLOPs) x cores, with cores
    the physical cores the threads can occupy (two hyperthreads share one core's FMA units).
    """
    cpus = _cpuinfo()
    if not cpus:
        return {"cpu": "unknown", "threads": threads, "isa": "unknown", "peak_gflops": float("nan")}
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(len(cpus)))
    cores = {(c.get("physical id", "0"), c.get("core id", c.get("processor"))) for c in cpus
             if int(c.get("processor", -1)) in usable}
    flags = set(cpus[0].get("flags", "").split())
    amd = cpus[0].get("vendor_id") == "AuthenticAMD"
    isa = "avx512" if "avx512f" in flags and not amd else "avx2" if {"avx2", "fma"} <= flags else "sse"
    ghz, clock_from = _max_clock_ghz()
    used = min(threads, len(cores))
    peak = ghz * FP32_LANES[isa] * FMA_UNITS[isa] * 2 * used
    return {"cpu": cpus[0].get("model name", "unknown"), "threads": threads, "physical_cores": len(cores),
            "isa": isa + (" (AVX-512 counted as AVX2: 256-bit pipes)" if amd and "avx512f" in flags else ""),
            "clock_ghz": ghz, "clock_from": clock_from, "fp32_lanes": FP32_LANES[isa], "fma_units": FMA_UNITS[isa],
            "cores_used": used, "peak_gflops": peak}


def machine_line(m: dict) -> str:
    if m["isa"] == "unknown":
        return f"cpu: {m['cpu']}, {m['threads']} threads (no /proc/cpuinfo: no theoretical peak)"
    return (f"cpu: {m['cpu']}, {m['threads']} threads on {m['physical_cores']} physical cores, {m['isa']}; "
            f"theoretical fp32 FMA peak {m['clock_ghz']:.2f} GHz x {m['fp32_lanes']} lanes x {m['fma_units']} FMA units "
            f"x 2 x {m['cores_used']} cores = {m['peak_gflops']:.0f} GFLOP/s (clock: {m['clock_from']})")
