"""The bench scripts' plumbing on tiny data: arguments, dry runs and the last-line formats."""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
NUM = r"(-?\d+(\.\d+)?|nan|inf)"
QUALITY_LINE = re.compile(rf"^quality: mnist_psnr={NUM} mnist_ssim={NUM} cifar_psnr={NUM} cifar_ssim={NUM} minutes={NUM}$")
HOLDOUT_LINE = re.compile(rf"^holdout: mnist_psnr={NUM} mnist_ssim={NUM} cifar_psnr={NUM} cifar_ssim={NUM} minutes={NUM}$")
BENCH_LINE = re.compile(rf"^bench: data_overhead={NUM} mfu={NUM} speedup_vs_seed_style={NUM} "
                        rf"eval_samples_per_s={NUM} time_to_22db_s={NUM}$")


@pytest.fixture
def bench(monkeypatch):
    """Import a script from bench/ as its own folder would (it imports benchlib beside it)."""
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name):
        sys.modules.pop(name, None)
        return importlib.import_module(name)
    return load


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
    assert len(list((tmp_path / "runs").iterdir())) == 1  # a normal run folder, evaluable later
    header = next(line for line in out if line.startswith("source"))
    assert "SSIM" in header and "SSIM_valid" in header  # both conventions, named
    summary = json.loads((tmp_path / "q.json").read_text())["quality"]["summary"]
    assert 0 < summary["cifar_ssim_valid"] <= 1 and summary["cifar_ssim_valid"] != summary["cifar_ssim"]


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
])
def test_quality_bad_arguments_get_one_sentence(bench, data_root, tmp_path, capsys, extra, message):
    quality = bench("quality")
    rc = quality.main(["--data-root", str(data_root), "--dry-run", "--runs-dir", str(tmp_path / "runs"), *extra])
    assert rc == 2 and message in capsys.readouterr().err


def test_run_dry_run_prints_the_bench_line(bench, data_root, tmp_path, capsys):
    run = bench("run")
    rc = run.main(["--data-root", str(data_root), "--dry-run", "--json", str(tmp_path / "b.json")])
    assert rc == 0
    assert BENCH_LINE.match(last_line(capsys))
    assert (tmp_path / "b.json").is_file()


def test_run_needs_data(bench, tmp_path, capsys):
    run = bench("run")
    assert run.main(["--data-root", str(tmp_path / "empty"), "--dry-run"]) == 2
    assert "No MNIST train data" in capsys.readouterr().err


def test_quality_sizes_epochs_to_the_budget(bench, tiny_config):
    quality = bench("quality")
    cfg = dataclasses.replace(tiny_config, model="unet", max_minutes=1.0)
    epochs, sps = quality.fit_epochs(cfg, probe_steps=1)
    assert sps > 0
    assert epochs == max(1, int(quality.BUDGET_USE * 60 * sps / 96))  # an epoch is 6 batches of 16 pairs


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present: the flag is valid")
def test_run_refuses_cuda_without_a_gpu(bench, data_root, capsys):
    run = bench("run")
    assert run.main(["--data-root", str(data_root), "--dry-run", "--device", "cuda"]) == 2
    assert "sees no GPU" in capsys.readouterr().err
