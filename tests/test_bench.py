"""The bench scripts' plumbing on tiny data: arguments, dry runs and the last-line formats."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mixsep.runs import read_metrics

from conftest import BENCH
NUM = r"(-?\d+(\.\d+)?|nan|inf)"
QUALITY_LINE = re.compile(rf"^quality: mnist_psnr={NUM} mnist_ssim={NUM} cifar_psnr={NUM} cifar_ssim={NUM} minutes={NUM}$")
HOLDOUT_LINE = re.compile(rf"^holdout: mnist_psnr={NUM} mnist_ssim={NUM} cifar_psnr={NUM} cifar_ssim={NUM} minutes={NUM}$")
BENCH_LINE = re.compile(rf"^bench: data_overhead={NUM} mfu={NUM} speedup_vs_seed_style={NUM} "
                        rf"eval_samples_per_s={NUM} time_to_22db_s={NUM} time_to_30db_s={NUM} dashboard_overhead={NUM}$")



def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_quality_dry_run_prints_the_quality_line(bench, data_root, tmp_path, capsys):
    quality = bench("quality")
    rc = quality.main(["--data-root", str(data_root), "--dry-run", "--runs-dir", str(tmp_path / "runs"),
                       "--holdout", "16", "--json", str(tmp_path / "q.json")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert QUALITY_LINE.match(out[-1]), out[-1]
    assert HOLDOUT_LINE.match(out[-2]), out[-2]
    assert (tmp_path / "q.json").is_file()
    (run,) = (tmp_path / "runs").iterdir()  # a normal run folder, evaluable later
    config = json.loads((run / "config.json").read_text())
    assert config["train_size"] == quality.DRY_PAIRS and len(read_metrics(run)) == quality.DRY_PAIRS // 16  # a few
    assert "held-out CIFAR training images 80..95" in "\n".join(out)  # the last 16 of 96, not the trained ones
    header = next(line for line in out if line.startswith("source"))
    assert "SSIM" in header and "SSIM_valid" in header  # both conventions, named
    summary = json.loads((tmp_path / "q.json").read_text())["quality"]["summary"]
    assert 0 < summary["cifar_ssim_valid"] <= 1 and summary["cifar_ssim_valid"] != summary["cifar_ssim"]


@pytest.mark.heavy(20)
def test_quality_scores_the_files_it_is_given(bench, data_root, tmp_path, capsys):
    quality = bench("quality")
    mnist = data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    cifar = data_root / "cifar-10-batches-py" / "test_batch"
    rc = quality.main(["--data-root", str(data_root), "--dry-run", "--runs-dir", str(tmp_path / "runs"),
                       "--model", "faithful", "--mnist-test", str(mnist), "--cifar-test", str(cifar)])
    assert rc == 0 and QUALITY_LINE.match(last_line(capsys))


@pytest.mark.parametrize("extra,message", [
    (["--model", "nope"], "No preset for model 'nope'"),
    (["--holdout", "96"], "--holdout must lie between"),
    (["--cifar-test", "/does/not/exist.npz"], "does not exist"),
    (["--json", "/does/not/q.json"], "Folder /does/not does not exist; create it or choose another --json"),
])
def test_quality_bad_arguments_get_one_sentence(bench, data_root, tmp_path, capsys, extra, message):
    quality = bench("quality")
    rc = quality.main(["--data-root", str(data_root), "--dry-run", "--runs-dir", str(tmp_path / "runs"), *extra])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before any training, not after it


@pytest.mark.heavy(30)
def test_run_dry_run_prints_the_bench_line(bench, data_root, tmp_path, capsys):
    run = bench("run")
    rc = run.main(["--data-root", str(data_root), "--dry-run", "--profile", "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert BENCH_LINE.match(out.strip().splitlines()[-1])
    assert "theoretical fp32 FMA peak" in out or "no theoretical peak" in out
    assert out.count("top ops by self CPU time") == 3 and "Self CPU" in out  # default, other decoders, all taps
    figures = json.loads((tmp_path / "b.json").read_text())
    training = figures["training"]
    sps = training["samples_per_s"]
    assert "bare" in sps and sorted(k for k in sps if k.startswith("bare_")) in (
        ["bare_all_taps", "bare_grouped"], ["bare_all_taps", "bare_apart"])
    # MFU counts the network's FLOPs; what the default form multiplies is fewer, the all-taps form's the same
    executed = training["executed_forward_flops_per_sample"]
    assert executed["bare"] < training["forward_flops_per_sample"] == executed["bare_all_taps"]
    assert training["mfu_executed"] < training["mfu"]
    assert "encoder skipping padding taps (the default) / all taps" in out
    assert figures["time_to_target"]["validation_pairs"] == 16
    # bf16 autocast on the CPU, timed beside fp32 for the faithful step and the quality model's
    tried = figures["tried"]
    assert tried["train_step_vs_default"]["cpu_bf16"] > 0 and tried["quality_model_cpu_bf16_vs_fp32"] > 0
    assert set(tried["quality_model_samples_per_s"]) == {"fp32", "cpu_bf16"}
    assert "unet_narrow bare step, bf16 autocast (--cpu-bf16) / fp32:" in out


def test_run_takes_a_batch_size_and_refuses_a_bad_one(bench, data_root, capsys):
    run = bench("run")
    for mode, default in (["--quick"], 64), ([], 128):
        assert run.settings(run.build_parser().parse_args(mode)).batch_size == default
        assert run.settings(run.build_parser().parse_args(mode + ["--batch", "512"])).batch_size == 512
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit) as e:
            run.main(["--data-root", str(data_root), "--dry-run", "--batch", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --batch: give 0 (the mode's batch size) or a positive number of pairs, not '{bad}'" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present: the script would run for minutes")
def test_gpu_script_stops_at_once_where_there_is_no_gpu(data_root, tmp_path):
    script = BENCH / "gpu.sh"
    env = os.environ | {"PYTHON": sys.executable}
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage: bash bench/gpu.sh DATA_ROOT OUT_DIR" in usage.stderr
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(script), str(data_root), str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 1
    assert "PyTorch sees no GPU here: bench/gpu.sh times only CUDA" in done.stderr
    assert not out.exists()  # nothing started, nothing written


def test_validation_pairs_are_carved_out_of_training(bench, data_root):
    run = bench("run")
    train, val = run.carve_validation(data_root, 16, repair=True, seed=0)
    assert len(val) == 16 and len(train) == 96 - 16
    assert len(train.mnist) == 96 - 16  # re-pairing cannot draw a validation digit either
    pairs = {(m.numpy().tobytes(), c.numpy().tobytes()) for m, c in zip(train.mnist, train.cifar)}
    assert not any((m.numpy().tobytes(), c.numpy().tobytes()) in pairs for m, c in zip(val.mnist, val.cifar))


def test_machine_reads_this_cpu(bench):
    lib = bench("benchlib")
    m = lib.machine(2)
    if m["isa"] == "unknown":
        pytest.skip("no /proc/cpuinfo here")
    assert m["cpu"] in Path("/proc/cpuinfo").read_text()
    assert 1 <= m["cores_used"] <= 2 and m["peak_gflops"] > 0


def test_run_needs_data(bench, tmp_path, capsys):
    run = bench("run")
    assert run.main(["--data-root", str(tmp_path / "empty"), "--dry-run"]) == 2
    assert "No MNIST train data" in capsys.readouterr().err


def test_run_refuses_a_json_path_it_could_not_write_before_timing_anything(bench, data_root, tmp_path, capsys):
    run = bench("run")
    assert run.main(["--data-root", str(data_root), "--dry-run", "--json", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "is a folder; name a file in it" in captured.err and "samples/s" not in captured.out


def test_quality_sizes_epochs_to_the_budget(bench, tiny_config):
    quality = bench("quality")
    cfg = dataclasses.replace(tiny_config, model="unet", max_minutes=1.0)
    # 3 warm-up and 8 timed steps of the training loop: past the end of the first epoch of 6 batches
    epochs, sps = quality.fit_epochs(cfg, probe_steps=8, probe_s=0)
    assert sps > 0
    assert epochs == max(1, int(quality.BUDGET_USE * 60 * sps / 96))  # an epoch is 6 batches of 16 pairs
    assert cfg.epochs == 1 and cfg.max_minutes == 1.0  # the probe trained a copy, in a folder of its own


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present: the flag is valid")
def test_run_refuses_cuda_without_a_gpu(bench, data_root, capsys):
    run = bench("run")
    assert run.main(["--data-root", str(data_root), "--dry-run", "--device", "cuda"]) == 2
    assert "sees no GPU" in capsys.readouterr().err


def test_variants_trains_at_equal_steps_and_scores_off_the_test_split(bench, tmp_path, capsys):
    from conftest import fake_cifar, make_data_root, write_cifar_batch

    from mixsep.data import load_split

    data = make_data_root(tmp_path / "data", n_train=96, n_test=48)
    write_cifar_batch(data / "cifar-10-batches-py" / "test_batch", *fake_cifar(16, np.random.default_rng(1)))
    variants = bench("variants")  # the test pairs hold MNIST test digits 0-15: validation takes them from 16 on
    digits, images = variants.validation(data, 64, 100)
    assert torch.equal(digits, load_split(data, "mnist", "test")[0][16:48])
    assert torch.equal(images, load_split(data, "cifar", "train")[0][64:96])
    assert "CIFAR training images 64-95 with MNIST test digits 16-47" in capsys.readouterr().out
    every = make_data_root(tmp_path / "every", n_train=96, n_test=48)  # every MNIST test digit is in a test pair
    digits, _ = variants.validation(every, 64, 100)
    assert torch.equal(digits, load_split(every, "mnist", "train")[0][64:96])
    assert "with MNIST training digits 64-95 (the test pairs hold MNIST test digits 0-47" in capsys.readouterr().out
    args = ["--data-root", str(data), "--train-size", "64", "--epochs", "1", "--threads", "1"]
    assert variants.main([*args, "--variant", "unet_digit", "--variant", "through-st", "--variant",
                          "rich-narrow-hf-silu-prior", "--beta2", "0.99"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["variant"] for r in lines] == ["unet_digit", "through-st", "rich-narrow-hf-silu-prior"]
    for r in lines:
        assert r["steps"] == 1 and r["val_pairs"] == 32  # CIFAR training images 64-95: never trained on
        assert r["beta2"] == 0.99 and r["weight_decay"] == 0.0
        assert 0 < r["val_psnr"] < 100 and 0 < r["val_psnr_digit_space"] < 100 and 0 < r["val_psnr_8bit_mixture"] < 100
    for bad, says in ((["--variant", "nope"], "Name one or more --variant"),
                      (["--train-size", "96", "--variant", "tiny"], "No CIFAR training images are left"),
                      (["--val-pairs", "0", "--variant", "tiny"], "--val-pairs must be at least 1"),
                      (["--beta2", "1.5", "--variant", "tiny"], "beta2 must lie in")):
        assert variants.main([*args, *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and says in err


def test_variants_scores_a_runs_test_time_flips(bench, tmp_path, capsys):
    from conftest import make_data_root

    from mixsep import TrainConfig
    from mixsep.train import Training

    data = make_data_root(tmp_path / "data", n_train=96, n_test=1040)
    variants = bench("variants")
    runs = {}
    for model in ("unet_digit", "unet"):
        cfg = TrainConfig(data_root=str(data), train_size=64, model=model, pretrained=False, epochs=1, batch_size=32,
                          device="cpu").validate()
        training = Training(cfg, tmp_path / model)
        for _ in training.steps():
            pass
        runs[model] = tmp_path / model
    assert variants.main(["--data-root", str(data), "--run", str(runs["unet_digit"]), "--flips", "--threads", "1"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    flips = [row[f"val_psnr_{k}"] for k in ("flip_h", "flip_hv", "flip_hv_t")]
    assert all(0 < v < 100 for v in flips) and row["val_pairs"] == 32
    assert flips[0] != row["val_psnr"]  # a net trained one step is not mirror-symmetric: the flips ran
    assert variants.main(["--data-root", str(data), "--run", str(runs["unet_digit"]), "--diagnose", "--threads", "1"]) == 0
    row, diag = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    bands, d = diag["diagnose"]["bands"], diag["diagnose"]
    assert abs(sum(b["pixels"] for b in bands.values()) - 1) < 1e-3 and abs(sum(b["error_share"] for b in bands.values()) - 1) < 1e-3
    assert bands["digit 0"]["pixels"] > 0.3 and d["psnr_unseen_cifar"] == row["val_psnr"]  # the same 32 pairs
    assert d["fit_gap_db"] == round(d["psnr_trained_cifar"] - d["psnr_unseen_cifar"], 3) and d["fit_gap_ci95"] > 0
    assert variants.main(["--data-root", str(data), "--run", str(runs["unet"]), "--flips"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "has none" in err


def test_quality_scores_a_trained_run_without_training_it(bench, data_root, tmp_path, capsys):
    quality = bench("quality")
    runs = tmp_path / "runs"
    assert quality.main(["--data-root", str(data_root), "--dry-run", "--runs-dir", str(runs), "--holdout", "16",
                         "--model", "unet_fraction"]) == 0
    trained = capsys.readouterr().out.strip().splitlines()
    (run,) = runs.iterdir()
    args = ["--data-root", str(data_root), "--dry-run", "--score", str(run), "--holdout", "16"]
    assert quality.main(args) == 0
    again = capsys.readouterr().out.strip().splitlines()
    assert again[-2:] == trained[-2:]  # the same weights, the same scores
    assert list(runs.iterdir()) == [run] and "scored " in "\n".join(again)  # nothing trained, no new folder
    assert quality.main([*args, "--as-model", "unet_digit", "--json", str(tmp_path / "q.json")]) == 0
    assert json.loads((tmp_path / "q.json").read_text())["scored_as"] == "unet_digit"
    assert QUALITY_LINE.match(last_line(capsys))
    base = ["--data-root", str(data_root), "--dry-run"]
    # it trained on CIFAR training images 0-63: a holdout of the last 40 of 96 (56-95) reaches them
    assert quality.main([*base, "--score", str(run), "--holdout", "32"]) == 0  # 64-95: never trained on
    capsys.readouterr()
    for bad, says in (([*base, "--score", str(run), "--holdout", "40"], "reach past the first 56: --holdout 40 would"),
                      ([*args, "--as-model", "faithful"], "does not fit"),
                      ([*base, "--score", str(tmp_path / "nope")], "does not exist")):
        assert quality.main(bad) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert quality.main(["--data-root", str(data_root), "--as-model", "unet_digit"]) == 2
    assert "--as-model needs --score" in capsys.readouterr().err


def test_quality_fits_the_projection_weight_on_none_of_the_held_out_images(bench, data_root, tmp_path, capsys):
    """--score RUN --holdout N fitted the optimal projection weight on the last 512 training pairs, which are
    the held-out images it then scored; it now fits on the pairs before them, as the training path does."""
    from mixsep import TrainConfig
    from mixsep.data import load_pairs
    from mixsep.metrics import fit_projection_weight
    from mixsep.train import load_run_model, train_steps

    quality = bench("quality")
    run = tmp_path / "run"  # two heads, so the weight matters (an interval model's modes coincide)
    for _ in train_steps(TrainConfig(data_root=str(data_root), model="tiny", train_size=80, batch_size=16,
                                     pretrained=False, device="cpu"), run):
        pass
    assert quality.main(["--data-root", str(data_root), "--dry-run", "--score", str(run), "--holdout", "16",
                         "--json", str(tmp_path / "q.json")]) == 0
    capsys.readouterr()
    scored = json.loads((tmp_path / "q.json").read_text())
    # its training time is the checkpoint's, which counts every resume (metrics.csv's clock restarts with each)
    assert scored["train_minutes"] == torch.load(run / "checkpoints" / "last.pt", weights_only=True)["trained_s"] / 60
    weights = scored["holdout"]["weights"]
    model = load_run_model(run)[0]
    before = load_pairs(data_root, "train", size=80)  # the 96 training images less the 16 held out
    assert weights["mnist"] == pytest.approx(fit_projection_weight(model, before), abs=1e-6)
    assert weights["mnist"] != pytest.approx(fit_projection_weight(model, load_pairs(data_root, "train")), abs=1e-4)


def test_contention_times_each_wait_policy_in_real_processes(bench, tmp_path, capsys):
    contention = bench("contention")
    out = tmp_path / "c.json"
    assert contention.main(["--model", "tiny", "--steps", "2", "--rounds", "1", "--neighbour", "alone",
                            "--json", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(rf"contention: passive_vs_spin_alone={NUM}", last), last
    got = json.loads(out.read_text())["samples_per_s"]
    assert set(got) == {"spin/alone", "passive/alone"} and all(v[0] > 0 for v in got.values())
    assert contention.main(["--rounds", "0"]) == 2
    assert capsys.readouterr().err == "error: --rounds must be at least 1 (got 0).\n"


def test_hf_widths_trains_the_wider_unet_hf_through_quality_and_names_its_script(data_root, tmp_path):
    """bench/hf_widths.py registers unet_hf at wider levels in its own process (mixsep's MODELS stay as
    they are here) and hands the rest of its arguments to quality.py; without a script name: exit 2."""
    def run(*args):
        return subprocess.run([sys.executable, str(BENCH / "hf_widths.py"), *args], capture_output=True, text=True,
                              cwd=BENCH.parent, timeout=300)

    done = run("quality", "--data-root", str(data_root), "--dry-run", "--model", "unet_hf_wide", "--cpu-bf16",
               "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    assert QUALITY_LINE.match(done.stdout.strip().splitlines()[-1])
    saved = json.loads(next((tmp_path / "runs").glob("*/config.json")).read_text())
    assert saved["model"] == "unet_hf_wide" and saved["cpu_bf16"] is True
    refused = run("--data-root", str(data_root))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "quality or variants" in refused.stderr
    helped = run("--help")
    assert helped.returncode == 0 and "unet_hf_wide" in helped.stdout and not helped.stderr
    from mixsep.model import MODELS
    assert "unet_hf_wide" not in MODELS


def test_startup_times_a_cold_command_at_two_trees_and_removes_its_outputs_first(bench, data_root, tmp_path, capsys):
    """bench/startup.py: a command run cold at another checkout and at this one, alternating; what it wrote is
    removed before each run (separate refuses to write over its outputs), and a tree that is no checkout is one
    sentence."""
    from conftest import mixture_pngs

    startup = bench("startup")
    from mixsep.cli import main as mixsep

    assert mixsep(["train", "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"), "--model", "tiny",
                   "--no-pretrained", "--batch-size", "16", "--epochs", "1", "--quiet"]) == 0
    run = capsys.readouterr().out.strip().splitlines()[-1]
    [mixture], _ = mixture_pngs(data_root, tmp_path / "in", 1)
    out = tmp_path / "out"
    assert startup.main(["--before", str(BENCH.parent), "--rounds", "1", "--", "separate", run, str(mixture),
                         "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" s")[0].rsplit(" ", 1)[0] for line in lines[:2]] == ["round 1: before", "round 1: after"]
    assert re.fullmatch(r"startup: after/before=\d+\.\d\d", lines[-1])
    assert sorted(p.name for p in out.iterdir()) == ["mix0.cifar.png", "mix0.mnist.png"]
    assert startup.main(["--before", str(tmp_path), "--", "info"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path} is not a checkout of mixsep (no mixsep/__main__.py in it).\n"
    assert startup.main(["--before", str(BENCH.parent)]) == 2
    assert capsys.readouterr().err.startswith("error: give the mixsep command to time after --")


@pytest.mark.heavy(8)
def test_compile_bench_times_both_sides_and_says_when_the_compiled_one_fell_back(data_root, tmp_path):
    """bench/compile.py on the trainer itself: a first step and alternating rounds per side, the JSON, the last
    line; here inductor has no working C++ compiler, so the compiled side trained eager and the script says so
    rather than report a compile time (the compile itself is tests/test_train.py's)."""
    out = tmp_path / "compile.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "CXX": "/bin/false", "TMPDIR": str(scratch), "MIXSEP_CACHE_DIR": str(tmp_path / "c")}
    p = subprocess.run([sys.executable, str(BENCH / "compile.py"), "--data-root", str(data_root), "--model", "tiny",
                        "--batch-size", "16", "--train-size", "96", "--rounds", "2", "--steps", "2", "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert re.fullmatch(rf"compile: model=tiny speedup=nan compile_s=nan step_ms_eager={NUM} "
                        rf"step_ms_compiled={NUM} break_even_steps=nan", lines[-1]), lines[-1]  # no made-up figures
    assert any(line.startswith("compile failed here, so the compiled side trained eager: torch.compile failed")
               for line in lines), p.stdout
    assert "tiny, batch 16: compiling failed, so there is nothing to measure" in lines
    assert [line.split(":")[0] for line in lines if line.startswith("  round")] == ["  round 1", "  round 2"]
    figures = json.loads(out.read_text())
    assert "/bin/false" in figures["compile_failed"] and len(figures["rounds_s"]["compiled"]) == 2
    assert math.isnan(figures["speedup"]) and math.isnan(figures["break_even_steps"])
    assert list(scratch.iterdir()) == []  # its scratch folder, precompiled headers and all, is gone


def test_compile_bench_bad_input_is_one_sentence(bench, data_root, tmp_path, capsys, monkeypatch):
    compile_bench = bench("compile")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    env = dict(os.environ)
    for extra, says in ((["--rounds", "0"], "--rounds must be at least 1 (got 0)."),
                        (["--steps", "-1"], "--steps must be at least 1 (got -1)."),
                        (["--threads", "-3"], "--threads must be 0 (torch's default) or more (got -3)."),
                        (["--json", str(tmp_path)], f"--json {tmp_path} is a folder; name a file in it."),
                        (["--json", str(tmp_path / "no" / "c.json")], f"Folder {tmp_path / 'no'} does not exist"),
                        (["--model", "nope"], "nope"), (["--train-size", "96", "--batch-size", "1000"], "Batch size 1000 is larger"),
                        ([], "Asked for 2048 pairs but only 96 are available")):  # the default --train-size
        argv = ["--data-root", str(data_root), "--batch-size", "16", "--model", "tiny", *extra]
        assert compile_bench.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
        assert dict(os.environ) == env and list(scratch.iterdir()) == [], extra  # nothing left, nothing changed


def test_quality_passes_compile_and_bf16_to_the_run_it_trains(bench, data_root):
    """quality.py's --compile and --cpu-bf16 reach the TrainConfig its run trains with (and nothing else does)."""
    quality = bench("quality")
    base = ["--data-root", str(data_root), "--model", "unet_hf_silu"]
    plain = quality.make_config(quality.build_parser().parse_args(base))
    both = quality.make_config(quality.build_parser().parse_args(base + ["--compile", "--cpu-bf16"]))
    assert (plain.compile, plain.cpu_bf16, both.compile, both.cpu_bf16) == (False, False, True, True)
    assert dataclasses.replace(both, compile=False, cpu_bf16=False) == plain


def test_dashboard_bench_gives_the_overheads_mean_its_t_interval_and_what_it_says_of_the_target(bench):
    stats = pytest.importorskip("scipy.stats")  # scikit-image brings scipy into the test environment
    dash = bench("dashboard_bench")
    for values in ([0.07, 0.04, -0.043, -0.06], [-0.016, -0.007, -0.105], [0.01, 0.02],
                   [0.01 * ((i * 7) % 11) - 0.03 for i in range(40)]):
        mean, low, high = dash.mean_interval(values)
        want = stats.t.interval(0.95, len(values) - 1, loc=stats.tmean(values), scale=stats.sem(values))
        assert mean == pytest.approx(sum(values) / len(values))
        assert (low, high) == pytest.approx(want, rel=1e-3)
    assert all(math.isnan(x) for x in dash.mean_interval([0.02])[1:])
    assert "at or under" in dash.verdict(-0.02, 0.025)
    assert "above" in dash.verdict(0.031, 0.09)
    assert "cannot tell" in dash.verdict(-0.05, 0.04)
    assert "no interval" in dash.verdict(math.nan, math.nan)


@pytest.mark.heavy(25)
def test_watch_cores_reads_the_browsers_and_the_servers_cpu_and_leaves_no_process(data_root, tmp_path, request):
    """bench/watch_cores.py for real: a trainer, a server and Chromium on the Train page, set to Paused by a click."""
    out = tmp_path / "w.json"
    short = Path(tempfile.mkdtemp(prefix="wc", dir="/tmp"))  # Chromium's socket path there fits in 108 bytes
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    done = subprocess.run([sys.executable, str(BENCH / "watch_cores.py"), "--data-root", str(data_root), "--choice",
                           "Paused", "--rounds", "1", "--window", "2", "--settle", "0", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, TMPDIR=str(short)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"watch_cores: paused=0\.\d{4}", done.stdout.strip().splitlines()[-1]), done.stdout
    paused = json.loads(out.read_text())["choices"]["Paused"]
    assert paused["browser"] > 0 and paused["server"] >= 0  # (a server at rest may take no clock tick in 3 s)
    assert paused["total"] == pytest.approx(paused["browser"] + paused["server"])
    assert paused["rounds"][0]["seconds"] >= 2
    # the trainer, the server and Chromium are gone with the bench's folder (each had it in its command line or its
    # environment: the runs folder, MIXSEP_RUNS_DIR, Chromium's profile under TMPDIR)
    assert not [pid for pid in _pids_naming(str(short)) if pid != os.getpid()]
    assert not [p.name for p in short.iterdir() if p.name.startswith(("mixsep-", "playwright"))]  # (torch's cache stays)


def test_a_chromium_that_cannot_start_is_one_sentence_and_leaves_nothing_running(bench, tmp_path, monkeypatch):
    """A Chromium that cannot start (its socket path under a long TMPDIR is past 108 bytes) was a traceback of
    Playwright's out of the bench scripts; the Playwright driver it had started stayed."""
    from mixsep import MixsepError

    dash = bench("dashboard_bench")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    monkeypatch.setenv("TMPDIR", str(deep))
    before = dash.descendants(os.getpid())  # (a server of another test's fixture may live on)
    with pytest.raises(MixsepError, match=r"^Headless Chromium could not show the Train page \(.+\); nothing was "
                                          r"measured with it\.$"):
        dash.Watcher("http://127.0.0.1:9", "Paused")
    assert dash.descendants(os.getpid()) <= before  # neither Chromium nor Playwright's driver left


def _pids_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and any(text.encode() in (proc / f).read_bytes() for f in ("cmdline", "environ")):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def test_watch_cores_measures_auto_once_the_trainer_has_trained_past_its_first_minutes(bench, tmp_path):
    """Auto is the 5 s pace for a trainer's first 5 minutes and 15 s after: the bench waits for the trainer's
    metrics.csv, as it grows, to pass that (a real writer process), and says so; a trainer that ends is a sentence."""
    from mixsep import MixsepError
    from mixsep.run import METRIC_FIELDS

    w = bench("watch_cores")
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n" + "1,0,0.2,0.1,0.3,0.001,500,290.0\n")
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
for step, at in ((2, 295.5), (3, 300.9), (4, 301.2)):
    time.sleep(0.4)
    with open({str(run / "metrics.csv")!r}, "a") as f:
        f.write(f"{{step}},0,0.2,0.1,0.3,0.001,500,{{at}}\\n")
time.sleep(60)"""])
    try:
        said = []
        w.wait_until_trained(tmp_path / "runs", writer, 301, said.append)
        assert said == ["  waiting 11 s for the trainer to pass 301 s of training (Auto's slower pace)"]
        assert (run / "metrics.csv").read_text().count("\n") == 5  # it returned at the row of 301.2 s, not before
        writer.kill()
        writer.wait()
        with pytest.raises(MixsepError, match=r"^The training child ended while the bench waited for it \(exit -9\)\.$"):
            w.wait_until_trained(tmp_path / "runs", writer, 400, said.append)
    finally:
        writer.kill()
        writer.wait()


def test_watch_cores_measures_whole_chart_periods_of_the_pages_own_pace(bench):
    """A 40 s window at "15 s" (a chart redrawn every 75 s) held one redraw or none by chance."""
    w = bench("watch_cores")
    assert w.CHOICES == ("2 s", "5 s", "15 s", "Paused", "Auto")  # the Train page's own labels, which the bench
    # clicks; Auto last (its slower pace, once the trainer has trained 5 minutes, is the one measured)
    assert [w.window_for(c, 40) for c in w.CHOICES] == [40, 50, 75, 40, 75]  # charts every 10, 25, 75 s; none paused
    assert [w.window_for(c, 100) for c in w.CHOICES] == [100, 100, 150, 100, 150]
