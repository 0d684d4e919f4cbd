"""The bench scripts' bad inputs: one sentence on stderr, exit 2, before any measuring, and no file of the user's
changed (the CLI's rules for output files, tests/test_cli.py, hold for every bench --json too)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BENCH



def digest(folder: Path) -> dict:
    """Every file under folder with its bytes' hash: what a refused command must leave as it was."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def user_files(data_root, tmp_path):
    """A user's files a bench --json could name: a plain file, a run folder's config.json, the data."""
    (tmp_path / "mine.json").write_text('{"keep": true}\n')
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "tiny"}\n')
    return {"D": str(data_root), "F": str(tmp_path / "mine.json"), "R": str(run), "T": str(tmp_path)}


REFUSED = [  # (script, arguments with D/F/R/T for the data root, a user's file, a run, the test folder; what it says)
    # H1: an existing file only with --overwrite; never a run's own file or a data file
    ("quality", "--data-root D --dry-run --json F", "F exists already; pass --overwrite to replace it"),
    ("quality", "--data-root D --dry-run --json R/config.json --overwrite", "is the run's own config.json"),
    ("quality", "--data-root D --dry-run --json D/MNIST/raw/train-images-idx3-ubyte.gz --overwrite",
     "is one of the data files under D"),
    ("quality", "--data-root D --dry-run --score R --json R/config.json --overwrite", "is the run's own config.json"),
    ("run", "--data-root D --dry-run --json F", "F exists already; pass --overwrite"),
    ("run", "--data-root D --dry-run --json D/MNIST/raw/new.json", "is one of the data files under D"),
    ("compile", "--data-root D --model tiny --batch-size 16 --train-size 96 --json F", "F exists already"),
    ("contention", "--model tiny --json F", "F exists already"),
    ("dashboard_bench", "--data-root D --model tiny --json F", "F exists already"),
    ("watch_cores", "--data-root D --json F", "F exists already"),
    ("watch_cores", "--data-root D --rounds 0", "--rounds must be at least 1 (got 0)."),
    ("watch_cores", "--data-root D --window nan", "--window must lie in (0, 3600] seconds and --settle in [0, 600] "
                                                  "(got nan and 12)."),
    ("watch_cores", "--data-root D --window inf", "(got inf and 12)"),  # a traceback, or a trainer blamed for it
    ("watch_cores", "--data-root D --settle 1e300", "(got 40 and 1e+300)"),
    ("watch_cores", "--data-root T/none", "No MNIST train data under T/none"),
    # M1: a folder that cannot be written, found before the measurement (/proc takes no new file, even for root)
    ("run", "--data-root D --dry-run --json /proc/b.json", "Folder /proc is not writable"),
    ("quality", "--data-root D --dry-run --json /proc/q.json", "Folder /proc is not writable"),
    ("contention", "--model tiny --json /proc/c.json", "Folder /proc is not writable"),
    # M2: zero counts
    ("dashboard_bench", "--data-root D --model tiny --rounds 0", "--rounds must be at least 1 (got 0)."),
    ("checkpoints", "--data-root D --model tiny --batch-size 0", "--batch-size must be at least 1 (got 0)."),
    ("checkpoints", "--data-root D --model tiny --rounds 0", "--rounds must be at least 1 (got 0)."),
    ("cache_hash", "--data-root D --repeats 0", "--repeats must be at least 1 (got 0)."),
    # M4: negative counts were read as the default
    ("run", "--data-root D --dry-run --threads -3", "--threads must be 0 (torch's default) or more (got -3)."),
    ("run", "--data-root D --dry-run --rounds -5", "--rounds must be 0 (the mode's) or more (got -5)."),
    ("quality", "--data-root D --dry-run --threads -2", "--threads must be 0 (torch's default) or more (got -2)."),
    ("variants", "--data-root D --variant tiny --train-size 64 --threads -1", "--threads must be 0"),
    ("checkpoints", "--data-root D --model tiny --threads -4", "--threads must be 0"),
    # M5: flags a mode ignores
    ("quality", "--data-root D --dry-run --score R --model bogus --epochs 7 --lr 0.1",
     "--score R trains nothing, so --model, --epochs, --lr would be ignored; leave them out."),
    ("quality", "--data-root D --dry-run --batch-size 8", "--dry-run trains one epoch at batch 16, so --batch-size"),
    ("variants", "--data-root D --variant tiny --train-size 64 --flips --diagnose",
     "--flips and --diagnose score a trained run's weights, which only --run names"),
    ("variants", "--data-root D --run R --variant tiny --epochs 1",
     "--run R trains nothing, so --variant, --epochs would be ignored"),
    # H3: a training size of 0 is every image: nothing left to validate on
    ("variants", "--data-root D --variant tiny --train-size 0", "--train-size 0 trains on all 96 CIFAR training"),
    # L1-L4
    ("quality", "--data-root D --minutes nan", "--minutes must be a finite number, 0 (no budget) or more (got nan); "
                                               "leave it out for 15."),
    ("checkpoints", "--data-root D --model tiny --epochs 0", "Epochs must lie in [1, 100000] (got 0)"),
    ("cache_hash", "--data-root T/none", "No MNIST train data under T/none"),
    ("cache_hash", "--data-root F", "The data root F is a file, not a folder"),
    ("contention", "--model tiny --batch-size 2000000000", "--batch-size must be at most 4096 (got 2000000000)"),
    ("run", "--data-root D --dry-run --json ", "--json is empty; name a file (or leave the flag out for its default)."),
    ("run", "--data-root  --dry-run", "--data-root is empty; name a folder (or leave the flag out for its default)."),
    ("compile", "--data-root  --model tiny", "--data-root is empty; name a folder"),
]


@pytest.mark.parametrize("script,line,says", REFUSED, ids=[f"{s}:{a}" for s, a, _ in REFUSED])
def test_a_bad_input_is_one_sentence_and_changes_nothing(bench, user_files, tmp_path, capsys, script, line, says):
    fill = lambda text: re.sub(r"\b[DFRT]\b", lambda m: user_files[m.group()], text)  # noqa: E731
    argv = [fill(a) for a in line.split(" ")]
    before, mine = digest(tmp_path), set(os.listdir(tmp_path))
    assert bench(script).main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and fill(says) in err, err
    assert "samples/s" not in out and "step " not in out  # refused before any measuring
    assert digest(tmp_path) == before and set(os.listdir(tmp_path)) == mine  # no file changed, none added


def test_overwrite_replaces_a_file_and_a_late_write_failure_is_one_sentence(bench, data_root, tmp_path, capsys):
    quality = bench("quality")
    mine = tmp_path / "q.json"
    mine.write_text("old\n")
    args = ["--data-root", str(data_root), "--dry-run", "--runs-dir", str(tmp_path / "runs"), "--json", str(mine)]
    assert quality.main([*args, "--overwrite"]) == 0
    assert json.loads(mine.read_text())["config"]["model"] == "unet"
    from mixsep import MixsepError

    lib = bench("benchlib")
    with pytest.raises(MixsepError, match=r"^--json .*gone/x\.json could not be written \(No such file or directory\)"):
        lib.write_output(tmp_path / "gone" / "x.json", "{}")


def test_variants_refuses_a_run_trained_on_every_training_image(bench, tiny_config, tmp_path, capsys):
    from mixsep.train import Training

    assert tiny_config.train_size == 0  # all 96
    training = Training(tiny_config, tmp_path / "all")
    for _ in training.steps():
        pass
    variants = bench("variants")
    assert variants.main(["--data-root", tiny_config.data_root, "--run", str(tmp_path / "all"), "--diagnose"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained on every CIFAR training image (train_size 0), so none is left" in err


def test_startup_never_removes_what_was_there_before_and_passes_on_exit_2(bench, tmp_path, capsys):
    startup = bench("startup")
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "photo.txt").write_text("precious")
    # in full, as --flag=value, and abbreviated as mixsep's parser takes it (--ou was missed, and removed after round 1)
    for cmd in (["grid", "RUN", "--out", str(canary)], ["evaluate", "RUN", f"--json={canary / 'photo.txt'}"],
                ["grid", "RUN", "--ou", str(canary)], ["evaluate", "RUN", f"--mark={canary / 'photo.txt'}"]):
        assert startup.main(["--before", str(BENCH.parent), "--rounds", "1", "--", *cmd]) == 2
        err = capsys.readouterr()
        assert err.err.startswith("error: ") and err.err.count("\n") == 1 and "exists already" in err.err
        assert not err.out  # before the first round
        assert (canary / "photo.txt").read_text() == "precious"
    # a command mixsep refuses (exit 2, a user's mistake) is exit 2 here too, not 1
    assert startup.main(["--before", str(BENCH.parent), "--rounds", "1", "--", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `mixsep bogus` failed at") and "(exit 2)" in err and err.count("\n") == 1


def test_sweep_workers_checks_its_own_inputs_first_with_exit_2(bench, tmp_path, capsys):
    sweep_workers = bench("sweep_workers")
    assert sweep_workers.main(["--data-root", str(tmp_path / "none"), "--rounds", "1", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No MNIST train data under") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        sweep_workers.main(["--data-root", str(tmp_path), "--val-size", "-5"])
    assert e.value.code == 2 and "--val-size at least 1" in capsys.readouterr().err


def test_cache_hash_removes_its_cache_folder(data_root, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(BENCH.parent)}
    for repeats, rc in (("1", 0), ("0", 2)):
        done = subprocess.run([sys.executable, str(BENCH / "cache_hash.py"), "--data-root", str(data_root),
                               "--repeats", repeats], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == rc, done.stderr
        assert list(scratch.iterdir()) == []  # ~100 MB a run on the real data, left in /tmp before


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="the bench checks for Chromium first")
def test_dashboard_bench_checks_the_data_root_before_starting_anything(bench, tmp_path, capsys, monkeypatch):
    pytest.importorskip("playwright")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    dash = bench("dashboard_bench")
    assert dash.main(["--data-root", str(tmp_path / "none"), "--model", "tiny", "--train-size", "32",
                      "--batch-size", "16", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No MNIST train data under") and err.count("\n") == 1
    assert "bench.log" not in err and sorted(p.name for p in tmp_path.iterdir()) == []  # no server, no round
