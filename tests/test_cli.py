"""The command line end to end on tiny data, and its messages for bad input."""
from __future__ import annotations

import json
import os
import shutil
import re
import subprocess
import sys
import time
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from PIL import Image

from mixsep import MixsepError, TrainConfig
from mixsep.cli import main

TINY = ["--model", "tiny", "--batch-size", "16", "--no-pretrained", "--quiet", "--checkpoint-seconds", "0"]


def _train(capsys, data_root, runs, *extra) -> Path:
    assert main(["train", "--data-root", str(data_root), "--runs-dir", str(runs), *TINY, *extra]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return Path(out[-1])  # the run folder is the last line


def test_train_evaluate_grid_end_to_end(capsys, data_root, tmp_path):
    run = _train(capsys, data_root, tmp_path / "runs", "--epochs", "2", "--lr", "2e-3", "--beta1", "0.8",
                 "--loss", "log_mse")
    assert run.parent == tmp_path / "runs" and (run / "checkpoints" / "last.pt").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 2e-3 and cfg["beta1"] == 0.8 and cfg["epochs"] == 2 and cfg["pretrained"] is False
    assert cfg["loss"] == "log_mse"

    out_json = tmp_path / "eval.json"
    md = tmp_path / "eval.md"
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--samples", "20", "--json", str(out_json),
                 "--markdown", str(md)]) == 0
    assert md.read_text().count("\n| ") >= 7 and "projection_optimal" in md.read_text()
    text = capsys.readouterr().out
    assert "data_range=1.0" in text and "not a real score" in text
    res = json.loads(out_json.read_text())
    assert len(res["rows"]) == 10
    assert {r["mode"] for r in res["rows"]} == {"direct", "subtraction", "projection_uniform", "projection_optimal", "mixture"}
    assert set(res["rows"][0]) >= {"source", "mode", "psnr_mean", "psnr_ci95", "ssim_mean", "ssim_ci95", "n"}
    assert all(r["n"] == 20 for r in res["rows"])
    assert res["audit"][0]["psnr_data_range_255"] > 40
    assert res["weights"]["fitted_on"] == "training pairs"

    png = tmp_path / "grid.png"
    assert main(["grid", str(run), "--data-root", str(data_root), "--n", "7", "--out", str(png), "--seed", "3", "--errors"]) == 0
    img = Image.open(png)
    assert img.size[0] > 7 * 64 and img.size[1] > 8 * 64  # 7 columns, 8 labelled rows at 2x
    capsys.readouterr()
    assert main(["grid", str(run), "--data-root", str(data_root), "--n", "100", "--out", str(png), "--overwrite"]) == 0
    assert "note: the test split holds 48 pairs, so the grid shows 48, not 100" in capsys.readouterr().err
    # evaluate said "48 test pairs" and nothing of the 100 asked for
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--samples", "100", "--json", str(out_json),
                 "--overwrite"]) == 0
    out, err = capsys.readouterr()
    assert "note: the test split holds 48 pairs, so evaluate scores 48, not 100" in err and "48 test pairs" in out
    assert all(r["n"] == 48 for r in json.loads(out_json.read_text())["rows"])


def test_evaluate_and_grid_read_the_runs_own_data_root_by_default(capsys, data_root, tmp_path, monkeypatch):
    run = _train(capsys, data_root, tmp_path / "runs")
    elsewhere = tmp_path / "elsewhere"  # no ./data here, and no MIXSEP_DATA_ROOT: only the run knows where its data is
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MIXSEP_DATA_ROOT", raising=False)
    assert main(["evaluate", str(run), "--samples", "8"]) == 0
    out, err = capsys.readouterr()
    assert "8 test pairs" in out and f"data root {Path(data_root).resolve()} (the run's" in err
    assert main(["grid", str(run), "--n", "3", "--out", "g.png"]) == 0 and (elsewhere / "g.png").is_file()
    capsys.readouterr()
    empty = tmp_path / "empty"  # the flag still wins over the run's folder
    empty.mkdir()
    assert main(["evaluate", str(run), "--data-root", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err
    moved = tmp_path / "moved"  # a resume with --data-root moves the run's data: config.json says where, not last.pt
    shutil.copytree(data_root, moved)
    assert main(["train", "--run-dir", str(run), "--data-root", str(moved), "--quiet"]) == 0
    capsys.readouterr()
    shutil.rmtree(data_root)
    assert main(["evaluate", str(run), "--samples", "8"]) == 0
    assert f"data root {moved} (the run's" in capsys.readouterr().err
    shutil.rmtree(moved)  # the run's folder is gone: the usual default, ./data
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"note: the run's data root {moved} is not a folder here; reading ./data")
    assert err[-1].startswith("error: No MNIST test data under data") and len(err) == 2


def test_a_resume_whose_data_root_is_not_here_reads_the_default_and_says_so(capsys, data_root, tmp_path, monkeypatch):
    """A run copied from another machine: `train --run-dir` was refused and told to download into the other machine's
    folder, where evaluate, grid and a study's resume read the usual default and say so (QA)."""
    theirs = tmp_path / "theirs"
    shutil.copytree(data_root, theirs)
    run = _train(capsys, theirs, tmp_path / "runs")
    shutil.rmtree(theirs)
    elsewhere = tmp_path / "elsewhere"  # no ./data here
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MIXSEP_DATA_ROOT", raising=False)
    before = conftest.tree(run)
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 2  # nothing to read: both folders named, nothing lost
    assert capsys.readouterr().err == (
        f"error: {run} trained on the data root {theirs}, which is not a folder on this machine, and ./data "
        f"({elsewhere / 'data'}) holds no training data either; resume it with --data-root DIR naming a folder that "
        "holds MNIST and CIFAR-10.\n")
    assert conftest.tree(run) == before
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(data_root))
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"note: the run's data root {theirs} is not a folder here; reading {data_root} "
                          "(--data-root chooses another)\n"), err
    assert json.loads((run / "config.json").read_text())["data_root"] == str(data_root.resolve())  # read from now on


def test_evaluate_on_user_named_files(capsys, data_root, tmp_path):
    run = _train(capsys, data_root, tmp_path / "runs")
    cifar = data_root / "cifar-10-batches-py" / "data_batch_1"
    mnist = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    out_json = tmp_path / "e.json"
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--mnist-test", str(mnist),
                 "--cifar-test", str(cifar), "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["n"] == 96
    # an output that exists is replaced only with --overwrite, refused (and kept) before the model loads
    kept = out_json.read_bytes()
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--samples", "1", "--json", str(out_json)]) == 2
    assert capsys.readouterr().err == (f"error: {out_json} exists already; pass --overwrite to replace it, "
                                       "or choose another --json.\n")
    assert out_json.read_bytes() == kept
    # one pair: its 95% intervals are NaN, written as null (Python's NaN is not JSON other readers take)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--samples", "1", "--json", str(out_json),
                 "--markdown", str(tmp_path / "e.md"), "--overwrite"]) == 0
    text = out_json.read_text()
    assert "NaN" not in text and "Infinity" not in text
    rows = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))["rows"]
    assert all(r["psnr_ci95"] is None and r["n"] == 1 for r in rows)
    # and no "± nan" in the Markdown, no "NaN" in the printed table: the mean alone (QA)
    table = (tmp_path / "e.md").read_text()
    direct = f"| direct | {rows[0]['psnr_mean']:.2f} | {rows[0]['ssim_mean']:.3f} | "
    assert "nan" not in table.lower() and direct in table and "\n\n1 test pair, so no confidence interval. " in table
    out = capsys.readouterr().out
    assert "NaN" not in out and ", 1 test pair, data_range=1.0" in out, out


def test_environment_sets_the_defaults(capsys, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(data_root))
    monkeypatch.setenv("MIXSEP_RUNS_DIR", str(tmp_path / "envruns"))
    assert main(["train", *TINY]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]).parent == tmp_path / "envruns"


def test_a_tilde_is_the_home_folder_also_where_no_shell_expanded_it(capsys, data_root, tmp_path, monkeypatch):
    """MIXSEP_RUNS_DIR='~/runs' made a folder named ~ in the current one and printed '~/runs/...', which reads as
    the home folder (the dashboard and sweep took it so); a quoted '~/data' was called missing."""
    home, here = tmp_path / "home", tmp_path / "here"
    home.mkdir(), here.mkdir()
    shutil.copytree(data_root, home / "data")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MIXSEP_RUNS_DIR", "~/runs")
    monkeypatch.chdir(here)
    assert main(["train", "--data-root", "~/data", *TINY]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert run.parent == home / "runs" and (run / "checkpoints" / "last.pt").is_file()
    assert main(["evaluate", f"~/runs/{run.name}", "--samples", "8", "--json", "~/scores.json"]) == 0
    assert json.loads((home / "scores.json").read_text())["n"] == 8
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(home / "mix.png")
    assert main(["separate", f"~/runs/{run.name}", "~/mix.png", "--out", "~/out"]) == 0  # the images too
    assert (home / "out" / "mix.mnist.png").is_file()
    capsys.readouterr()
    monkeypatch.setenv("MIXSEP_CACHE_DIR", "~/cache")
    monkeypatch.setenv("MIXSEP_DATA_ROOT", "~/data")
    assert main(["info", "--check"]) == 0 and f"data root {home / 'data'}" in capsys.readouterr().out
    assert (home / "cache").is_dir()
    assert list(here.iterdir()) == []  # no folder named ~ here


def test_a_resume_whose_time_budget_is_spent_says_so(capsys, data_root, tmp_path):
    """It trained nothing, printed only the run folder and exited 0: nothing said why, nor how to go on."""
    run = _train(capsys, data_root, tmp_path / "runs", "--epochs", "3")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["step"], state["trained_s"] = 2, 120.0  # two minutes trained, of a run of 9 steps
    torch.save(state, run / "checkpoints" / "last.pt")
    status = json.loads((run / "status.json").read_text()) | {"state": "stopped"}
    (run / "status.json").write_text(json.dumps(status))
    assert main(["train", "--run-dir", str(run), "--max-minutes", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"note: {run}: time budget reached before this resume: it trained 2.00 of its 1 minutes; resume it with " \
           "a larger time limit (--max-minutes) to train on." in err, err


def test_a_run_its_time_budget_ended_and_a_finished_run_resumed_say_so(capsys, data_root, tmp_path):
    """QA: a run that --max-minutes ended printed only "final step 1/3", and a finished run resumed printed its full
    bar and nothing else: neither said why nothing more was trained."""
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data-root", str(data_root), *TINY, "--epochs", "3",
                 "--train-size", "16", "--max-minutes", "1e-9"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-2:] == [err[-2], f"note: {run}: time budget reached at step 1 of 3 (--max-minutes 1e-09); resume it "
                                 "with a larger time limit to train on."] and err[-2].startswith("final step 1/3: ")
    assert main(["train", "--run-dir", str(run), "--max-minutes", "10", "--quiet"]) == 0  # trains on, to the end
    assert capsys.readouterr().err.splitlines()[-1].startswith("final step 3/3: ")
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[-1] == f"note: {run} had already finished (3/3 steps); nothing was trained."
    assert out == f"{run}\n"


def test_evaluate_shows_its_progress_on_a_terminal_only(capsys, data_root, tmp_path, monkeypatch):
    """Scoring the full test split takes a minute or two on a CPU, and printed nothing meanwhile."""
    import io

    run = _train(capsys, data_root, tmp_path / "runs")

    class Terminal(io.StringIO):  # stderr as a terminal 100 columns wide shows it
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "100")
    for stderr, bar in ((io.StringIO(), False), (Terminal(), True)):  # a file or a pipe: no bar
        monkeypatch.setattr(sys, "stderr", stderr)
        assert main(["evaluate", str(run), "--samples", "40", "--batch-size", "4"]) == 0
        assert ("scoring: " in stderr.getvalue() and "/40 [" in stderr.getvalue()) is bar, stderr.getvalue()[-500:]


def test_info_lists_models_and_data(capsys, data_root):
    assert main(["info", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "faithful" in out and "parameters" in out and "MFLOPs" in out
    faithful = next(line for line in out.splitlines() if line.startswith("model faithful:"))
    assert "292 MFLOPs per sample forward; 278 multiplied, the rest meet only zero padding" in faithful
    assert out.count("missing") == 0 and "data_batch_1" in out


def test_the_download_command_in_a_missing_data_sentence_is_quoted_for_the_shell(capsys, tmp_path):
    """A data root with a space was put in the sentence's `python -m mixsep download --data-root ...` as it was:
    copied into a terminal, the command downloaded into the path's first word."""
    import shlex

    root = tmp_path / "team's data"
    root.mkdir()
    quoted = shlex.quote(str(root))
    assert quoted != str(root)
    for argv in (["info", "--data-root", str(root), "--model", "tiny", "--check"],
                 ["train", "--data-root", str(root), "--run-dir", str(tmp_path / "run"), "--model", "tiny"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"`python -m mixsep download --data-root {quoted}` where" in err, err
        assert shlex.split(err.split("`")[1])[-1] == str(root)  # the command, as a shell reads it
    assert not (tmp_path / "run").exists()


def test_info_check_reads_each_file_through_and_names_the_one_that_does_not(capsys, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXSEP_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["info", "--data-root", str(data_root), "--model", "tiny", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.count("reads: 96 images") == 2 and out.count("reads: 48 images") == 2  # the fixture's train and test
    gz = data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])  # cut short: `info` alone still lists it as found
    assert main(["info", "--data-root", str(data_root), "--model", "tiny"]) == 0
    assert "missing" not in capsys.readouterr().out
    labels = data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    kept = labels.rename(tmp_path / labels.name)
    assert main(["info", "--data-root", str(data_root), "--model", "tiny", "--check"]) == 2
    assert capsys.readouterr().err == (  # nothing to remove first: no "then" (QA)
        f"error: Under {data_root}, the MNIST test files are missing; run `python -m mixsep download --data-root "
        f"{data_root}` where the internet is reachable, or copy the files there.\n")
    kept.rename(labels)
    assert main(["info", "--data-root", str(data_root), "--model", "tiny", "--check"]) == 2
    out, err = capsys.readouterr()
    assert out.count("reads: ") == 3 and out.count("does not read: ") == 1 and str(gz) in out
    assert err == (f"error: Under {data_root}, the MNIST test files do not read (remove them first); then run "
                   f"`python -m mixsep download --data-root {data_root}` where the internet is reachable, or copy the "
                   "files there.\n")
    batch = data_root / "cifar-10-batches-py" / "test_batch"  # a FIFO where a file goes: read, it blocked for ever
    batch.unlink()
    (data_root / "cifar10").mkdir()
    os.mkfifo(data_root / "cifar10" / "cifar10_test.npz")
    (data_root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    p = subprocess.run([sys.executable, "-m", "mixsep", "info", "--data-root", str(data_root), "--model", "tiny",
                        "--check"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "cifar10_test.npz is not a regular file" in p.stdout, p.stdout + p.stderr
    assert p.stderr.startswith(f"error: Under {data_root}, the MNIST test and CIFAR-10 test files do not read (remove "
                               "them first); the MNIST train files are missing; then run") and p.stderr.count("\n") == 1


def test_a_fifo_or_folder_where_a_data_file_goes_is_named_not_called_missing(capsys, data_root, tmp_path):
    """A FIFO at the MNIST images' path read "the MNIST train files are missing" (so: download them), and a folder
    named like a CIFAR batch was left out: training went on with the batches that were files."""
    images = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    images.unlink()
    os.mkfifo(images)
    assert main(["info", "--data-root", str(data_root), "--model", "tiny", "--check"]) == 2
    out, err = capsys.readouterr()
    assert f"does not read: {images} is not a regular file" in out and "the MNIST train files do not read" in err
    assert "missing" not in out + err
    assert main(["train", "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"), *TINY]) == 2
    assert capsys.readouterr().err == f"error: {images} is not a regular file; put the data file itself there.\n"
    images.unlink()
    conftest.write_idx(images, conftest.fake_digits(96, np.random.default_rng(0))[0])
    (data_root / "cifar-10-batches-py" / "data_batch_2").mkdir()
    assert main(["train", "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"), *TINY]) == 2
    assert "data_batch_2 is not a regular file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("argv,match", [
    (["train", "--lr", "0", *TINY], "Learning rate must be a positive number"),
    (["train", "--beta2", "1.0", *TINY], "beta2 must lie in"),
    (["train", "--batch-size", "500", "--no-pretrained", "--quiet"], "Batch size 500 is larger than the 96"),
    (["train", "--train-size", "1000", *TINY], "only 96 are available"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["grid", "/nonexistent/run"], "does not exist"),
    # output files are checked before the run is even read (only that it is there), so nothing is computed for
    # nothing: FOLDER is a folder that holds no run
    (["evaluate", "FOLDER", "--json", "/nonexistent/folder/e.json"], "Folder /nonexistent/folder does not exist"),
    (["evaluate", "FOLDER", "--markdown", "/"], "--markdown / is a folder"),
    (["evaluate", "FOLDER", "--json", "same.out", "--markdown", "./same.out"], "both name same.out"),
    (["grid", "FOLDER", "--out", "/"], "--out / is a folder"),
    (["grid", "FOLDER", "--out", "grid.jpg"], "--out must name a .png file"),
    (["grid", "/nonexistent/run", "--seed", str(2**64)], "--seed: takes a whole number no larger than 9223372036854775807"),
    (["grid", "/nonexistent/run", "--seed", "-1"], "Seed must lie in [0, 9223372036854775807]"),
    # 100,000 columns took 98 s and 7.8 GB for a 661,000-pixel-wide PNG
    (["grid", "/nonexistent/run", "--n", "101"], "--n must lie in [1, 100] (got 101); the report's grid shows 20."),
    (["grid", "/nonexistent/run", "--n", "0"], "--n must lie in [1, 100] (got 0)"),
    (["info", "--model", ""], "Unknown model ''"),
    (["train", "--keep-epochs", "-1", *TINY], "--keep-epochs must be 0 (keep only the latest epoch checkpoint) or k"),
    (["train", "--epochs", "99999999999999999999", *TINY], "Epochs must lie in [1, 100000] (got 99999999999999999999)"),
    (["evaluate", "/nonexistent/run", "--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, data_root, tmp_path, argv, match):
    argv = [str(tmp_path) if a == "FOLDER" else a for a in argv] + ["--data-root", str(data_root)]
    if argv[0] == "train":
        argv += ["--runs-dir", str(tmp_path / "runs")]
    try:
        rc = main(argv)
    except SystemExit as e:  # refused by argparse: a number no setting can hold is no number of its type
        rc = e.code
    assert rc == 2
    out, err = capsys.readouterr()
    assert match in err and "Traceback" not in err and err.count("error: ") == 1
    assert out == ""  # nothing printed before the refusal (QA: `info --model bogus` listed torch and the device)


@pytest.mark.parametrize("argv,says", [
    (["train", "--runs-dir", "", *TINY], "--runs-dir is empty; name a folder (or leave the flag out for its default)."),
    (["train", "--data-root", "", *TINY], "--data-root is empty"),
    (["evaluate", ""], "RUN_DIR is empty; name a run folder (or a checkpoint file inside one)."),
    (["info", "--data-root", ""], "--data-root is empty"),
    # files: "--json . is a folder" named what no one typed; an empty --config or --storage was ignored
    (["evaluate", "run", "--json", ""], "--json is empty; name a file (or leave the flag out for its default)."),
    (["evaluate", "run", "--markdown", ""], "--markdown is empty; name a file"),
    (["grid", "run", "--out", ""], "--out is empty; name a file"),
    (["train", "--config", "", *TINY], "--config is empty; name a file"),
    (["sweep", "--study", "s", "--storage", ""], "--storage is empty; name a database URL (or leave the flag "
                                              "out for its default)."),
    (["separate", "run", "", "m.png"], "An image path given is empty; name each mixture image to separate."),
])
def test_an_empty_folder_name_is_refused_not_taken_for_the_current_folder(capsys, tmp_path, monkeypatch, argv, says):
    """--runs-dir "" trained into the current folder (Path("") is ".")."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {says}") and "\n" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_no_data_anywhere(capsys, tmp_path):
    assert main(["train", "--data-root", str(tmp_path / "empty"), "--runs-dir", str(tmp_path / "runs"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "No MNIST train data" in err and "python -m mixsep download" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no stray run folder


def test_corrupt_checkpoint_via_cli(capsys, data_root, tmp_path):
    run = _train(capsys, data_root, tmp_path / "runs")
    ck = run / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:1000])  # truncated, as after a full disk
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--checkpoint", str(ck)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_checkpoint_that_is_no_regular_file_is_named_so(capsys, data_root, tmp_path, kind):
    """A FIFO or /dev/zero given as --checkpoint was reported as missing ("does not exist")."""
    run = _train(capsys, data_root, tmp_path / "runs")
    if kind == "fifo":
        ck = tmp_path / "pipe.pt"
        os.mkfifo(ck)
    else:
        ck = Path("/dev/zero")
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint {ck} is not a regular file" in err and "does not exist" not in err, err


@pytest.mark.heavy(10)
def test_python_dash_m_prints_no_traceback(tmp_path):
    """The real entry point, as a user types it."""
    env = {**os.environ, "MIXSEP_CACHE_DIR": str(tmp_path / "c")}
    p = subprocess.run([sys.executable, "-m", "mixsep", "evaluate", str(tmp_path / "missing-run")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


@pytest.mark.heavy(8)
def test_a_ctrl_c_while_train_starts_says_what_happened(data_root, tmp_path):
    """A first Ctrl-C while torch loads (before train's own handler) was reported as 'quit at once by a
    second Ctrl-C; a resume continues from the last checkpoint', with no second Ctrl-C and no checkpoint."""
    import signal
    import time

    env = {**os.environ, "MIXSEP_CACHE_DIR": str(tmp_path / "c")}
    p = subprocess.Popen([sys.executable, "-m", "mixsep", "train", "--data-root", str(data_root), "--runs-dir",
                          str(tmp_path / "runs"), *TINY], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while "libtorch" not in Path(f"/proc/{p.pid}/maps").read_text() and time.time() < deadline:
        time.sleep(0.005)  # torch is loading: seconds before the handler is in place
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    # the second sentence when Python dropped the KeyboardInterrupt inside a callback while torch loaded and
    # train stopped on its record of the signal (tests/test_run_folder.py lands one there on purpose)
    assert p.returncode == 130 and err.splitlines()[-1] in (
        "error: train interrupted by Ctrl-C before training began.",
        "error: train stopped before training began (Ctrl-C or SIGTERM); nothing was trained."), err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


@pytest.mark.heavy(8)
def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`python -m mixsep info | head -1`: the pipe closes while mixsep still writes."""
    # unbuffered: the first line arrives at once, and the lines after it meet the closed pipe
    env = {**os.environ, "MIXSEP_CACHE_DIR": str(tmp_path / "c"), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "mixsep", "info", "--data-root", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout.readline().startswith(b"torch ")
    p.stdout.close()  # as head does after its line
    err = p.stderr.read().decode()
    assert p.wait(120) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def _a_page(x):
    pass


@pytest.mark.heavy(10)
def test_a_warm_process_answers_as_a_cold_start(tmp_path):
    """conftest.WarmProcess, which the fault tests fork, is `python -m mixsep` as a user types it:
    the same exit code and output, with the caller's working folder and environment, even after an
    AppTest script has become __main__ (multiprocessing would re-run it in the child)."""
    from streamlit.testing.v1 import AppTest

    import conftest

    AppTest.from_function(_a_page, args=(1,)).run()  # its script calls _a_page(*__args): not in a child
    env = {**os.environ, "MIXSEP_DATA_ROOT": str(tmp_path / "no data here")}
    argv = ["train", "--runs-dir", "runs", "--model", "tiny", "--quiet"]
    cold = subprocess.run([sys.executable, "-m", "mixsep", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    warm = conftest.warm_run(argv, tmp_path, env, timeout=120)
    assert cold.returncode == 2 and "no data here" in cold.stderr and cold.stderr.count("\n") == 1
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert not (tmp_path / "runs").exists()


def test_recipe_starts_from_the_models_results_settings_and_the_flags_given_win(data_root, tmp_path, capsys):
    from mixsep.cli import build_parser
    from mixsep.config import RECIPES, config_from_args

    def config(*flags):
        return config_from_args(build_parser().parse_args(["train", "--data-root", str(data_root), *flags]))

    plain = config("--model", "unet_narrow")
    assert (plain.lr, plain.schedule, plain.loss, plain.batch_size, plain.epochs) == (1e-3, "constant", "mse", 128, 1)
    cooked = config("--model", "unet_narrow", "--recipe")
    assert {k: getattr(cooked, k) for k in RECIPES["unet_narrow"]} == RECIPES["unet_narrow"]
    assert (cooked.lr, cooked.schedule, cooked.loss, cooked.repair) == (1.2e-2, "onecycle", "log_mse", True)
    # a flag given wins, even one that repeats the setting's default
    mine = config("--model", "unet_narrow", "--recipe", "--epochs", "2", "--lr", "1e-3", "--no-repair")
    assert (mine.epochs, mine.lr, mine.repair, mine.schedule) == (2, 1e-3, False, "onecycle")
    assert config("--recipe").batch_size == RECIPES["faithful"]["batch_size"]  # the default model's

    runs = tmp_path / "runs"
    assert main(["train", "--data-root", str(data_root), "--runs-dir", str(runs), "--model", "tiny", "--recipe"]) == 2
    assert "No recipe for model 'tiny'; models with one: faithful, unet" in capsys.readouterr().err
    assert not runs.exists()  # refused before any run folder

    assert main(["info", "--data-root", str(data_root), "--model", "unet_narrow"]) == 0
    assert ("recipe (train --recipe): --epochs 34 --batch-size 64 --lr 0.012 --schedule onecycle --repair "
            "--loss log_mse") in capsys.readouterr().out


def test_a_resume_keeps_the_runs_settings_and_a_mistake_changes_nothing(capsys, data_root, tmp_path, monkeypatch):
    """--run-dir on a run that exists: flags that shape the run are refused when they differ, where
    they once were dropped without a word (or, from --config, trained with while config.json still
    said otherwise); a mistake rewrites nothing, where it once marked a finished run failed."""
    runs = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    assert data_root.parent == tmp_path
    assert main(["train", "--data-root", data_root.name, "--runs-dir", str(runs), *TINY]) == 0  # a relative data root
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((run / "config.json").read_text())
    assert saved["data_root"] == str(data_root.resolve())  # resolved: the run resumes from any folder
    before = {p: p.read_bytes() for p in (run / "config.json", run / "status.json", run / "metrics.csv", run / ".lock")}

    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(saved, lr=0.5, epochs=3)))
    for extra, says in ((["--epochs", "3", "--lr", "0.5"], "the flags change --epochs 3 (the run's: 1), --lr 0.5"),
                        (["--config", str(other)], f"--config {other} changes --epochs 3 (the run's: 1), --lr 0.5"),
                        (["--config", str(other), "--lr", "0.1"], "so --lr would be ignored; drop them, or drop --config"),
                        (["--config", str(tmp_path / "nope.json")], f"There is no config file {tmp_path / 'nope.json'}"),
                        (["--model", "unet"], "--model unet (the run's: tiny)"),
                        (["--repair"], "--repair (the run's: --no-repair)")):  # a switch as it is typed
        assert main(["train", "--run-dir", str(run), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
        assert {p: p.read_bytes() for p in before} == before  # status.json still "finished"
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    cooked = tmp_path / "cooked"  # a run of a model with a recipe: --recipe's settings were "the flags" (QA)
    cooked.mkdir()
    TrainConfig(model="unet_narrow", data_root=str(data_root), epochs=34).save(cooked / "config.json")
    every = ["--batch-size", "64", "--lr", "0.012", "--schedule", "onecycle", "--repair", "--loss", "log_mse"]
    for extra, says in ((["--recipe"], "and --recipe changes --batch-size 64 (the run's: 128), --lr 0.012"),
                        (["--recipe", *every], "and the flags and --recipe change --batch-size 64 (the run's: 128), "
                                               "--lr 0.012"),  # each typed, and --recipe too: dropping them was not
                                                               # enough (QA)
                        (["--recipe", "--seed", "3"], "and the flags and --recipe change --batch-size 64 (the run's: "
                                                      "128), --lr 0.012")):
        assert main(["train", "--run-dir", str(cooked), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert says in err and err.endswith(f"; leave out --run-dir to start a new run with them, or drop "
                                            f"{'them and ' if len(extra) > 1 else ''}--recipe to resume.\n"), err
    assert [p.name for p in cooked.iterdir()] == ["config.json"]

    # where it runs, mistyped, on a run that can resume: it stays "stopped" (QA: recorded "failed", in the
    # mistake's words, so the pages listed a healthy run as failed and its "stopped by request" was lost)
    from mixsep.run import write_status

    done = json.loads((run / "status.json").read_text())
    write_status(run, "stopped", "stopped by request", step=done["step"], total_steps=done["total_steps"])
    before = {p: p.read_bytes() for p in before}
    damaged = shutil.copytree(data_root, tmp_path / "damaged")  # found only as the trainer reads it (QA)
    archive = damaged / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:200])
    for extra, says in ((["--data-root", str(tmp_path / "typo")], f"No MNIST train data under {tmp_path / 'typo'}"),
                        (["--data-root", str(damaged)], f"{archive} is truncated or corrupt"),
                        *([] if torch.cuda.is_available() else [(["--device", "cuda"], "no GPU is visible")])):
        assert main(["train", "--run-dir", str(run), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err  # "resuming RUN with its saved config", then the sentence
        assert err.splitlines()[-1].startswith("error: ") and says in err.splitlines()[-1] and "Traceback" not in err
        assert {p: p.read_bytes() for p in before} == before
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"

    # what a resume may change: where the data is (moved here), the budget; saved to config.json, and said
    moved = tmp_path / "moved"
    shutil.copytree(data_root, moved)
    monkeypatch.chdir(runs)
    assert main(["train", "--run-dir", str(run), "--quiet", "--data-root", str(moved), "--max-minutes", "5",
                 "--model", "tiny", "--no-amp"]) == 0  # the run's own model repeated is no change
    err = capsys.readouterr().err
    assert f"resuming with --data-root {moved}, --no-amp, --max-minutes 5.0 (saved in" in err, err
    now = json.loads((run / "config.json").read_text())
    assert (now["data_root"], now["max_minutes"], now["amp"]) == (str(moved), 5.0, False)
    changed = ("data_root", "max_minutes", "amp")
    assert {k: v for k, v in now.items() if k not in changed} == {k: v for k, v in saved.items() if k not in changed}


def test_a_run_that_never_starts_leaves_no_folder(capsys, data_root, tmp_path):
    """A bad setting with a new --run-dir, or a failure before the first step (no GPU), left a folder
    holding only a lock and a 'failed' status.json, which no run list shows."""
    runs = tmp_path / "runs"
    assert main(["train", "--data-root", str(data_root), "--run-dir", str(runs / "a" / "b" / "new"), *TINY,
                 "--lr", "-1"]) == 2
    assert "Learning rate" in capsys.readouterr().err and not runs.exists()  # the parents it made went too
    (runs / "keep").mkdir(parents=True)
    (runs / "keep" / "mine.txt").write_text("the user's")  # a folder with other files is not removed
    assert main(["train", "--data-root", str(data_root), "--run-dir", str(runs / "keep"), *TINY, "--lr", "-1"]) == 2
    capsys.readouterr()
    assert (runs / "keep" / "mine.txt").read_text() == "the user's"
    import torch

    if not torch.cuda.is_available():  # found only once the run folder exists (Training's setup)
        assert main(["train", "--data-root", str(data_root), "--runs-dir", str(runs), *TINY, "--device", "cuda"]) == 2
        assert "no GPU" in capsys.readouterr().err
        assert sorted(p.name for p in runs.iterdir()) == ["keep"]
        # and a --runs-dir the command made for it goes too (QA: an empty runs folder was left)
        assert main(["train", "--data-root", str(data_root), "--runs-dir", str(tmp_path / "new" / "runs"), *TINY,
                     "--device", "cuda"]) == 2
        assert "no GPU" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_run_dir_the_dashboard_cannot_list_says_so(capsys, data_root, tmp_path):
    """train --run-dir accepts any folder; one in the runs folder under a name the pages do not list
    (two levels deep, or characters outside a run name's) trains, with a warning that says why."""
    runs = tmp_path / "runs"
    for where, listed in (("exp(2)", False), ("grp/sub/deep", False), ("fine name-1", True), ("grp/ok", True)):
        assert main(["train", "--data-root", str(data_root), "--runs-dir", str(runs), "--run-dir", str(runs / where),
                     *TINY, "--train-size", "16", "--epochs", "1"]) == 0
        err = capsys.readouterr().err
        assert ("warning: the dashboard will not list this run" in err) == (not listed), (where, err)
    from mixsep.run import run_folders

    assert sorted(p.relative_to(runs).as_posix() for p in run_folders(runs)) == ["fine name-1", "grp/ok"]


def test_a_config_file_with_a_byte_order_mark_is_read(capsys, data_root, tmp_path):
    """Windows editors start a UTF-8 file with a byte-order mark; it was refused as not JSON."""
    run = _train(capsys, data_root, tmp_path / "runs")
    cfg = tmp_path / "edited.json"
    cfg.write_bytes("\ufeff".encode() + (run / "config.json").read_bytes())
    # and the flags of where and how it runs apply beside --config (the others are refused there)
    assert main(["train", "--config", str(cfg), "--runs-dir", str(tmp_path / "more"), "--quiet",
                 "--max-minutes", "3"]) == 0
    made = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((made / "config.json").read_text())["max_minutes"] == 3.0


def test_a_runs_folder_in_a_run_or_a_study_is_refused_before_anything_is_made(capsys, data_root, tmp_path, monkeypatch):
    """`--runs-dir` (or MIXSEP_RUNS_DIR) naming a run, its checkpoints folder or a sweep study's folder made a new run
    inside it without a word: the outer run then refused to resume, a Delete of it took the new one, and a sweep
    wrote its journal into the run."""
    from mixsep.jobs import JobRegistry
    from mixsep.run import check_runs_dir

    run = _train(capsys, data_root, tmp_path / "runs")
    study = tmp_path / "runs" / "s1"
    (study / "trial-0000").mkdir(parents=True)
    (study / "sweep.json").write_text(json.dumps({"study": "s1"}))
    before = conftest.tree(tmp_path / "runs")
    for where, says in ((run, f"is the run folder {run}"), (run / "checkpoints", f"is inside the run folder {run}"),
                        (study, "is the folder of the sweep study 's1'"),
                        (study / "trial-0000", "is inside the folder of the sweep study 's1'")):
        for argv, env in ((["train", "--runs-dir", str(where)], None), (["train"], str(where)),
                          (["sweep", "--study", "q", "--trials", "1", "--runs-dir", str(where)], None)):
            if env:
                monkeypatch.setenv("MIXSEP_RUNS_DIR", env)
            else:
                monkeypatch.delenv("MIXSEP_RUNS_DIR", raising=False)
            assert main([*argv, "--data-root", str(data_root), *(TINY if argv[0] == "train" else [])]) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith(f"error: The runs folder {where} {says}") and err.count("\n") == 1, err
            assert conftest.tree(tmp_path / "runs") == before, argv  # nothing made, nothing written
        with pytest.raises(MixsepError, match=f"The runs folder {re.escape(str(where))} {says}"):
            JobRegistry(where).start(TrainConfig.load(run / "config.json"))  # the Train page's Start
        assert conftest.tree(tmp_path / "runs") == before
    check_runs_dir(tmp_path / "runs")  # the folder that holds them is a runs folder
    check_runs_dir(tmp_path / "new" / "runs")
    # QA: through a link and '..' (the kernel takes LINK/.. as the target's parent); a run whose status.json is
    # lost, or one just made by the Train page (config.json only) is a run; a project's own files are not
    os.symlink(run / "checkpoints", tmp_path / "ck")
    with pytest.raises(MixsepError, match=f"is inside the run folder {re.escape(str(run))}"):
        check_runs_dir(tmp_path / "ck" / ".." / "inside")
    lost = tmp_path / "lost"
    shutil.copytree(run, lost)
    (lost / "status.json").unlink()
    damaged = tmp_path / "damaged"  # a run whose config.json is cut short is still a run (a Delete takes it all)
    shutil.copytree(run, damaged)
    (damaged / "config.json").write_bytes((run / "config.json").read_bytes()[:100])
    for folder in (lost, damaged):
        with pytest.raises(MixsepError, match=f"is inside the run folder {re.escape(str(folder))}"):
            check_runs_dir(folder / "sub")
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text(json.dumps({"name": "my project"}))
    (project / "status.json").write_text(json.dumps({"state": "finished"}))
    check_runs_dir(project / "runs")
    settings = tmp_path / "settings"  # a user's own settings file named config.json, run from its folder: no run,
    settings.mkdir()  # whatever else a project keeps there (QA: a folder named checkpoints, a metrics.csv, a log)
    shutil.copy(run / "config.json", settings / "config.json")
    (settings / "checkpoints").mkdir()
    (settings / "metrics.csv").write_text("epoch,accuracy\n1,0.5\n")
    (settings / "worker.log").write_text("")
    check_runs_dir(settings / "runs")
    # and a --run-dir's parents are judged alike: inside the run whose status.json is lost, refused; inside the
    # project, a run
    assert main(["train", "--run-dir", str(lost / "x"), "--data-root", str(data_root), *TINY]) == 2
    assert f"is inside the run folder {lost}" in capsys.readouterr().err and not (lost / "x").exists()
    assert main(["train", "--run-dir", str(project / "x"), "--data-root", str(data_root), *TINY]) == 0
    capsys.readouterr()


def test_a_new_run_whose_config_was_written_first_is_not_said_to_resume(capsys, data_root, tmp_path):
    """The Train page writes a new run's config.json, then starts `train --config C --run-dir D` on it: its
    worker.log, where the page sends a user when something fails, began "resuming D with its saved config"."""
    run = _train(capsys, data_root, tmp_path / "runs")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(run / "config.json", fresh / "config.json")
    assert main(["train", "--config", str(fresh / "config.json"), "--run-dir", str(fresh), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"training {fresh} from step 0 with its saved config (no checkpoint yet)" in err and "resuming" not in err, err
    (run / "status.json").write_text(json.dumps(dict(json.loads((run / "status.json").read_text()), state="stopped")))
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 0  # a run with a checkpoint resumes, and says so
    assert f"resuming {run} with its saved config" in capsys.readouterr().err


def test_a_file_named_like_a_flag_is_named_in_the_mistake(capsys, tmp_path, monkeypatch):
    """`separate RUN -x.png` said only "the following arguments are required: images"."""
    monkeypatch.chdir(tmp_path)
    Path("-x.png").write_bytes(b"")
    with pytest.raises(SystemExit) as done:
        main(["separate", "run", "-x.png"])
    assert done.value.code == 2 and capsys.readouterr().err == (
        "error: the following arguments are required: images; -x.png is a file whose name begins with '-', so it "
        "was read as an option: write it as ./-x.png, or put -- before the file names.\n")
    Path("--overwrite").write_bytes(b"")  # a flag that is also a file's name is the flag: the mistake is another
    with pytest.raises(SystemExit):
        main(["separate", "run", "m.png", "--overwrite", "--mode", "bogus"])
    assert "begins with '-'" not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # after --, a word is a file name: no hint
        main(["separate", "run", "--mode", "bogus", "--", "-x.png"])
    assert "begins with '-'" not in capsys.readouterr().err
    Path("--over").write_bytes(b"")  # an abbreviation of a flag, and a file: said as what it was read as
    with pytest.raises(SystemExit):
        main(["separate", "run", "--over"])
    assert "--over is a file whose name begins with '-', so it was read as the flag --overwrite: write it as " \
        "./--over" in capsys.readouterr().err


def test_version_says_the_version(capsys):
    """`python -m mixsep --version` answered "the following arguments are required: command"."""
    import mixsep

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"mixsep {mixsep.__version__}\n"


@pytest.mark.parametrize("argv, says", [
    (["train", "--epochs", "1.5"], "error: --epochs takes a whole number (got '1.5'), for example 1; "
                                   "`python -m mixsep train --help` lists the options."),
    (["sweep"], "error: the following arguments are required: --study; `python -m mixsep sweep --help` lists"),
    (["bogus"], "error: argument command: invalid choice: 'bogus'"),
    # an unknown flag is its command's: the top-level help lists only the commands
    (["evaluate", "run", "--bogus", "x"], "error: unrecognized arguments: --bogus x; `python -m mixsep evaluate --help` "
                                          "lists the options."),
])
def test_a_mistyped_command_line_is_one_line_exit_2(capsys, argv, says):
    """argparse printed a usage block of a dozen lines, the flag named twice."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and err.startswith(says), err


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_evaluate_and_grid_never_write_over_a_runs_own_files(capsys, data_root, tmp_path):
    """`evaluate RUN --json RUN/checkpoints/last.pt` destroyed the checkpoint, `--json RUN/config.json`
    the config: a run's own files are refused, --overwrite or not, before anything is computed."""
    from conftest import tree

    run = _train(capsys, data_root, tmp_path / "runs")
    other = _train(capsys, data_root, tmp_path / "runs", "--seed", "1")
    (tmp_path / "link").symlink_to(run)  # the same folder under another name
    (run / "worker.log").write_text("a dashboard child's output\n")
    before = tree(tmp_path / "runs")
    assert {"config.json", "status.json", "metrics.csv", ".lock", "checkpoints/last.pt"} <= set(tree(run))
    base = ["--data-root", str(data_root)]
    for cmd, flag, target, says in (
            ("evaluate", "--json", run / "checkpoints" / "last.pt", "in the run's checkpoints folder"),
            ("evaluate", "--json", run / "config.json", "is the run's own config.json"),
            ("evaluate", "--markdown", run / "status.json", "is the run's own status.json"),
            ("evaluate", "--json", run / "metrics.csv", "is the run's own metrics.csv"),
            ("evaluate", "--markdown", run / ".lock", "is the run's own .lock"),
            ("evaluate", "--json", run / "worker.log", "is the run's own worker.log"),
            ("evaluate", "--json", run / "checkpoints" / "new.json", "in the run's checkpoints folder"),
            ("evaluate", "--json", tmp_path / "link" / "config.json", "is the run's own config.json"),
            ("evaluate", "--json", other / "config.json", "is the run's own config.json"),  # any run's
            ("grid", "--out", run / "checkpoints" / "grid.png", "in the run's checkpoints folder")):
        for overwrite in ([], ["--overwrite"]):
            argv = [cmd, str(run), *base, f"{flag}", str(target), *overwrite]
            if cmd == "evaluate":
                argv += ["--samples", "4"]
            assert main(argv) == 2, argv
            err = _one_line(capsys)
            assert f"{flag} {target} " in err and says in err and f"choose another {flag}." in err, err
            assert tree(tmp_path / "runs") == before, argv
    # nor the data root's files, which the run names (`--markdown DATA/MNIST/raw/...gz --overwrite` replaced the
    # images), those it reads and those it does not (CIFAR-10's batches.meta, an .npz beside the pickles)
    (data_root / "cifar-10-batches-py" / "batches.meta").write_bytes(b"meta")
    (data_root / "cifar10").mkdir()
    (data_root / "cifar10" / "cifar10_test_first1000.npz").write_bytes(b"npz")
    data_before = tree(data_root)
    for cmd, flag, target in (("evaluate", "--markdown", data_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"),
                              ("evaluate", "--json", data_root / "cifar-10-batches-py" / "test_batch"),
                              ("evaluate", "--json", data_root / "cifar10" / "cifar10_test_first1000.npz"),
                              ("evaluate", "--markdown", data_root / "cifar-10-batches-py" / "batches.meta"),
                              # new names: an .npz the readers would take for the test split, the downloaders' folder
                              ("evaluate", "--markdown", data_root / "cifar10" / "cifar10_test_0.npz"),
                              ("evaluate", "--json", data_root / "MNIST" / "raw" / "eval.json")):
        assert main([cmd, str(run), *(["--samples", "4"] if cmd == "evaluate" else []), flag, str(target),
                     "--overwrite"]) == 2
        *note, err = capsys.readouterr().err.splitlines()  # evaluate's note names the run's data root; one sentence
        assert len(note) == (cmd == "evaluate") and all(n.startswith(f"data root {data_root} (the run's") for n in note)
        assert f"{flag} {target} is one of the data files under {data_root}, or a name its readers would take for " \
               f"one; choose another {flag}." in err, err
    assert tree(data_root) == data_before
    assert main(["evaluate", str(run), "--samples", "4", "--json", str(data_root / "cifar10" / "eval.json")]) == 0  # not data
    (data_root / "cifar10" / "eval.json").unlink()
    # beside a run's files is fine
    assert main(["evaluate", str(run), *base, "--samples", "4", "--json", str(run / "eval.json")]) == 0
    assert json.loads((run / "eval.json").read_text())["n"] == 4


def test_evaluate_and_grid_never_write_over_a_sweeps_journal_or_a_studys_own_files(capsys, data_root, tmp_path):
    """`evaluate RUN --json RUNS/optuna.journal --overwrite` replaced the journal of every study of the runs folder,
    and `--json RUNS/STUDY/sweep.json` a study's own file: both are refused now, --overwrite or not."""
    from conftest import tree

    runs = tmp_path / "runs"
    assert main(["sweep", "--data-root", str(data_root), "--runs-dir", str(runs), "--study", "demo",
                 *[a for a in TINY if a != "--quiet"], "--train-size", "32", "--val-size", "16", "--trials", "1"]) == 0
    best = Path(capsys.readouterr().out.strip().splitlines()[-1])
    study = runs / "demo"
    assert (runs / "optuna.journal").is_file() and (study / "sweep.json").is_file()
    (study / "sweep.log").write_text("the page's sweep child's output\n")
    before = tree(runs)
    for cmd, flag, target, says in (
            ("evaluate", "--json", runs / "optuna.journal", "is named as a sweep's journal"),
            ("evaluate", "--markdown", runs / "optuna.journal.cut-1", "is named as a sweep's journal"),
            ("evaluate", "--json", runs / "optuna.journal.lock", "is named as a sweep's journal"),
            ("evaluate", "--json", study / "sweep.json", "is the sweep study's own sweep.json"),
            ("evaluate", "--markdown", study / "sweep.log", "is the sweep study's own sweep.log")):
        for overwrite in ([], ["--overwrite"]):
            argv = [cmd, str(best), "--data-root", str(data_root), flag, str(target), *overwrite]
            assert main(argv + (["--samples", "4"] if cmd == "evaluate" else [])) == 2, argv
            err = _one_line(capsys)
            assert f"{flag} {target} " in err and says in err and f"choose another {flag}." in err, err
            assert tree(runs) == before, argv
    assert main(["sweep", "--runs-dir", str(runs), "--study", "demo", "--best"]) == 0  # the study reads as it was
    assert capsys.readouterr().out.strip() == str(best)
    # a sqlite:/// storage: any SQLite database, and the files SQLite keeps beside one
    db = tmp_path / "studies.db"
    url = f"sqlite:///{db}"
    assert main(["sweep", "--data-root", str(data_root), "--runs-dir", str(tmp_path / "sruns"), "--study", "s",
                 "--storage", url, *[a for a in TINY if a != "--quiet"], "--train-size", "32", "--val-size", "16",
                 "--trials", "1"]) == 0
    sbest = Path(capsys.readouterr().out.strip().splitlines()[-1])
    (tmp_path / "studies.db-wal").write_bytes(b"")  # as SQLite leaves one in WAL mode
    before = tree(tmp_path)
    for flag, target, says in (("--json", db, "is an SQLite database"),
                               ("--markdown", tmp_path / "studies.db-wal", "is a file of an SQLite database")):
        assert main(["evaluate", str(sbest), "--data-root", str(data_root), "--samples", "4", flag, str(target),
                     "--overwrite"]) == 2
        err = _one_line(capsys)
        assert f"{flag} {target} {says} (a sweep's storage, say)" in err, err
        assert tree(tmp_path) == before
    assert main(["sweep", "--runs-dir", str(tmp_path / "sruns"), "--study", "s", "--storage", url, "--best"]) == 0
    assert capsys.readouterr().out.strip() == str(sbest)
    # a sweep.json where no study is, is a file like any other: written, and written over with --overwrite
    for overwrite in ([], ["--overwrite"]):
        assert main(["evaluate", str(best), "--data-root", str(data_root), "--samples", "4", "--json",
                     str(tmp_path / "sweep.json"), "--markdown", str(tmp_path / "sweep.log"), *overwrite]) == 0


def test_a_run_on_a_read_only_disk_is_told_how_to_resume_it(capsys, data_root, tmp_path):
    """`train --run-dir` of a run on a read-only disk said "choose a writable place", which a resume cannot."""
    import subprocess

    from conftest import tmpfs

    with tmpfs(tmp_path / "disk", "64m") as disk:
        run = _train(capsys, data_root, disk / "runs")
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)]).returncode == 0
        before = conftest.tree(run)
        assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
        assert _one_line(capsys) == (f"error: The run folder {run} is not writable (a read-only folder or disk), so "
                                     "it cannot train on; make it writable, or copy it to a writable folder and "
                                     "resume the copy.\n")
        assert conftest.tree(run) == before
        empty = disk / "runs" / "empty"  # no run there: a new one cannot be made there either
        assert main(["train", "--run-dir", str(empty), "--data-root", str(data_root)]) == 2
        assert "choose a writable place" in _one_line(capsys)


def test_an_output_folder_that_is_read_only_is_refused_before_the_work(capsys, data_root, tmp_path):
    """A read-only --json/--markdown/--out folder was found only after the whole evaluation; now the
    folder is tried first (the folder named as the run holds none: nothing is loaded)."""
    from conftest import tmpfs

    with tmpfs(tmp_path / "ro", "64k,ro") as ro:  # read-only for root too
        for argv, flag in ((["evaluate", "--json", str(ro / "e.json")], "--json"),
                           (["evaluate", "--markdown", str(ro / "e.md")], "--markdown"),
                           (["grid", "--out", str(ro / "g.png")], "--out")):
            assert main([argv[0], str(tmp_path), *argv[1:], "--data-root", str(data_root)]) == 2
            assert _one_line(capsys) == (f"error: Folder {ro} is not writable (Read-only file system); "
                                         f"choose another {flag}.\n")
            assert not any(ro.iterdir())


def test_evaluate_writes_both_files_or_neither(capsys, data_root, tmp_path):
    """The JSON was written and the Markdown failed (a full disk): exit 2 with half the output, and
    with --overwrite the earlier JSON gone. Now neither is written and the earlier files stay whole."""
    from conftest import tmpfs

    run = _train(capsys, data_root, tmp_path / "runs")
    out_json = tmp_path / "e.json"
    out_json.write_text("the earlier results")
    with tmpfs(tmp_path / "full", "4k") as full:
        (full / "filler").write_bytes(b"x" * 4096)  # a new file can be made (the check passes), not filled
        md = full / "e.md"
        assert main(["evaluate", str(run), "--data-root", str(data_root), "--samples", "4", "--json", str(out_json),
                     "--markdown", str(md), "--overwrite"]) == 2
        assert _one_line(capsys) == (f"error: The disk holding {full} is full, so e.md could not be written; "
                                     "nothing was written.\n")
        assert out_json.read_text() == "the earlier results" and not md.exists()
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "e.json", "full", "runs"]  # no temp file


def test_a_full_disk_at_a_new_runs_start_says_to_run_the_command_again_not_to_resume(capsys, data_root, tmp_path):
    """The new run's folder is removed again when the disk is full before its first step, but the sentence said
    "free some space and resume": `train --run-dir` on that folder then began a new run with the default settings."""
    from conftest import tmpfs

    with tmpfs(tmp_path / "full", "64k") as full:
        (full / "filler").write_bytes(b"x" * 54_000)  # room for config.json and status.json, not metrics.csv
        assert main(["train", "--runs-dir", str(full / "runs"), "--data-root", str(data_root), *TINY]) == 2
        err = capsys.readouterr().err.splitlines()[-1] + "\n"  # after the "run folder:" line of its start
        assert err.startswith(f"error: The disk holding {full / 'runs'}") and "is full" in err, err
        assert err.endswith("free some space and run this command again; the new run's folder "
                            f"{full / 'runs' / err.split('/runs/')[1].split()[0]} was removed again, as it held no "
                            "step.\n") and "resume" not in err, err
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


@pytest.mark.heavy(14)
def test_a_reader_that_stops_early_still_gets_the_files(capsys, data_root, tmp_path):
    """`evaluate RUN --json a.json --markdown a.md | head -c 10` exited 1 with neither file written:
    the closed pipe skipped the writes. The files are written; the closed pipe still ends it quietly."""
    run = _train(capsys, data_root, tmp_path / "runs")
    env = {**os.environ, "MIXSEP_CACHE_DIR": str(tmp_path / "c"), "PYTHONUNBUFFERED": "1"}
    a_json, a_md = tmp_path / "a.json", tmp_path / "a.md"
    p = subprocess.Popen([sys.executable, "-m", "mixsep", "evaluate", str(run), "--data-root", str(data_root),
                          "--samples", "20", "--json", str(a_json), "--markdown", str(a_md)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()  # as head -c 10 does, here before the first line (its lines come at once after the scoring:
    err = p.stderr.read().decode()  # a reader closing after 10 bytes could lose the race to the last write)
    assert p.wait(120) == 1 and err == "", err
    assert json.loads(a_json.read_text())["n"] == 20 and "projection_optimal" in a_md.read_text()


def test_every_evaluate_and_grid_option_says_what_it_does():
    """--batch-size, grid --split and grid --checkpoint had no help text."""
    from mixsep.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("evaluate", "grid"):
        bare = [a.option_strings[0] for a in sub.choices[name]._actions if a.option_strings and not a.help]
        assert bare == [], (name, bare)
    assert "--overwrite" in sub.choices["evaluate"].format_help() and "--overwrite" in sub.choices["grid"].format_help()


def test_train_and_sweep_help_say_a_resume_reads_its_own_data_root():
    """A resume without --data-root reads the run's (or the study's) folder, but both helps said "default ./data"."""
    from mixsep.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, whose in (("train", "run's"), ("sweep", "study's")):
        flag = next(a for a in sub.choices[name]._actions if "--data-root" in a.option_strings)
        assert flag.help.endswith(f"(env MIXSEP_DATA_ROOT; default ./data; on resume, the {whose} own where that "
                                  "folder is on this machine)"), flag.help  # one bracket, not "(env X) (default ...)"


def test_a_folder_that_is_no_run_or_holds_no_checkpoint_is_told_what_it_is(capsys, tmp_path, data_root):
    """Both read "holds no checkpoint yet; train it first (or wait for its first checkpoint)": /etc included."""
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["evaluate", str(plain), "--data-root", str(data_root)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {plain} is not a mixsep run folder (no config.json); give the "
                                               "folder `python -m mixsep train` made, or a checkpoint file.")
    run = tmp_path / "emp tied"  # the command it names is quoted, as it is pasted (QA)
    (run / "checkpoints").mkdir(parents=True)
    TrainConfig(data_root=str(data_root), model="tiny").save(run / "config.json")
    assert main(["grid", str(run), "--data-root", str(data_root), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {run} holds no checkpoint: its checkpoints were removed, or never written (the run ended "
                   f"before its first); `python -m mixsep train --run-dir '{run}'` trains it from step 0, or pick "
                   "another run.\n")  # (QA: it said "train it again", where the run's own folder resumes)
    assert not (tmp_path / "g.png").exists()


def test_a_checkpoint_read_is_never_written_and_is_named_once(capsys, data_root, tmp_path):
    """`grid --checkpoint mine.png --out mine.png --overwrite` replaced the checkpoint with the grid; a
    checkpoint file as RUN_DIR silently won over a --checkpoint naming another."""
    from conftest import tree

    run = _train(capsys, data_root, tmp_path / "runs", "--epochs", "2")
    mine = tmp_path / "mine.png"
    mine.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    before = tree(tmp_path)
    assert main(["grid", str(run), "--checkpoint", str(mine), "--out", str(mine), "--overwrite"]) == 2
    assert f"--out {mine} is a file this command reads" in _one_line(capsys)
    epoch1 = run / "checkpoints" / "epoch-1.pt"
    for cmd in (["evaluate", str(epoch1), "--samples", "4"], ["grid", str(epoch1), "--out", str(tmp_path / "g.png")],
                ["separate", str(epoch1), str(mine), "--out", str(tmp_path / "sep")]):  # before the image is read
        assert main([*cmd, "--checkpoint", str(run / "checkpoints" / "last.pt")]) == 2
        assert f"RUN_DIR {epoch1} is a checkpoint and --checkpoint names another" in _one_line(capsys), cmd
    assert tree(tmp_path) == before


def test_a_link_that_leads_back_to_itself_is_one_sentence(capsys, data_root, tmp_path):
    """pathlib's resolve() raises RuntimeError on a symlink loop: a traceback and exit 1 in every command."""
    from conftest import tree

    loop = tmp_path / "selfdir"
    loop.symlink_to(loop)
    before = tree(tmp_path)
    for argv in (["grid", str(loop), "--out", str(tmp_path / "g.png")],
                 ["evaluate", str(loop), "--json", str(tmp_path / "e.json")],
                 ["info", "--data-root", str(loop)]):
        assert main(argv) == 2, argv
        assert f"{loop} is a link that leads back to itself" in _one_line(capsys), argv
    assert tree(tmp_path) == before


def test_a_network_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, monkeypatch, capsys):
    """MIXSEP_NETWORK_TIMEOUT=inf failed every download as "OverflowError: timestamp out of range" (it was
    the setting, not the network); nan and words silently meant 60."""
    for value in ("inf", "nan", "-1", "soon", "1e10"):
        monkeypatch.setenv("MIXSEP_NETWORK_TIMEOUT", value)
        assert main(["download", "--data-root", str(tmp_path / "root")]) == 2
        assert f"MIXSEP_NETWORK_TIMEOUT={value} is not a number of seconds in (0, 86400]" in _one_line(capsys)
    assert not (tmp_path / "root").exists()


@pytest.mark.heavy(8)
def test_a_file_name_that_is_not_utf8_is_printed_back_as_its_bytes(capsys, data_root, tmp_path):
    """Under a UTF-8 locale stdout is strict: separate wrote its outputs, then printing their names raised
    UnicodeEncodeError (a traceback, exit 1)."""
    from conftest import ROOT, mixture_pngs

    run = _train(capsys, data_root, tmp_path / "runs")
    (png,), _ = mixture_pngs(data_root, tmp_path / "in", 1)
    odd = os.fsencode(tmp_path / "in") + b"/bad\xff.png"
    os.rename(png, odd)
    out = os.fsencode(tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "mixsep", "separate", os.fsencode(run), odd, b"--out", out],
                          cwd=ROOT, capture_output=True, env=dict(os.environ, PYTHONIOENCODING="utf-8:strict"))
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.split(b"\n")[:2] == [out + b"/bad\xff.mnist.png", out + b"/bad\xff.cifar.png"]


def test_a_path_too_long_or_holding_a_nul_is_one_sentence(capsys, data_root, tmp_path, monkeypatch):
    """A path component past 255 bytes, or a NUL from a --config file, raised OSError or ValueError: a traceback,
    exit 1; an over-long cache folder did so after the run folder was made, and left it."""
    from conftest import tree

    long = tmp_path / ("a" * 300)
    assert main(["train", "--runs-dir", str(tmp_path / "runs"), "--data-root", str(long), *TINY]) == 2
    assert f"error: {long} has a name too long for the file system" in (said := _one_line(capsys)), said
    # a --run-dir the file system takes whose files inside it are past PATH_MAX: said of the --run-dir given, not
    # of X/sweep.json, a name the user never typed
    deep = tmp_path / "deep"
    while len(str(deep)) < 4090:  # PATH_MAX 4096 with the NUL: the folder is a path, DEEP/sweep.json is not
        deep /= "d" * min(250, 4090 - len(str(deep)) - 1)
    assert main(["train", "--run-dir", str(deep), "--data-root", str(data_root), *TINY]) == 2
    assert _one_line(capsys) == (f"error: {deep} (with sweep.json in it, a name mixsep writes or reads "
                                 "there) has a name too long for the file system; choose a shorter one.\n")
    # a --run-dir past PATH_MAX itself: said of it, not of the runs folder (a folder above it, looked at for
    # DEEPER/config.json, was refused first, and the sentence blamed ./runs)
    deeper = deep / "e" / "f" / ("g" * 200)
    assert main(["train", "--run-dir", str(deeper), "--data-root", str(data_root), *TINY]) == 2
    assert _one_line(capsys).startswith(f"error: {deeper} has a name too long for the file system")
    # QA: a long name inside a run folder given is that name, not the run folder's fault
    run = _train(capsys, data_root, tmp_path / "scored")
    ckpt = run / "checkpoints" / ("c" * 300 + ".pt")
    assert main(["evaluate", str(run), "--checkpoint", str(ckpt), "--data-root", str(data_root)]) == 2
    assert _one_line(capsys).startswith(f"error: {ckpt} has a name too long")
    assert not deep.exists()
    config = tmp_path / "nul.json"
    config.write_text(json.dumps({"model": "tiny", "pretrained": False, "data_root": str(data_root) + "\0"}))
    assert main(["train", "--runs-dir", str(tmp_path / "runs"), "--config", str(config)]) == 2
    assert "a path given holds a NUL character" in _one_line(capsys)
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("MIXSEP_CACHE_DIR", str(long))  # no cache: slower, and nothing else
    run = _train(capsys, data_root, tmp_path / "runs")
    assert tree(run) and not os.path.exists(long)


def test_evaluate_never_writes_over_the_labels_it_reads_beside_the_mnist_test_images(capsys, data_root, tmp_path):
    """--mnist-test mt/t10k-images... --json mt/t10k-labels... --overwrite replaced the labels with JSON."""
    run = _train(capsys, data_root, tmp_path / "runs")
    mt = tmp_path / "mt"
    shutil.copytree(data_root / "MNIST" / "raw", mt)
    labels = mt / "t10k-labels-idx1-ubyte.gz"
    before = labels.read_bytes()
    for flag in ("--json", "--markdown"):
        assert main(["evaluate", str(run), "--data-root", str(data_root), "--samples", "2", "--mnist-test",
                     str(mt / "t10k-images-idx3-ubyte.gz"), flag, str(labels), "--overwrite"]) == 2
        assert capsys.readouterr().err == f"error: {flag} {labels} is a file this command reads; choose another {flag}.\n"
        assert labels.read_bytes() == before


@pytest.mark.parametrize("argv", [["evaluate", "RUN", "--checkpoint", ""], ["evaluate", "RUN", "--mnist-test", ""],
                                  ["evaluate", "RUN", "--cifar-test", ""], ["evaluate", "RUN", "--as-model", ""],
                                  ["grid", "RUN", "--checkpoint", ""], ["separate", "RUN", "x.png", "--checkpoint", ""]])
def test_an_empty_file_or_model_flag_is_refused_not_read_as_not_given(capsys, data_root, tmp_path, monkeypatch, argv):
    """`--checkpoint "$CKPT"` with CKPT unset scored the latest checkpoint instead, exit 0."""
    run = _train(capsys, data_root, tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    before = conftest.tree(tmp_path)
    root = ["--data-root", str(data_root)] if argv[0] != "separate" else []
    assert main([str(run) if a == "RUN" else a for a in argv] + root) == 2
    flag = argv[argv.index("") - 1]
    assert capsys.readouterr().err.startswith(f"error: {flag} is empty; name a ")
    assert conftest.tree(tmp_path) == before


def test_a_damaged_training_split_is_named_not_taken_for_a_missing_one(capsys, data_root, tmp_path):
    """evaluate fitted the optimal projection weight on "none (fell back to 1/2)" when the training
    images were truncated, and said nothing of the file."""
    run = _train(capsys, data_root, tmp_path / "runs")
    damaged = tmp_path / "damaged"
    shutil.copytree(data_root, damaged)
    images = damaged / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:300])
    assert main(["evaluate", str(run), "--data-root", str(damaged), "--samples", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train-images-idx3-ubyte.gz" in err and err.count("\n") == 1, err
    shutil.rmtree(damaged / "MNIST" / "raw")  # no training split at all: the weight stays 1/2, as before
    shutil.copytree(data_root / "MNIST" / "raw", damaged / "MNIST" / "raw",
                    ignore=shutil.ignore_patterns("train-*"))
    assert main(["evaluate", str(run), "--data-root", str(damaged), "--samples", "2"]) == 0
    assert "fell back to 1/2" in capsys.readouterr().out


def test_an_output_name_too_long_for_its_hidden_temp_name_is_said_so(capsys, data_root, tmp_path):
    """A 245-character --json said "Folder . is not writable (File name too long)" of a writable folder."""
    run = _train(capsys, data_root, tmp_path / "runs")
    out = tmp_path / ("e" * 245 + ".json")
    assert main(["evaluate", str(run), "--data-root", str(data_root), "--samples", "2", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --json {out.name} is too long a name here") and "not writable" not in err, err
    assert not out.exists()


_COUNT_READS = """
import sys
import time
reads = []
sys.addaudithook(lambda event, args: reads.append(args[1]) if event == "open" and str(args[0]).endswith("last.pt") else None)
from mixsep.cli import main
code = main(sys.argv[1:])
print("reads of last.pt:", len(reads), file=sys.stderr)
sys.exit(code)
"""


def test_a_resume_reads_its_last_checkpoint_once_unless_it_changed(capsys, data_root, tmp_path):
    """`train --run-dir` read last.pt before it wrote anything and the run read it again as it began: twice
    139 MB for a faithful run. Read once now; a last.pt replaced between the two reads is read again."""
    run = _train(capsys, data_root, tmp_path / "runs")
    out = subprocess.run([sys.executable, "-c", _COUNT_READS, "train", "--run-dir", str(run), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "reads of last.pt: 1\n" in out.stderr, out.stderr

    from mixsep.train import read_resume_point
    last = run / "checkpoints" / "last.pt"
    first = read_resume_point(run)
    again = read_resume_point(run)
    assert again is first  # the same file, unchanged: not read again
    import torch
    torch.save(dict(first, step=first["step"] + 1), last)  # another last.pt in its place (a run resumed meanwhile)
    assert read_resume_point(run)["step"] == first["step"] + 1


def test_a_stdout_that_cannot_be_written_is_one_sentence_and_the_files_are_written(capsys, data_root, tmp_path):
    """`> /dev/full` (or a full disk under a redirect): print() raised OSError, which names no file, and came
    out as a traceback; evaluate's files were not written at all."""
    run = _train(capsys, data_root, tmp_path / "runs")
    out = tmp_path / "e.json"
    for argv in (["info", "--data-root", str(data_root)],
                 ["evaluate", str(run), "--data-root", str(data_root), "--samples", "8", "--json", str(out)]):
        with open("/dev/full", "w") as full:
            p = subprocess.run([sys.executable, "-m", "mixsep", *argv], stdout=full, stderr=subprocess.PIPE,
                               text=True, timeout=300)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1] == (f"error: could not write to standard output (No space left on "
                                                     f"device); what {argv[0]} printed there is lost."), p.stderr
    assert json.loads(out.read_text())["checkpoint"]["step"] > 0  # the table was lost, not the file


def test_an_output_whose_folder_is_a_broken_link_or_a_file_is_named_so(capsys, tmp_path):
    """`--json loop/e.json` with `loop` a link leading back to itself said "Folder loop does not exist"."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "file").write_text("the user's own")
    for folder, says in (("loop", "is a link that leads nowhere"), ("dangling", "is a link that leads nowhere"),
                         ("file", "is not a folder")):
        assert main(["evaluate", str(tmp_path), "--json", str(tmp_path / folder / "e.json")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{tmp_path / folder} {says}" in err, err
    assert (tmp_path / "file").read_text() == "the user's own"


@pytest.mark.parametrize("flags, project", [
    (["--model", "tiny", "--no-pretrained", "--data-root", "{tmp}/no-data"], False),
    (["--model", "tiny", "--no-pretrained", "--data-root", "{data}", "--batch-size", "9999"], False),
    (["--data-root", "{tmp}/no-data"], True),  # a project's own config.json there: still no run
    (["--data-root", "{data}", "--max-minutes", "0.01"], True),  # it trained into it, and wrote over its config
])
def test_train_refused_in_a_folder_of_the_users_that_holds_no_run_leaves_it_as_it_was(capsys, data_root, tmp_path,
                                                                                      flags, project):
    """`train --run-dir FOLDER` into an existing folder of the user's (notes in it, no run), refused once the
    command held the folder (no data there; a batch larger than the data): it exits 2 with one sentence, and the
    folder gained a .lock and a status.json marked failed."""
    from conftest import tree

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    if project:
        (mine / "config.json").write_text('{"project": 1}')  # a project's own config, not a run's
    before = tree(mine)
    args = [f.format(tmp=tmp_path, data=data_root) for f in flags]
    assert main(["train", "--run-dir", str(mine), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    if project:
        assert err == (f"error: {mine / 'config.json'} names no mixsep setting ('project'), so it is not a mixsep "
                       "run's config.json; give --run-dir a run folder, or a new or empty folder for a new run.\n")
    assert tree(mine) == before


@pytest.mark.parametrize("files, says", [
    ({"metrics.csv": "epoch,my_accuracy\n1,0.93\n"}, "metrics.csv of its own, which a new run there would write "
                                                        "over; move it away"),
    ({"status.json": '{"job": "keep me"}', "STOP": "a note"}, "status.json and STOP of its own, which a new run there "
                                                              "would write over; move them away"),
    ({"status.json": '{"state": "running", "job": "x"}'}, "status.json of its own, which a new run there would write "
                                                          "over; move it away"),  # a state mixsep writes, not its file
])
def test_a_new_run_in_a_folder_holding_files_of_the_users_under_a_runs_names_is_refused(capsys, data_root, tmp_path,
                                                                                          files, says):
    """QA: `train --run-dir FOLDER` into a folder with no config.json wrote over the user's own metrics.csv and
    status.json, and removed their STOP, with exit 0 and no word."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, text in files.items():
        (mine / name).write_text(text)
    before = conftest.tree(mine)
    assert main(["train", "--run-dir", str(mine), "--data-root", str(data_root), *TINY]) == 2
    assert capsys.readouterr().err == (f"error: {mine} holds no mixsep run but holds {says}, or give --run-dir a new "
                                       "or empty folder.\n")
    assert conftest.tree(mine) == before


def test_what_a_run_that_never_wrote_its_config_leaves_is_trained_over(capsys, data_root, tmp_path):
    """A trainer killed before it wrote config.json leaves mixsep's own status.json, a metrics.csv of the header
    alone and an empty STOP: they are no one's else, and a new run there trains."""
    from mixsep import run as R

    left = tmp_path / "left"
    left.mkdir()
    R.MetricsLog(left).open(0).close()
    R.write_status(left, R.State.RUNNING, step=0)
    R.request_stop(left)
    assert not R.is_run(left) and R.users_own_files(left) == []
    assert main(["train", "--run-dir", str(left), "--data-root", str(data_root), *TINY, "--train-size", "32"]) == 0
    assert R.is_mixsep_run(left)


def test_the_top_of_the_file_system_or_the_home_folder_is_no_new_runs_folder(capsys, data_root, tmp_path,
                                                                             monkeypatch):
    """QA: `--run-dir "$BASE/"` with BASE unset trained a run into / (as root), and every train and resume on the
    machine was then refused as a run inside the run folder /."""
    from mixsep.cli import _a_new_runs_folder

    with pytest.raises(MixsepError, match="^--run-dir / is the top of the file system, and a run folder holds one "
                                          "run's files alone; name a new folder for the run.$"):
        _a_new_runs_folder("/", Path("/"))  # the check itself: a command that got past it would write into /
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert main(["train", "--run-dir", "~", "--data-root", str(data_root), *TINY]) == 2
    assert capsys.readouterr().err == (f"error: --run-dir {home} is your home folder, and a run folder holds one run's "
                                       "files alone; name a new folder for the run.\n")
    assert list(home.iterdir()) == []


def test_a_run_folder_named_with_control_characters_is_written_out_on_stderr(capsys, data_root, tmp_path):
    """QA: the error line wrote a newline or an ESC out, but "run folder: ...", "resuming ..." and the notes printed
    them raw (a name ran over two lines; an ESC recoloured the terminal). stdout's last line stays the path itself."""
    run = tmp_path / "runs" / "nl\nrun\x1b[31m"
    for _ in range(2):  # trained, then resumed (finished: "resuming ... with its saved config")
        assert main(["train", "--data-root", str(data_root), "--run-dir", str(run), *TINY]) == 0
        out, err = capsys.readouterr()
        assert "\x1b" not in err and all(line.startswith(("run folder: ", "resuming ", "warning: ", "note: ", "final "))
                                         for line in err.splitlines()), err
        assert f"run folder: {str(run)[:-len('nl.run.[31m')]}nl\\nrun\\x1b[31m" in err, err
        assert out.endswith(f"{run}\n")


def test_a_ctrl_c_raised_where_python_cannot_raise_is_asked_again_not_lost():
    """A sweep's second Ctrl-C landed inside an import lock's weakref callback: Python printed "Exception ignored in:
    <function _get_module_lock.<locals>.cb>" with a traceback and dropped the quit (seen once in the suite). Here a
    callback raises the handler's exception as that one did; the command must still stop, with no traceback."""
    script = r'''
import signal, sys, time, weakref
from mixsep.errors import SecondInterrupt, interrupts_never_dropped

def on_signal(signum, frame):
    raise SecondInterrupt
signal.signal(signal.SIGINT, on_signal)

class Thing:
    pass

def callback(ref):  # as the handler's raise inside importlib's callback
    raise SecondInterrupt

with interrupts_never_dropped():
    try:
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing
        time.sleep(20)
        print("not stopped")
    except SecondInterrupt:
        print("stopped")
'''
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "stopped" and "Exception ignored" not in done.stderr, done.stdout + done.stderr
    assert time.monotonic() - started < 15
