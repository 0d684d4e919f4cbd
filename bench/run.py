"""Speed, measured side by side in one run: every figure is a ratio of loops timed in alternation.

    python bench/run.py --data-root ../shared/data [--quick] [--profile] [--compile] [--dashboard]

0. The machine: CPU model, threads, and the theoretical fp32 FMA peak (clock x vector width x
   FMA units x cores; benchlib.machine documents the guess of FMA units per instruction set),
   printed beside the measured matmul peak.
1. Training throughput of the faithful model, loops in alternating rounds: mixsep (the
   Training.steps generator: uint8 index gathers, whole-batch mixing, CSV row), the bare step
   on ready float tensors in the default form, in the other form of the decoders (grouped
   pass or apart: mixsep.model.decode_pair) and with every tap of the encoder's convolutions
   computed (all_taps: without mixsep.model.SmallMapConv2d's shortcut, as torchvision computes
   ResNet-18), and a seed-style loop (torchvision MNIST with per-item PIL Resize/Grayscale/
   ToTensor, CIFAR through PIL per item, a Dataset returning the mean, a DataLoader, the
   network computed with all taps as the seed's was). data_overhead = 1 - mixsep/bare;
   speedup_vs_seed_style = mixsep/seed.
2. MFU: each loop's FLOPs (3x the forward count of mixsep.model.flops_per_sample: the network's
   FLOPs, every tap counted, whichever form computes them) against the best large fp32 matmul
   timed in the same rounds; beside it, the MFU of the FLOPs the form actually multiplies.
3. --profile: torch.profiler's table of the bare step, both decoder forms, top ops by self CPU time.
4. torch.compile of the whole step (forward, loss, backward, Adam; full run or --compile): compile
   time, step time saved, and the break-even number of steps.
5. What else was tried on the bare step and for evaluation: threads, NCHW against channels_last,
   bf16 autocast on the CPU (TrainConfig.cpu_bf16; also on the --quality-model's step),
   inference_mode against no_grad.
6. Evaluation throughput: mixsep.metrics.evaluate over the test split.
7. One U-Net run (--quality-model, default unet_narrow; the quality preset, its one-cycle schedule sized to this mode's time cap),
   counting time inside the training generator only: time to 22.2 dB MNIST PSNR on the test
   pairs (the public clone's 30-epoch figure), and time to 30 dB mean PSNR for both sources on
   validation pairs carved from the training data (held out of this run's training).
8. dashboard_overhead from bench/dashboard_bench.py when that module is present (full run or
   --dashboard); otherwise nan.

The last line sums it up:
    bench: data_overhead=.. mfu=.. speedup_vs_seed_style=.. eval_samples_per_s=.. time_to_22db_s=..
           time_to_30db_s=.. dashboard_overhead=..   (one line)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gzip
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import mixsep  # noqa: F401  first, before torch: how its threads wait (mixsep.config.THREAD_WAIT)
import torch
import torch.nn.functional as F
from benchlib import (add_json_flags, at_least, command_line, data_root, json_output, machine, machine_line,
                      one_sentence, set_threads, write_output)
from quality import PRESETS, fit_epochs

from mixsep import MixsepError, TrainConfig
from mixsep.config import default_data_root
from mixsep.data import PairData, find_source, load_pairs, load_split, to_float
from mixsep.metrics import RECOVERY_MODES, SOURCES, evaluate, predict, psnr, recover
from mixsep.model import build_model, flops_per_sample
from mixsep.train import GRAPH_WARMUP, Training

TARGET_DB = 22.2  # the public clone's MNIST PSNR after 30 epochs of a ResNet-50 separator
QUALITY_DB = 30.0  # both sources, on validation pairs carved from the training data
NAN = float("nan")


# --------------------------------------------------------------------------- timing helpers


def matmul(n: int, device: str, dtype=torch.float32):
    """(one n x n matmul, its GFLOP): the machine's practical peak for MFU."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return (lambda: a @ b), 2 * n ** 3 / 1e9


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()  # GPU work is queued: time it only once it is done


def rounds(loops: dict, calls: int, n_rounds: int, device: str = "cpu") -> dict:
    """Time loops {name: (fn, work per call)} in alternation; per loop the median work per second.

    Alternating rounds put every loop, the matmul peak included, under the same background
    load, which on a shared machine moves more than the differences measured here.
    """
    for fn, _ in loops.values():  # warm-up: allocator, oneDNN / cuDNN kernel choice; on CUDA the training
        for _ in range(1 if device == "cpu" else GRAPH_WARMUP + 2):  # loop's eager steps and the graph's recording
            fn()
    got = {k: [] for k in loops}
    for _ in range(n_rounds):
        for k, (fn, work) in loops.items():
            synchronize(device)
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            synchronize(device)
            got[k].append(calls * work / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in got.items()} | {"_rounds": got}


# --------------------------------------------------------------------------- the three loops


def bare_step(model, opt, batch, amp: bool = False):
    """Forward, summed MSE, backward, Adam: nothing but the compute (``amp``: bf16 autocast, as Training
    on a GPU, or on the CPU with ``cpu_bf16``)."""
    mnist, cifar, mean = batch
    with torch.autocast(mean.device.type, dtype=torch.bfloat16, enabled=amp):
        mnist_hat, cifar_hat = model(mean)
    loss = F.mse_loss(mnist_hat.float(), mnist) + F.mse_loss(cifar_hat.float(), cifar)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def seed_style_loader(root: Path, work: Path, batch: int, device: str):
    """The seed's input pipeline: torchvision datasets, per-item PIL transforms, a DataLoader."""
    from PIL import Image
    from torchvision import datasets, transforms

    raw = work / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    # torchvision reads the unpacked files of both splits; unpacking here is what its download=True does offline
    for f in (find_source(root, "mnist", "train") or []) + (find_source(root, "mnist", "test") or []):
        out = raw / f.name.removesuffix(".gz")
        with (gzip.open(f) if f.suffix == ".gz" else open(f, "rb")) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    mnist = datasets.MNIST(str(work), train=True, download=False, transform=transforms.Compose(
        [transforms.Resize(32), transforms.Grayscale(3), transforms.ToTensor()]))
    cifar = load_split(root, "cifar", "train")[0].permute(0, 2, 3, 1).numpy()  # HWC uint8, as PIL wants
    to_tensor = transforms.ToTensor()

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return min(len(mnist), len(cifar))

        def __getitem__(self, i):
            m, _ = mnist[i]
            c = to_tensor(Image.fromarray(cifar[i]))
            return m, c, (m + c) / 2

    loader = torch.utils.data.DataLoader(Pairs(), batch_size=batch, shuffle=True, drop_last=True,
                                         pin_memory=device == "cuda")
    while True:
        for b in loader:
            yield tuple(x.to(device, non_blocking=True) for x in b)


def form(model) -> str:
    """The faithful model's decoder form: 'grouped' (one pass, mixsep.model.decode_pair) or 'apart'."""
    return "grouped" if model.grouped else "apart"


def variant(model, lr: float = 1e-3, **form):
    """A copy of the model computing in another form (attributes ``form``), with its own Adam: a before/after pair."""
    other = copy.deepcopy(model)
    for k, v in form.items():
        setattr(other, k, v)
    return other, torch.optim.Adam(other.parameters(), lr=lr)


def other_form(model, lr: float = 1e-3):
    """A copy of the model computing its decoders the other way, with its own Adam."""
    return variant(model, lr, grouped=not model.grouped)


def endless_batches(pairs, batch: int):
    epoch = 0
    while True:
        yield from pairs.batches(epoch, batch)
        epoch += 1


# --------------------------------------------------------------------------- sections


def training_throughput(args, work: Path) -> dict:
    cfg = TrainConfig(data_root=args.data_root, model="faithful", pretrained=False, batch_size=args.batch_size,
                      epochs=1000, device=args.device, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training = Training(cfg, work / "run")
    gen = training.steps()
    model, opt = training.model, training.optimizer
    eager_gen = None
    if args.device == "cuda":  # the same loop with config.cuda_graphs off: what the graph of the step saves
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eager_gen = Training(dataclasses.replace(cfg, cuda_graphs=False), work / "run-eager").steps()
    ready = to_float(*next(iter(training.data.batches(0, args.batch_size))))
    seed_batches = seed_style_loader(Path(args.data_root), work / "seed", args.batch_size, args.device)
    B, amp = args.batch_size, args.device == "cuda" and cfg.amp
    other, other_opt = other_form(model, cfg.lr)
    all_taps, all_taps_opt = variant(model, cfg.lr, skip_padding=False)  # the encoder as torchvision computes it
    loops = {
        "mixsep": (lambda: next(gen), B),
        **({"mixsep_eager": (lambda: next(eager_gen), B)} if eager_gen is not None else {}),
        "bare": (lambda: bare_step(model, opt, ready, amp), B),
        f"bare_{form(other)}": (lambda: bare_step(other, other_opt, ready, amp), B),
        "bare_all_taps": (lambda: bare_step(all_taps, all_taps_opt, ready, amp), B),
        "seed_style": (lambda: bare_step(all_taps, all_taps_opt, next(seed_batches), amp), B),
        # the peak in the precision the step computes in: fp32 on the CPU, bf16 under autocast on a GPU
        "matmul_gflops": matmul(args.peak_n, args.device, torch.bfloat16 if amp else torch.float32),
    }
    got = rounds(loops, args.steps, args.rounds, args.device)
    gen.close()
    if eager_gen is not None:
        eager_gen.close()
    peak = got.pop("matmul_gflops")
    # the input pipelines alone: what bounds a step that is fast (a GPU's) rather than the CPU's
    gathers = endless_batches(training.data, B)
    data = rounds({"mixsep": (lambda: to_float(*next(gathers)), B), "seed_style": (lambda: next(seed_batches), B)},
                  args.steps * 4, args.rounds, args.device)
    return {"samples_per_s": {k: v for k, v in got.items() if k != "_rounds"}, "rounds": got["_rounds"],
            "data_only_samples_per_s": {k: v for k, v in data.items() if k != "_rounds"},
            "peak_gflops": peak, "forward_flops_per_sample": flops_per_sample(model), "form": form(model),
            "other_form": form(other), "executed_forward_flops_per_sample": {
                "bare": flops_per_sample(model, executed=True), f"bare_{form(other)}": flops_per_sample(other, executed=True),
                "bare_all_taps": flops_per_sample(all_taps, executed=True)},
            "model": model, "opt": opt, "ready": ready, "other": other, "other_opt": other_opt,
            "all_taps": all_taps, "all_taps_opt": all_taps_opt}


def profile_step(args, t: dict) -> dict:
    """torch.profiler's table of the bare step in each form (default, other decoders, all taps): top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    amp = args.device == "cuda"
    tables = {}
    for name, model, opt in (("default", t["model"], t["opt"]), (f"decoders {form(t['other'])}", t["other"], t["other_opt"]),
                             ("all taps", t["all_taps"], t["all_taps_opt"])):
        bare_step(model, opt, t["ready"], amp)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(args.steps):
                bare_step(model, opt, t["ready"], amp)
            synchronize(args.device)
        tables[name] = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=args.profile_rows, max_name_column_width=34,
            max_shapes_column_width=64)
    return tables


def compile_whole_step(args, t: dict, work: Path) -> dict:
    """torch.compile of forward, loss, backward and Adam together, against the same step in eager mode.

    The first calls compile (and compile again once Adam's state exists), into an empty inductor
    cache; what they take beyond as many compiled steps is the compile time. break_even_steps is the run length from which
    compiling pays: compile time / time saved per step (inf when a compiled step is not faster).
    """
    model, opt, ready, B = t["model"], t["opt"], t["ready"], args.batch_size
    amp = args.device == "cuda"
    compiled = torch.compile(lambda: bare_step(model, opt, ready, amp))
    first_calls = 3
    # a fresh inductor cache: a first run's compile time; later runs reuse the cache and compile in seconds
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")
    start = time.perf_counter()
    try:
        for _ in range(first_calls):
            compiled()
        synchronize(args.device)
    except Exception as e:  # a compiler missing or failing on this machine is a finding, not a crash
        return {"error": f"{e.__class__.__name__}: {str(e).splitlines()[0][:200]}"}
    finally:
        if cache is None:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    first = time.perf_counter() - start
    sps = rounds({"eager": (lambda: bare_step(model, opt, ready, amp), B), "compiled": (compiled, B)},
                 max(1, args.steps - 1), args.rounds, args.device)
    step_eager, step_compiled = B / sps["eager"], B / sps["compiled"]
    compile_s = max(0.0, first - first_calls * step_compiled)
    saved = step_eager - step_compiled
    return {"compile_s": compile_s, "step_s_eager": step_eager, "step_s_compiled": step_compiled,
            "speedup": step_eager / step_compiled, "saved_per_step_s": saved,
            "break_even_steps": compile_s / saved if saved > 0 else math.inf, "rounds": sps["_rounds"]}


def tried(args, t: dict, work: Path) -> dict:
    """Each idea against the default bare step, in alternation."""
    model, opt, ready = t["model"], t["opt"], t["ready"]
    B, dev = args.batch_size, args.device
    amp = dev == "cuda"
    out = {}

    def with_threads(n):
        def fn():
            old = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                bare_step(model, opt, ready)
            finally:
                torch.set_num_threads(old)
        return fn

    # build_model gives channels_last weights; NCHW is what they replaced
    nchw_model = build_model("faithful", pretrained=False).to(dev, memory_format=torch.contiguous_format)
    nchw_model.grouped = model.grouped
    nchw_opt = torch.optim.Adam(nchw_model.parameters(), lr=1e-3)
    loops = {"default": (lambda: bare_step(model, opt, ready, amp), B),
             "nchw": (lambda: bare_step(nchw_model, nchw_opt, ready, amp), B)}
    if dev == "cpu":
        loops["threads_1"] = (with_threads(1), B)
        # TrainConfig.cpu_bf16: AMX CPUs compute bf16 convolutions natively, others emulate them
        loops["cpu_bf16"] = (lambda: bare_step(model, opt, ready, True), B)
    sps = rounds(loops, max(1, args.steps - 1), args.rounds, dev)
    out["train_step_vs_default"] = {k: sps[k] / sps["default"] for k in loops}
    if dev == "cpu":  # the same question for the quality model, whose convolutions are thinner
        torch.manual_seed(0)
        unet = build_model(args.quality_model, pretrained=False).train()
        unet_opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
        b = PRESETS[args.quality_model]["batch_size"] if not args.dry_run else B
        unet_batch = tuple(x[:b] for x in ready) if b <= B else tuple(torch.cat([x] * -(-b // B))[:b] for x in ready)
        sps = rounds({"fp32": (lambda: bare_step(unet, unet_opt, unet_batch), b),
                      "cpu_bf16": (lambda: bare_step(unet, unet_opt, unet_batch, True), b)},
                     max(2, args.steps), args.rounds, dev)
        out["quality_model_cpu_bf16_vs_fp32"] = sps["cpu_bf16"] / sps["fp32"]
        out["quality_model_samples_per_s"] = {k: v for k, v in sps.items() if k != "_rounds"}
    else:  # the same question on CUDA is the graph of the step: the quality model's training loop with it and without
        b = PRESETS[args.quality_model]["batch_size"] if not args.dry_run else B
        gens = {}
        for name, graphs in (("cuda_graphs", True), ("eager", False)):
            cfg = TrainConfig(data_root=args.data_root, model=args.quality_model, pretrained=False, batch_size=b,
                              epochs=1000, device=dev, seed=0, cuda_graphs=graphs, checkpoint_every=100_000,
                              checkpoint_seconds=3600)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gens[name] = Training(cfg, work / f"quality-{name}").steps()
        sps = rounds({k: (lambda g=g: next(g), b) for k, g in gens.items()}, max(4, args.steps * 4), args.rounds, dev)
        for g in gens.values():
            g.close()
        out["quality_model_cuda_graphs_vs_eager"] = sps["cuda_graphs"] / sps["eager"]
        out["quality_model_samples_per_s"] = {k: v for k, v in sps.items() if k != "_rounds"}

    # evaluation forward passes: grad on (but eval mode), no_grad, inference_mode
    mean = ready[2]
    model.eval()

    def fwd(ctx):
        def fn():
            with ctx(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                model(mean)
        return fn
    loops = {"inference_mode": (fwd(torch.inference_mode), B), "no_grad": (fwd(torch.no_grad), B),
             "grad_enabled": (fwd(contextlib.nullcontext), B)}
    sps = rounds(loops, args.steps * 2, args.rounds, dev)
    out["eval_forward_samples_per_s"] = {k: sps[k] for k in loops}
    model.train()
    return out


def eval_throughput(args, model) -> dict:
    test = load_pairs(Path(args.data_root), "test")
    count = min(len(test), args.eval_count)
    model.eval()
    evaluate(model, test, count=min(count, 64))  # warm-up
    t = time.perf_counter()
    evaluate(model, test, count=count)  # reads its scores back to the host: no queued work is left
    dt = time.perf_counter() - t
    return {"pairs": count, "seconds": dt, "samples_per_s": count / dt}


def best_psnr(model, pairs, count: int) -> dict:
    """{source: mean PSNR in its best recovery mode} over the first ``count`` pairs (PSNR only: cheap enough to poll)."""
    model.eval()
    got = {(source, mode): [] for source in SOURCES for mode in RECOVERY_MODES}
    with torch.inference_mode():
        for m_u8, c_u8 in pairs.eval_batches(500, count):
            mnist, cifar, mean, mh, ch = predict(model, m_u8, c_u8)
            for mode in RECOVERY_MODES:
                for source, pred, target in zip(SOURCES, recover(mean, mh, ch, mode), (mnist, cifar)):
                    got[(source, mode)].append(psnr(pred, target))
    model.train()
    return {s: max(float(torch.cat(got[(s, m)]).mean()) for m in RECOVERY_MODES) for s in SOURCES}


def carve_validation(root: Path, n: int, repair: bool, seed: int) -> tuple[PairData, PairData]:
    """(training pairs, validation pairs): the last n MNIST digits and n CIFAR images of the
    training split, paired, and kept out of training (re-pairing draws only from the rest)."""
    m, ml = load_split(root, "mnist", "train")
    c, cl = load_split(root, "cifar", "train")
    if not 0 < n < min(len(m), len(c)):
        raise MixsepError(f"The training split is too small to carve {n} validation pairs from it.")
    train = PairData(m[:-n], ml[:-n], c[:-n], cl[:-n], repair=repair, seed=seed)
    return train, PairData(m[-n:], ml[-n:], c[-n:], cl[-n:])


def unet_config(args, train_size: int) -> TrainConfig:
    """The quality preset, its one-cycle schedule sized to this mode's time cap (as quality.py sizes it to --minutes)."""
    preset = dict(PRESETS[args.quality_model])
    cfg = TrainConfig(data_root=args.data_root, model=args.quality_model, pretrained=False, device=args.device, seed=0,
                      checkpoint_every=10_000, max_minutes=args.target_cap_s / 60, train_size=train_size,
                      cpu_bf16=args.cpu_bf16,
                      **(preset | {"epochs": 1}))
    if args.dry_run:
        cfg.batch_size = args.batch_size
    elif preset["epochs"] == "auto":
        cfg.epochs, _ = fit_epochs(cfg)
    else:
        cfg.epochs = preset["epochs"]
    cfg.max_minutes = 0.0  # the cap is enforced on the training clock here, which leaves the polls out
    return cfg


def time_to_targets(args, work: Path) -> dict:
    """One U-Net run, polled every poll_steps: seconds to TARGET_DB MNIST PSNR on the test pairs and to
    QUALITY_DB for both sources on the validation pairs; the clock runs only inside the generator."""
    root = Path(args.data_root)
    train, val = carve_validation(root, args.val_pairs, PRESETS[args.quality_model]["repair"], seed=0)
    cfg = unet_config(args, len(train))
    training = Training(cfg, work / "target", data=train)
    test = load_pairs(root, "test")
    checks = {"time_to_22db_s": (TARGET_DB, lambda: best_psnr(training.model, test, args.eval_count)["mnist"]),
              "time_to_30db_s": (QUALITY_DB, lambda: min(best_psnr(training.model, val, len(val)).values()))}
    gen, clock, curve, reached = training.steps(), 0.0, [], {}
    while clock < args.target_cap_s and len(reached) < len(checks):
        t = time.perf_counter()
        r = None
        for _ in range(args.poll_steps):
            r = next(gen, None)
            if r is None:
                break
        synchronize(args.device)
        clock += time.perf_counter() - t
        if r is None:
            break
        point = {"step": r.step, "samples": r.step * cfg.batch_size, "train_s": clock}
        for name, (target, score) in checks.items():
            point[name.replace("time_to_", "psnr_for_").removesuffix("_s")] = db = score()
            if db >= target and name not in reached:
                reached[name] = clock
        curve.append(point)
        print(f"  {cfg.model} step {r.step}/{training.total_steps}: {clock:.0f} s, test MNIST PSNR "
              f"{point['psnr_for_22db']:.2f} dB, validation PSNR (worse source) {point['psnr_for_30db']:.2f} dB",
              file=sys.stderr, flush=True)
    gen.close()
    return {name: reached.get(name, NAN) for name in checks} | {
        "clock_s": clock, "curve": curve, "config": cfg.to_dict(), "validation_pairs": len(val),
        "validation": "the last MNIST digits and CIFAR images of the training split, paired, held out of training"}


def dashboard_figure(args) -> tuple[float, str]:
    """(overhead, how it was got) from bench/dashboard_bench.py, if that module is here and the mode asks for it."""
    if args.dry_run or (args.quick and not args.dashboard):
        return NAN, "not measured in this mode (full run or --dashboard)"
    try:
        from dashboard_bench import dashboard_overhead
    except ImportError:
        return NAN, "not measured: bench/dashboard_bench.py is not here"
    try:
        return float(dashboard_overhead(Path(args.data_root), history=args.dashboard_history,
                                        log=lambda line: print(f"  {line}", file=sys.stderr, flush=True))), "measured"
    except MixsepError as e:  # no browser on this machine, say: the other figures still stand
        return NAN, f"not measured: {e}"


# --------------------------------------------------------------------------- main


def batch_size(text: str) -> int:
    """--batch: 0 (the mode's) or a positive batch size, else argparse's one-sentence error and exit 2."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"give 0 (the mode's batch size) or a positive number of pairs, not '{text}'")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=default_data_root(), help="folder with MNIST/ and CIFAR-10 (default ./data or MIXSEP_DATA_ROOT)")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds, shorter U-Net cap; no torch.compile or dashboard unless asked for")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of the faithful step, both decoder forms")
    p.add_argument("--compile", action="store_true", help="measure torch.compile of the whole step in --quick too")
    p.add_argument("--dashboard", action="store_true", help="measure dashboard_overhead in --quick too (needs Chromium)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--quality-model", choices=[m for m in PRESETS if m != "faithful"], default="unet_narrow",
                   help="the U-Net of the time-to-22/30-dB run (default unet_narrow; unet, unet_fraction and "
                        "unet_digit give the figures before it)")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="train the time-to-dB run with bf16 autocast on the CPU (TrainConfig.cpu_bf16; faster with AMX)")
    p.add_argument("--rounds", type=int, default=0,
                   help="alternating rounds per comparison; 0 = the mode's (3 quick, 5 full); more steadies the medians on a busy machine")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the loops run (default cpu)")
    p.add_argument("--batch", type=batch_size, default=0,
                   help="the faithful loops' batch size; 0 = the mode's (64 quick, 128 full); a GPU wants larger")
    add_json_flags(p)
    p.add_argument("--dry-run", action="store_true", help="tiny batches and steps on any data root: checks the plumbing only")
    return p


def settings(args) -> argparse.Namespace:
    """Sizes for the three modes; the full run times more rounds, compiles and watches the dashboard."""
    if args.dry_run:
        args.quick = True
        s = dict(batch_size=8, steps=1, rounds=1, eval_count=16, target_cap_s=2, poll_steps=2, peak_n=256,
                 val_pairs=16, profile_rows=8, dashboard_history=0)
    elif args.quick:
        s = dict(batch_size=64, steps=3, rounds=3, eval_count=1000, target_cap_s=100, poll_steps=25, peak_n=2048,
                 val_pairs=500, profile_rows=15, dashboard_history=0)
    else:
        s = dict(batch_size=128, steps=4, rounds=5, eval_count=1000, target_cap_s=300, poll_steps=25, peak_n=4096,
                 val_pairs=500, profile_rows=15, dashboard_history=10_000)
        args.compile = True
    if args.rounds > 0:
        s["rounds"] = args.rounds
    if args.batch > 0:
        s["batch_size"] = args.batch
    if args.device == "cuda" and not args.dry_run:
        s["peak_n"] = 8192  # a GPU reaches its matmul peak only on large products (2048^2 bf16 read 181 of ~790 TFLOP/s)
    for k, v in s.items():
        setattr(args, k, v)
    return args


def print_training(args, t: dict, m: dict) -> dict:
    """The throughput table with each loop's MFU; returns the headline figures."""
    sps, peak = t["samples_per_s"], t["peak_gflops"]
    train_flops = 3 * t["forward_flops_per_sample"]
    print(f"\nfaithful training, batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps, median samples/s;")
    print(f"fp32 matmul ({args.peak_n}^2) in the same rounds: {peak:.1f} GFLOP/s, the peak for MFU"
          + (f" ({peak / m['peak_gflops']:.2f} of the theoretical {m['peak_gflops']:.0f})" if m["peak_gflops"] > 0 else ""))
    executed = t["executed_forward_flops_per_sample"]
    executed = executed | {"mixsep": executed["bare"], "mixsep_eager": executed["bare"], "seed_style": executed["bare_all_taps"]}
    print(f"  (MFU counts the network's {train_flops / 1e6:.0f} MFLOPs per sample, every tap; 'executed' the FLOPs each form multiplies)")
    for k, v in sps.items():
        print(f"  {k:14s} {v:7.1f} samples/s  {train_flops * v / 1e9:6.1f} GFLOP/s  MFU {train_flops * v / (peak * 1e9):.2f}"
              f"  (executed {3 * executed[k] * v / (peak * 1e9):.2f})")
    other = f"bare_{t['other_form']}"
    print(f"  decoders {t['form']} (the default) / {t['other_form']}: {sps['bare'] / sps[other]:.2f}x")
    print(f"  encoder skipping padding taps (the default) / all taps: {sps['bare'] / sps['bare_all_taps']:.2f}x")
    # on CUDA the mixsep loop replays a CUDA graph (config.cuda_graphs) and the bare step does not: the data
    # overhead compares the loop without the graph with the bare step, and the graph's gain is a figure of its own
    like = "mixsep_eager" if "mixsep_eager" in sps else "mixsep"
    out = {"mfu": train_flops * sps["mixsep"] / (peak * 1e9), "data_overhead": 1 - sps[like] / sps["bare"],
           "mfu_executed": 3 * executed["mixsep"] * sps["mixsep"] / (peak * 1e9),
           "speedup_vs_seed_style": sps["mixsep"] / sps["seed_style"], "default_vs_other_form": sps["bare"] / sps[other],
           "skip_vs_all_taps": sps["bare"] / sps["bare_all_taps"]}
    print(f"  data overhead 1 - {like}/bare = {out['data_overhead']:.3f}; mixsep / seed-style = {out['speedup_vs_seed_style']:.2f}x")
    if like == "mixsep_eager":
        out["cuda_graphs_speedup"] = sps["mixsep"] / sps["mixsep_eager"]
        print(f"  CUDA graph of the step (cuda_graphs, the default) / without: {out['cuda_graphs_speedup']:.2f}x")
    d = t["data_only_samples_per_s"]
    print(f"  input pipeline alone: mixsep {d['mixsep']:.0f} samples/s, seed-style {d['seed_style']:.0f} samples/s "
          f"({d['mixsep'] / d['seed_style']:.0f}x): the seed-style loop caps any step at {d['seed_style']:.0f} samples/s")
    return out


def print_compile(args, c: dict, t: dict) -> None:
    if "error" in c:
        print(f"torch.compile of the whole step failed here: {c['error']}")
        return
    mfu = 3 * t["forward_flops_per_sample"] * args.batch_size / c["step_s_compiled"] / (t["peak_gflops"] * 1e9)
    n = c["break_even_steps"]
    print(f"torch.compile, whole step (forward, loss, backward, Adam): {c['compile_s']:.0f} s to compile; "
          f"step {c['step_s_eager'] * 1e3:.0f} ms eager, {c['step_s_compiled'] * 1e3:.0f} ms compiled "
          f"({c['speedup']:.2f}x, MFU {mfu:.2f}); "
          + (f"pays for runs longer than {math.ceil(n)} steps" if math.isfinite(n) else "never pays: a compiled step is not faster"))


@one_sentence
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    at_least("--rounds", args.rounds, 0, "0 (the mode's) or more")  # a negative count was read as 0
    args = settings(args)
    threads = set_threads(args.threads)
    data_root(args.data_root)
    json_out = json_output(args.json, args.overwrite, args.data_root)  # checked before a 19-minute run, not after it
    start = time.perf_counter()
    print(f"command: {command_line()}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MixsepError("--device cuda was asked for but PyTorch sees no GPU; leave it out to time the CPU.")
    m = machine(threads)
    print(machine_line(m))
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch_size}, {where}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = training_throughput(args, work)
        head = print_training(args, t, m)
        prof = profile_step(args, t) if args.profile else {}
        for name, table in prof.items():
            print(f"\ntorch.profiler, faithful bare step, {name} ({t['form']} decoders unless named), {args.steps} steps, top ops by self CPU time:")
            print(table)
        comp = compile_whole_step(args, t, work) if args.compile else {}
        if comp:
            print_compile(args, comp, t)
        tr = tried(args, t, work)
        print(f"tried on the bare step (samples/s relative to the default: {threads} threads, channels_last, eager):")
        for k, v in tr["train_step_vs_default"].items():
            print(f"  {k:14s} {v:.2f}x")
        if "quality_model_cuda_graphs_vs_eager" in tr:
            q = tr["quality_model_samples_per_s"]
            print(f"{args.quality_model} training loop (batch {PRESETS[args.quality_model]['batch_size']}), CUDA graph "
                  f"of the step / without: {tr['quality_model_cuda_graphs_vs_eager']:.2f}x "
                  f"({q['cuda_graphs']:.0f} vs {q['eager']:.0f} samples/s)")
        if "quality_model_cpu_bf16_vs_fp32" in tr:
            q = tr["quality_model_samples_per_s"]
            print(f"{args.quality_model} bare step, bf16 autocast (--cpu-bf16) / fp32: "
                  f"{tr['quality_model_cpu_bf16_vs_fp32']:.2f}x ({q['cpu_bf16']:.0f} vs {q['fp32']:.0f} samples/s)")
        print("evaluation forward, samples/s: " + ", ".join(f"{k} {v:.0f}" for k, v in tr["eval_forward_samples_per_s"].items()))
        ev = eval_throughput(args, t["model"])
        print(f"evaluate() over {ev['pairs']} test pairs (5 modes x 2 sources, PSNR and SSIM): "
              f"{ev['seconds']:.1f} s, {ev['samples_per_s']:.0f} pairs/s")
        target = time_to_targets(args, work)
        for name, what in (("time_to_22db_s", f"{TARGET_DB} dB MNIST PSNR on the test pairs"),
                           ("time_to_30db_s", f"{QUALITY_DB:.0f} dB PSNR, both sources, on {target['validation_pairs']} validation pairs")):
            print(f"time to {what} ({args.quality_model}, {target['config']['epochs']}-epoch schedule"
                  + (", bf16 autocast" if target["config"]["cpu_bf16"] else "") + "): "
                  + (f"{target[name]:.0f} s" if math.isfinite(target[name]) else f"not reached within {target['clock_s']:.0f} s"))
    dash, dash_how = dashboard_figure(args)
    print("dashboard overhead (Train page in headless Chromium vs none): "
          + (f"{dash:.3f}" if dash_how == "measured" else dash_how))
    total = time.perf_counter() - start
    print(f"total wall time {total:.0f} s")
    if json_out:
        out = {"command": command_line(), "machine": m, "threads": threads, "peak_gflops": t["peak_gflops"], "training": {
            "samples_per_s": t["samples_per_s"], "rounds": t["rounds"], "default_form": t["form"],
            "forward_flops_per_sample": t["forward_flops_per_sample"],
            "executed_forward_flops_per_sample": t["executed_forward_flops_per_sample"],
            "data_only_samples_per_s": t["data_only_samples_per_s"]} | head,
            "profile": prof, "compile": comp, "tried": tr, "eval": ev, "time_to_target": target,
            "dashboard_overhead": {"value": dash, "how": dash_how}, "total_s": total}
        write_output(json_out, json.dumps(out, indent=2))
        print(f"wrote {json_out}")
    print(f"bench: data_overhead={head['data_overhead']:.3f} mfu={head['mfu']:.2f} "
          f"speedup_vs_seed_style={head['speedup_vs_seed_style']:.2f} eval_samples_per_s={ev['samples_per_s']:.0f} "
          f"time_to_22db_s={target['time_to_22db_s']:.0f} time_to_30db_s={target['time_to_30db_s']:.0f} "
          f"dashboard_overhead={dash:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
