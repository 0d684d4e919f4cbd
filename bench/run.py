"""Speed, measured side by side in one run: every figure is a ratio of loops timed in alternation.

    python bench/run.py --data-root ../shared/data [--quick]

1. Training throughput of the faithful model, three loops in alternating rounds:
   mixsep (the Training.steps generator: uint8 index gathers, whole-batch mixing, CSV row),
   the bare step on ready float tensors, and a seed-style loop (torchvision MNIST with per-item
   PIL Resize/Grayscale/ToTensor, CIFAR through PIL per item, a Dataset returning the mean,
   a DataLoader). data_overhead = 1 - mixsep/bare; speedup_vs_seed_style = mixsep/seed.
2. MFU: the mixsep loop's FLOPs (3x the forward count of mixsep.model.flops_per_sample)
   against the best large fp32 matmul timed in the same run.
3. What was tried on the bare step and for evaluation: threads, NCHW against channels_last, torch.compile
   (full run only: it compiles for a minute), inference_mode against no_grad.
4. Evaluation throughput: mixsep.metrics.evaluate over the test split.
5. Time to 22.2 dB MNIST PSNR on the test pairs (the public clone's 30-epoch figure) with the
   U-Net, counting time inside the training generator only.

The last line sums it up:
    bench: data_overhead=.. mfu=.. speedup_vs_seed_style=.. eval_samples_per_s=.. time_to_22db_s=..
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from benchlib import RECOVERY_MODES, command_line, set_threads
from quality import PRESETS

from mixsep import MixsepError, TrainConfig
from mixsep.config import default_data_root
from mixsep.data import find_source, load_pairs, load_split, to_float
from mixsep.metrics import evaluate, predict, psnr, recover
from mixsep.model import build_model, flops_per_sample
from mixsep.train import Training

TARGET_DB = 22.2  # the public clone's MNIST PSNR after 30 epochs of a ResNet-50 separator


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
    for fn, _ in loops.values():
        fn()  # warm-up: allocator, oneDNN / cuDNN kernel choice
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
    """Forward, summed MSE, backward, Adam: nothing but the compute (bf16 autocast as Training on a GPU)."""
    mnist, cifar, mean = batch
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
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
    ready = to_float(*next(iter(training.data.batches(0, args.batch_size))))
    seed_batches = seed_style_loader(Path(args.data_root), work / "seed", args.batch_size, args.device)
    B, amp = args.batch_size, args.device == "cuda" and cfg.amp
    loops = {
        "mixsep": (lambda: next(gen), B),
        "bare": (lambda: bare_step(model, opt, ready, amp), B),
        "seed_style": (lambda: bare_step(model, opt, next(seed_batches), amp), B),
        # the peak in the precision the step computes in: fp32 on the CPU, bf16 under autocast on a GPU
        "matmul_gflops": matmul(args.peak_n, args.device, torch.bfloat16 if amp else torch.float32),
    }
    got = rounds(loops, args.steps, args.rounds, args.device)
    gen.close()
    peak = got.pop("matmul_gflops")
    # the input pipelines alone: what bounds a step that is fast (a GPU's) rather than the CPU's
    gathers = endless_batches(training.data, B)
    data = rounds({"mixsep": (lambda: to_float(*next(gathers)), B), "seed_style": (lambda: next(seed_batches), B)},
                  args.steps * 4, args.rounds, args.device)
    return {"samples_per_s": {k: v for k, v in got.items() if k != "_rounds"}, "rounds": got["_rounds"],
            "data_only_samples_per_s": {k: v for k, v in data.items() if k != "_rounds"},
            "peak_gflops": peak, "forward_flops_per_sample": flops_per_sample(model),
            "model": model, "opt": opt, "ready": ready}


def tried(args, t: dict) -> dict:
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
    nchw_opt = torch.optim.Adam(nchw_model.parameters(), lr=1e-3)
    loops = {"default": (lambda: bare_step(model, opt, ready, amp), B),
             "nchw": (lambda: bare_step(nchw_model, nchw_opt, ready, amp), B)}
    if dev == "cpu":
        loops["threads_1"] = (with_threads(1), B)
    if not args.quick:
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        bare_step(compiled, opt, ready, amp)
        synchronize(dev)
        out["compile_seconds"] = time.perf_counter() - t0
        loops["torch_compile"] = (lambda: bare_step(compiled, opt, ready, amp), B)
    sps = rounds(loops, max(1, args.steps - 1), args.rounds, dev)
    out["train_step_vs_default"] = {k: sps[k] / sps["default"] for k in loops}

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


def mnist_psnr(model, test, count: int) -> float:
    """Mean MNIST PSNR on the test pairs, best recovery mode (PSNR only: cheap enough to poll)."""
    model.eval()
    best = {m: [] for m in RECOVERY_MODES}
    with torch.inference_mode():
        for m_u8, c_u8 in test.eval_batches(500, count):
            mnist, _, mean, mh, ch = predict(model, m_u8, c_u8)
            for mode in RECOVERY_MODES:
                best[mode].append(psnr(recover(mean, mh, ch, mode)[0], mnist))
    model.train()
    return max(float(torch.cat(v).mean()) for v in best.values())


def time_to_target(args, work: Path) -> dict:
    """Train the U-Net, polling test MNIST PSNR; the clock runs only inside the generator."""
    preset = PRESETS["unet"] | {"epochs": args.target_epochs}  # the quality run's settings, a shorter schedule
    if args.dry_run:
        preset["batch_size"] = args.batch_size
    cfg = TrainConfig(data_root=args.data_root, model="unet", pretrained=False, device=args.device, seed=0,
                      checkpoint_every=10_000, **preset)
    training = Training(cfg, work / "target")
    test = load_pairs(Path(args.data_root), "test")
    gen, clock, curve = training.steps(), 0.0, []
    while clock < args.target_cap_s:
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
        db = mnist_psnr(training.model, test, args.eval_count)
        curve.append({"step": r.step, "samples": r.step * cfg.batch_size, "train_s": clock, "mnist_psnr": db})
        print(f"  unet step {r.step}: {clock:.0f} s, test MNIST PSNR {db:.2f} dB", file=sys.stderr, flush=True)
        if db >= TARGET_DB:
            return {"seconds": clock, "reached": True, "curve": curve, "config": cfg.to_dict()}
    gen.close()
    return {"seconds": clock, "reached": False, "curve": curve, "config": cfg.to_dict()}


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=default_data_root(), help="folder with MNIST/ and CIFAR-10 (default ./data or MIXSEP_DATA_ROOT)")
    p.add_argument("--quick", action="store_true", help="fewer rounds, no torch.compile: under 3 minutes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the loops run (default cpu)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="tiny batches and steps on any data root: checks the plumbing only")
    return p


def settings(args) -> argparse.Namespace:
    """Sizes for the three modes; the full run times more rounds and compiles."""
    if args.dry_run:
        args.quick = True
        s = dict(batch_size=8, steps=1, rounds=1, eval_count=16, target_epochs=1, target_cap_s=5, poll_steps=2, peak_n=256)
    elif args.quick:
        s = dict(batch_size=64, steps=3, rounds=3, eval_count=1000, target_epochs=2, target_cap_s=100, poll_steps=25, peak_n=2048)
    else:
        s = dict(batch_size=128, steps=4, rounds=5, eval_count=1000, target_epochs=4, target_cap_s=300, poll_steps=25, peak_n=4096)
    for k, v in s.items():
        setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = settings(build_parser().parse_args(argv))
    try:
        threads = set_threads(args.threads)
        start = time.perf_counter()
        print(f"command: {command_line()}")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise MixsepError("--device cuda was asked for but PyTorch sees no GPU; leave it out to time the CPU.")
        where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
        print(f"torch {torch.__version__}, {threads} threads, batch {args.batch_size}, {where}")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            t = training_throughput(args, work)
            sps, peak = t["samples_per_s"], t["peak_gflops"]
            train_flops = 3 * t["forward_flops_per_sample"]
            mfu = train_flops * sps["mixsep"] / (peak * 1e9)
            print(f"\nfaithful training, batch {args.batch_size}, {args.rounds} rounds of {args.steps} steps, median samples/s;")
            print(f"fp32 matmul ({args.peak_n}^2) in the same rounds: {peak:.1f} GFLOP/s, the peak for MFU")
            for k, v in sps.items():
                print(f"  {k:10s} {v:7.1f} samples/s  {train_flops * v / 1e9:6.1f} GFLOP/s  MFU {train_flops * v / (peak * 1e9):.2f}")
            overhead = 1 - sps["mixsep"] / sps["bare"]
            speedup = sps["mixsep"] / sps["seed_style"]
            print(f"  data overhead 1 - mixsep/bare = {overhead:.3f}; mixsep / seed-style = {speedup:.2f}x")
            d = t["data_only_samples_per_s"]
            print(f"  input pipeline alone: mixsep {d['mixsep']:.0f} samples/s, seed-style {d['seed_style']:.0f} samples/s "
                  f"({d['mixsep'] / d['seed_style']:.0f}x): the seed-style loop caps any step at {d['seed_style']:.0f} samples/s")
            tr = tried(args, t)
            print(f"tried on the bare step (samples/s relative to the default: {threads} threads, channels_last, eager):")
            for k, v in tr["train_step_vs_default"].items():
                print(f"  {k:14s} {v:.2f}x")
            if "compile_seconds" in tr:
                compiled_mfu = train_flops * sps["bare"] * tr["train_step_vs_default"]["torch_compile"] / (peak * 1e9)
                print(f"  (torch.compile took {tr['compile_seconds']:.0f} s to compile; compiled bare step MFU about {compiled_mfu:.2f})")
            print("evaluation forward, samples/s: " + ", ".join(f"{k} {v:.0f}" for k, v in tr["eval_forward_samples_per_s"].items()))
            ev = eval_throughput(args, t["model"])
            print(f"evaluate() over {ev['pairs']} test pairs (5 modes x 2 sources, PSNR and SSIM): "
                  f"{ev['seconds']:.1f} s, {ev['samples_per_s']:.0f} pairs/s")
            target = time_to_target(args, work)
            tt = target["seconds"] if target["reached"] else float("nan")
            print(f"time to {TARGET_DB} dB MNIST PSNR (unet, batch {target['config']['batch_size']}): "
                  + (f"{tt:.0f} s" if target["reached"] else f"not reached within {target['seconds']:.0f} s"))
        total = time.perf_counter() - start
        print(f"total wall time {total:.0f} s")
        if args.json:
            out = {"command": command_line(), "threads": threads, "peak_gflops": peak, "training": {
                "samples_per_s": sps, "rounds": t["rounds"], "forward_flops_per_sample": t["forward_flops_per_sample"],
                "data_only_samples_per_s": t["data_only_samples_per_s"],
                "mfu": mfu, "data_overhead": overhead, "speedup_vs_seed_style": speedup},
                "tried": tr, "eval": ev, "time_to_target": target, "total_s": total}
            Path(args.json).write_text(json.dumps(out, indent=2))
            print(f"wrote {args.json}")
        print(f"bench: data_overhead={overhead:.3f} mfu={mfu:.2f} speedup_vs_seed_style={speedup:.2f} "
              f"eval_samples_per_s={ev['samples_per_s']:.0f} time_to_22db_s={tt:.0f}")
        return 0
    except MixsepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
