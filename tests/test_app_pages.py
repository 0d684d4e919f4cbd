"""Every dashboard page under Streamlit's AppTest, on tiny data in the real formats."""
from __future__ import annotations

import base64
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import conftest
from conftest import make_data_root, seen, unblock_fifo
from streamlit.testing.v1 import AppTest

from mixsep import MixsepError, TrainConfig
from mixsep.model import build_model
from mixsep.run import METRIC_FIELDS, disk_usage, identity, save_checkpoint, write_status
from mixsep.runs import live_runs, read_metrics
from mixsep.separate import png_bytes
from mixsep.train import train_steps

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["dashboard.py", "app_pages/1_Train.py", "app_pages/2_Samples.py", "app_pages/3_Metrics.py", "app_pages/4_Compare.py",
         "app_pages/6_Separate.py"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny data root and one finished 3-step run, trained once in this process."""
    base = tmp_path_factory.mktemp("app")
    mp = pytest.MonkeyPatch()
    mp.setenv("MIXSEP_CACHE_DIR", str(base / "cache"))
    data = make_data_root(base / "data")
    config = TrainConfig(data_root=str(data), model="tiny", train_size=24, batch_size=8, pretrained=False,
                         device="cpu", checkpoint_every=2, checkpoint_seconds=0)  # 3 small steps: a CPU step costs seconds when the machine is shared
    for _ in train_steps(config, base / "runs" / "tiny-run"):
        pass
    mp.undo()
    return data, base / "runs" / "tiny-run"


@pytest.fixture
def app_env(trained, tmp_path, monkeypatch):
    """MIXSEP_* pointing at the tiny data and a fresh runs folder holding a copy of the run."""
    data, run = trained
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / run.name)
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(data))
    monkeypatch.setenv("MIXSEP_RUNS_DIR", str(runs))
    monkeypatch.syspath_prepend(str(ROOT))  # `streamlit run` puts the app folder on sys.path; AppTest does not
    yield data, runs
    import mixsep_ui  # never leave a training child behind, even one still starting

    jobs = mixsep_ui.registry(runs)
    pids = {int(s["pid"]) for _, s in live_runs(runs)} | ({jobs._pid} if jobs._alive() else set())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    if jobs._proc is not None:
        jobs._proc.wait(10)


def open_page(page: str, **query) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    if page != "dashboard.py":
        at.query_params.update(query)
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return " | ".join(str(e.value) for e in elements)


def chart_x(at: AppTest, index: int = 0, trace: int = -1) -> list:
    """The x values of a plotly chart's trace (plotly ships numpy arrays base64-encoded)."""
    charts = at.get("plotly_chart")
    if len(charts) <= index:
        return []
    data = json.loads(charts[index].proto.spec)["data"]
    if not data:
        return []
    x = data[trace]["x"]
    if isinstance(x, dict):
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"]).tolist()
    return list(x)


def chart_points(at: AppTest, index: int = 0, trace: int = -1) -> int:
    """Points in a plotly chart's trace."""
    return len(chart_x(at, index, trace))


def poll(at: AppTest, until, timeout: float = 120.0, what: str = "condition") -> AppTest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if until(at):
            return at
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {texts(at.error)} {texts(at.info)}")


def widget(widgets, label: str):
    return next(w for w in widgets if w.label.startswith(label))


# --------------------------------------------------------------------------- pages render


@pytest.mark.parametrize("argv, says", [
    (["--data-rot", "X", "--bogus"], "The server was started with `--data-rot X --bogus`, which the dashboard does not "
     "know; the dashboard takes `--data-root DIR` and `--runs-dir DIR` after `--`. Start it again with `--data-root` for "
     "`--data-rot`, and without `--bogus`."),  # a typo is told its spelling ("without them" dropped the folder: QA)
    (["--runs-dri=R"], "with `--runs-dri=R`, which the dashboard does not know; the dashboard takes `--data-root DIR` "
     "and `--runs-dir DIR` after `--`. Start it again with `--runs-dir` for `--runs-dri`."),
    (["--data-root", "D", "--data-rot", "X"], "`--data-rot X`, which the dashboard does not know; the dashboard takes "
     "`--data-root DIR` and `--runs-dir DIR` after `--`. Start the server again without them."),  # not a second --data-root
    (["--data-root", "D", "--verbose"], "`--verbose`, which the dashboard does not know; the dashboard takes "
     "`--data-root DIR` and `--runs-dir DIR` after `--`. Start the server again without it."),  # one word: "it"
    (["--runs-dir", ""], "The server was started with an empty `--runs-dir` (it would be the server's own folder)"),
    (["--data-root"], "The server was started with `--data-root` and no folder after it"),
])
def test_the_servers_own_flags_are_checked_as_the_clis_are(app_env, monkeypatch, capfd, argv, says):
    """`streamlit run dashboard.py -- --data-rot X` served ./data without a word (the Download button would fill it),
    and `-- --runs-dir ""` trained into the server's own folder: every page now says the mistake, and stops."""
    data, runs = app_env
    monkeypatch.setattr("sys.argv", [str(ROOT / "dashboard.py"), *argv])  # as `streamlit run` sets it
    for page in ("dashboard.py", "app_pages/1_Train.py"):
        at = open_page(page)
        assert len(at.error) == 1 and says in at.error[0].value, texts(at.error)  # flags as code: copied as typed
        assert "\u2060" not in at.error[0].value
        assert not at.button and not at.selectbox  # nothing to start, nothing to pick
    # and the terminal that started the server says it too, once for all the pages opened (it said nothing: QA)
    assert capfd.readouterr().err.count(says) == 1
    monkeypatch.setattr("sys.argv", [str(ROOT / "dashboard.py"), "--runs-dir", str(runs)])
    at = open_page("app_pages/1_Train.py")
    assert not at.error and widget(at.selectbox, "Run").value == "tiny-run"


def test_home_shows_data_device_and_runs(app_env):
    at = open_page("dashboard.py")
    assert "All four source/split sets found" in texts(at.success)
    found = at.dataframe[0].value
    assert list(found["found"]) == ["yes"] * 4
    runs = at.dataframe[1].value
    assert list(runs["run"]) == ["tiny-run"] and "finished" in runs["state"][0] and runs["progress"][0] == "3/3"
    lr_format = json.loads(at.dataframe[1].proto.columns)["lr"]["type_config"]["format"]
    assert lr_format == "%.2g"  # as the Train page's slider shows it: 0.012, not 1e-02
    assert "CPU only (" in texts(at.markdown) or "GPU: " in texts(at.markdown)  # filled in last (torch)


def test_the_pages_that_need_no_torch_show_themselves_before_it_loads():
    """A server's first page waited for torch (4.5 s on a 2-core CPU): mixsep_ui imported the jobs, which imported
    the trainer, and mixsep.data imported torch at its top. What Home, Train, Compare and Sweep import before they
    show anything now loads none of it (Home imports torch last, for its Device line: its first content came in
    about half the time in Chromium, 4.2 to 5.0 s against 8.4 to 8.9, cold servers side by side)."""
    import ast

    leading = []
    for page in ("dashboard.py", "home.py", "app_pages/1_Train.py", "app_pages/4_Compare.py", "app_pages/5_Sweep.py"):
        for node in ast.parse((ROOT / page).read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                leading.append(ast.unparse(node))
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # past the docstring
                break
    assert "import mixsep_ui as ui" in leading and any(line.startswith("from mixsep.data import") for line in leading)
    code = "\n".join([*leading, "import sys", "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"])
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_folders_with_markdown_characters_show_as_they_are(app_env, tmp_path, monkeypatch):
    """A data root with a backtick broke out of Home's code span (`…/data `tick` *star* [l](u)` showed in mixed
    code and plain text), and "No runs yet in …" on the other pages put a runs folder through markdown unescaped
    (italics, a link, characters gone). Each path is now one code span whose fence is longer than any run of
    backticks in it (checked by eye in Chromium, too)."""
    import mixsep_ui

    data, runs = app_env
    odd = tmp_path / "d `tick` *star* [l](u) ``x"
    shutil.copytree(data, odd)
    empty = tmp_path / "runs *b* [x](http:/e) `t`"
    monkeypatch.setattr("sys.argv", [str(ROOT / "dashboard.py"), "--data-root", str(odd), "--runs-dir", str(empty)])
    assert mixsep_ui.code_span("a `b` c") == "``a `b` c``" and mixsep_ui.code_span("`x") == "`` `x ``"
    home = open_page("dashboard.py")
    assert f"Data root: ```{odd}```" in texts(home.markdown), texts(home.markdown)
    assert f"All four source/split sets found under ```{odd}```." in texts(home.success)
    assert f"No runs yet in `` {empty} ``: start" in texts(home.info)  # a space pads a path that ends in a backtick
    for page in ("app_pages/2_Samples.py", "app_pages/4_Compare.py"):
        assert f"No runs yet in `` {empty} ``. Start one on the Train page." in texts(open_page(page).info)
    # with no data there, the download command in full: a backtick cut it short, and it named another folder
    monkeypatch.setattr("sys.argv", [str(ROOT / "dashboard.py"), "--data-root", str(odd / "new"), "--runs-dir", str(empty)])
    said = texts(open_page("dashboard.py").warning)
    command = f"python -m mixsep download --data-root {shlex.quote(str(odd / 'new'))}"
    assert f"are missing under ```{odd / 'new'}``` (the table" in said and f"as does ```{command}``` where" in said, said


def test_home_says_how_many_runs_it_leaves_out_and_which_names_it_cannot_list(app_env):
    """57 runs showed as the newest 10 without a word, and runs with odd names were left out unseen."""
    data, runs = app_env
    for i in range(11):
        _broken_run(runs, f"r{i:02d}")
    for odd in ("ünï code", ".hidden-run", "x:y", "-dash"):
        _broken_run(runs, odd)
    at = open_page("dashboard.py")
    assert len(at.dataframe[1].value) == 10
    assert "The 10 newest of 12 runs; Compare lists them all" in [link.label for link in at.get("page_link")]
    note = seen(texts(at.caption)).replace("\u2060", "")  # as a reader sees it
    assert ("Not listed: 4 run folders whose name the pages cannot use (-dash, .hidden-run, x:y, ünï code); "
            "rename them") in note


def test_home_says_which_runs_a_link_leading_out_of_the_runs_folder_hides_and_why(app_env, tmp_path):
    """Runs under a group folder that links out of the runs folder were said to have names the pages cannot use;
    the names were fine. A link back into the runs folder hides nothing: its runs are listed by their own names."""
    data, runs = app_env
    for name in ("r1", "r2"):
        shutil.copytree(runs / "tiny-run", tmp_path / "elsewhere" / name)
    (runs / "ext").symlink_to(tmp_path / "elsewhere")
    (runs / "solo").symlink_to(tmp_path / "elsewhere" / "r1")
    shutil.copytree(runs / "tiny-run", runs / "study" / "trial-0001")
    (runs / "alias").symlink_to(runs / "study")
    _broken_run(runs, "x:y")
    at = open_page("dashboard.py")
    assert set(at.dataframe[1].value["run"]) == {"tiny-run", "study/trial-0001"}
    note = seen(texts(at.caption)).replace("\u2060", "")  # as a reader sees it
    assert "Not listed: 1 run folder whose name the pages cannot use (x:y); rename it" in note
    assert ("Not listed: 3 run folders behind a link that leads out of the runs folder (ext/r1, ext/r2, solo); the "
            "pages open runs inside it only: move or copy them in.") in note
    assert "alias" not in note


def test_home_names_runs_more_than_one_group_folder_deep_and_how_to_list_them(app_env, tmp_path):
    """train --run-dir runs/grp/deep/x warned that the dashboard would not list it, and Home said nothing of it.
    The look goes three folders down at most, through no link, run folder or checkpoints folder."""
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "grp" / "deep" / "x")
    shutil.copytree(runs / "tiny-run", runs / "grp" / "ok")
    shutil.copytree(runs / "tiny-run", runs / "grp" / "a" / "b" / "too-deep")  # four down: past the look
    shutil.copytree(runs / "tiny-run", runs / "tiny-run" / "inner" / "r")  # inside a run: train refuses those
    shutil.copytree(runs / "tiny-run", runs / "lost" / "checkpoints" / "r")  # a run whose config.json is gone
    shutil.copytree(runs / "tiny-run", tmp_path / "elsewhere" / "sub" / "r")
    (runs / "grp" / "link").symlink_to(tmp_path / "elsewhere")
    shutil.copytree(runs / "tiny-run", runs / "sw" / "s1" / "trial-0000")  # a sweep's own runs folder, copied in:
    (runs / "sw" / "optuna.journal").write_bytes(b"")                        # moving its trial up breaks its study
    at = open_page("dashboard.py")
    assert set(at.dataframe[1].value["run"]) == {"tiny-run", "grp/ok"}
    note = seen(texts(at.caption)).replace("\u2060", "")  # as a reader sees it
    assert ("Not listed: 1 run folder more than one group folder deep (grp/deep/x); the pages list RUN and "
            "GROUP/RUN in the runs folder: move it up to GROUP/RUN.") in note
    assert not {"too-deep", "inner", "lost", "link", "trial-0000"} & set(re.findall(r"[\w-]+", note))


def test_train_page_shows_the_last_run(app_env):
    data, runs = app_env
    status = json.loads((runs / "tiny-run" / "status.json").read_text())
    warning = ("ImageNet weights for ResNet-18 could not be loaded (URLError); the encoder starts from random "
               "initialisation. Switch off the pretrained encoder to skip the attempt.")
    (runs / "tiny-run" / "status.json").write_text(json.dumps(dict(status, warnings=[warning])))
    at = open_page("app_pages/1_Train.py")
    assert warning in texts(at.warning)  # the trainer's own words, from status.json
    assert "Finished: 3 steps." in texts(at.success)
    assert chart_points(at) == 3
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert fig["layout"]["xaxis"]["title"]["text"] == "step" and "loss" in fig["layout"]["yaxis"]["title"]["text"]
    names = {t["name"] for t in fig["data"] if t.get("showlegend", True)}
    assert names == {"CIFAR head", "MNIST head", "total"}
    # a log scale, said on the axis: on a linear one every step after the first few lay flat at the bottom (QA)
    assert fig["layout"]["yaxis"]["type"] == "log" and fig["layout"]["yaxis"]["title"]["text"] == "MSE loss (log scale)"
    assert fig["layout"]["yaxis"]["tickformat"] == "~g"  # 0.3 and 0.03 in full: plotly's own ticks read both "3"
    compare = json.loads(open_page("app_pages/4_Compare.py").get("plotly_chart")[0].proto.spec)["layout"]["yaxis"]
    assert (compare["type"], compare["title"]["text"]) == ("log", "MSE loss (log scale)")


def test_a_resume_still_loading_shows_neither_the_last_speed_nor_its_warnings(app_env, tmp_path):
    """QA: after Resume, "Starting: loading the data and the model..." stood over the last trainer's "68 samples/s"
    and a frozen ETA, and over the warning that trainer had recorded (ImageNet weights), while the new one loaded."""
    import mixsep_ui

    data, runs = app_env
    run = runs / "tiny-run"
    old = "ImageNet weights for ResNet-18 could not be loaded (URLError); the encoder starts from random initialisation."
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps(dict(status, state="stopped", message="stopped by request",
                                                     warnings=[old])))
    loading = tmp_path / "loading-python"  # a trainer still importing torch: alive, nothing written yet
    loading.write_text("#!/bin/sh\nexec sleep 60\n")
    loading.chmod(0o755)
    jobs = mixsep_ui.registry(runs)
    jobs.python = str(loading)
    jobs.start(run_dir=run)
    at = open_page("app_pages/1_Train.py")
    assert "Starting: loading the data and the model" in texts(at.info)
    line = at.get("progress")[0].proto.text
    assert line.startswith("step 3/3 · … samples/s · starting") and "ETA" not in line, line
    assert old not in texts(at.warning)


def test_a_run_stopped_before_its_first_step_says_so_under_the_chart(app_env):
    data, runs = app_env
    run = runs / "tiny-run"
    (run / "metrics.csv").unlink()
    write_status(run, "stopped", "stopped by request before training began", step=0, total_steps=3)
    at = open_page("app_pages/1_Train.py")
    assert "Run stopped at step 0" in texts(at.warning)
    assert "Run tiny-run ended before its first step: there is no loss to draw." in texts(at.info)
    assert "appear here with the run's first steps" not in texts(at.info)


@pytest.mark.parametrize("cut", [10, 60])  # inside the header, inside the first row
def test_a_cut_short_metrics_file_is_said_not_read_as_a_run_that_never_stepped(app_env, cut):
    """A finished run whose metrics.csv was cut short read "Finished: 3 steps.", then "step 0/3", then "ended
    before its first step"; status.json's steps are the run's, and the chart says the file holds no row."""
    data, runs = app_env
    with open(runs / "tiny-run" / "metrics.csv", "r+") as f:
        f.truncate(cut)
    at = open_page("app_pages/1_Train.py")
    assert not at.exception and "Finished: 3 steps." in texts(at.success)
    assert at.get("progress")[0].proto.text.startswith("step 3/3 ")
    assert "ended before its first step" not in texts(at.info)
    assert "Run tiny-run took 3 steps, but metrics.csv holds no readable row" in texts(at.warning)


def test_the_pretrained_toggle_is_off_and_greyed_for_a_model_without_a_resnet_encoder(app_env):
    at = open_page("app_pages/1_Train.py")
    assert widget(at.toggle, "ImageNet").value is True and not widget(at.toggle, "ImageNet").disabled
    widget(at.toggle, "ImageNet").set_value(False).run()
    widget(at.selectbox, "Model").set_value("unet_narrow").run()
    toggle = widget(at.toggle, "ImageNet")
    assert toggle.disabled and toggle.value is False and "unet_narrow has none" in toggle.help
    assert at.session_state["train_config"]["pretrained"] is False
    widget(at.selectbox, "Model").set_value("faithful").run()  # the faithful model's own choice is back
    assert widget(at.toggle, "ImageNet").value is False and not widget(at.toggle, "ImageNet").disabled
    widget(at.toggle, "ImageNet").set_value(True).run()
    assert at.session_state["train_config"]["pretrained"] is True


def test_live_updates_can_be_paused_and_the_choice_is_kept(app_env):
    at = open_page("app_pages/1_Train.py")
    live = widget(at.radio, "Live updates")
    assert live.options == ["Auto", "2 s", "5 s", "15 s", "Paused"] and live.value == "Auto"
    live.set_value("Paused").run()
    assert not at.exception and "Finished: 3 steps." in texts(at.success) and chart_points(at) == 3
    at.switch_page("app_pages/2_Samples.py").run()
    at.switch_page("app_pages/1_Train.py").run()
    assert widget(at.radio, "Live updates").value == "Paused"  # kept across pages, like the settings


def test_separate_page_shows_each_upload_refuses_bad_ones_and_writes_nothing(app_env):
    data, runs = app_env
    before = sorted((p, p.stat().st_size) for root in (data, runs) for p in root.rglob("*"))
    at = open_page("app_pages/6_Separate.py")
    assert not at.image and "python -m mixsep separate" in texts(at.caption)  # nothing uploaded yet
    rng = np.random.default_rng(0)
    mixtures = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    at.file_uploader[0].set_value([("a.png", png_bytes(mixtures[0]), "image/png"),
                                   ("big.png", png_bytes(np.zeros((40, 32, 3), np.uint8)), "image/png"),
                                   ("notes.png", b"not an image", "image/png"),
                                   ("b.png", png_bytes(mixtures[1]), "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = texts(at.error)
    assert "big.png is 32x40 pixels; a mixture must be 32x32" in errors
    assert "notes.png is not an image file of a format mixsep reads" in errors
    assert len(at.image) == 6  # a.png and b.png: mixture, digit, image each
    assert [b.label for b in at.get("download_button")] == ["Digit (PNG)", "Image (PNG)"] * 2
    assert "2 image(s)" in texts(at.caption) and "mode projection_uniform" in texts(at.caption)
    widget(at.selectbox, "Recovery mode").set_value("direct").run()
    assert not at.exception and "mode direct" in texts(at.caption) and len(at.image) == 6
    after = sorted((p, p.stat().st_size) for root in (data, runs) for p in root.rglob("*"))
    assert after == before  # uploads stay in memory: the server wrote nothing


def test_samples_page_grid_pages_and_download(app_env):
    at = open_page("app_pages/2_Samples.py")
    assert len(at.image) == 2 and at.get("download_button")  # two strips of 10 on screen, one PNG
    assert "Page 1 of 3" in texts(at.caption)  # 48 test pairs, 20 per page
    widget(at.button, "Next").click().run()
    assert "Page 2 of 3" in texts(at.caption)
    widget(at.button, "Next").click().run()
    assert "Page 3 of 3" in texts(at.caption) and widget(at.button, "Next").disabled  # no page 4 of 3
    assert len(at.image) == 1 and "(test split, page 3)" in texts(at.caption)  # pairs 40-47: not 0-11 after them
    widget(at.toggle, "Shuffle").set_value(True).run()
    assert "Page 1 of 3" in texts(at.caption) and "seed 0" in texts(at.caption)
    widget(at.toggle, "Error maps").set_value(True)
    widget(at.radio, "Split").set_value("train").run()
    assert not at.exception and "train pairs" in texts(at.caption)
    # it trained on 24 of the 96: the page showed all 96 as its training pairs without a word
    assert "96 train pairs, shuffled with seed 0 · the run trained on pairs 0-23 only (its training size); the " \
        "others are new to it" in texts(at.caption)
    widget(at.slider, "Samples").set_value(4).run()
    assert len(at.image) == 1
    widget(at.button, "Next").click().run()
    at.switch_page("app_pages/1_Train.py").run()  # another page and back: the settings and the page are kept
    at.switch_page("app_pages/2_Samples.py").run()  # (they went back to their defaults, page 1)
    assert (widget(at.radio, "Split").value, widget(at.toggle, "Error maps").value, widget(at.toggle, "Shuffle").value,
            widget(at.slider, "Samples").value) == ("train", True, True, 4)
    assert "Page 2 of" in texts(at.caption)


def test_a_scoring_goes_on_when_its_page_is_left_and_is_not_started_again(app_env, monkeypatch):
    import threading

    import mixsep.metrics
    import mixsep_ui

    release, calls, real = threading.Event(), [], mixsep.metrics.evaluate

    def held(*args, **kwargs):  # the real scoring, held back until the page has been left
        calls.append(threading.current_thread().name)
        release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(mixsep.metrics, "evaluate", held)
    at = open_page("dashboard.py")
    before = mixsep_ui._Scoring.started
    at.switch_page("app_pages/3_Metrics.py")
    for _ in range(10):  # the page is left while it scores (its script is stopped), or before, on a slow machine
        with pytest.raises(RuntimeError, match="timed out"):
            at.run(timeout=3)
        if calls:
            break
    scoring = [t for t in threading.enumerate() if t.name == "mixsep-scoring"]
    assert len(scoring) == 1 and scoring[0].is_alive()  # the scoring was not stopped with the page
    release.set()
    scoring[0].join(60)
    assert not scoring[0].is_alive()
    at.run()  # the page again: the scores are there, not scored from pair 0 again
    assert not at.exception and any(c.proto.text.startswith("Scored 48 test pairs") for c in at.get("progress")), \
        [c.proto.text for c in at.get("progress")]
    assert calls == ["mixsep-scoring"] and mixsep_ui._Scoring.started == before + 1


def test_metrics_page_table_charts_audit(app_env):
    at = open_page("app_pages/3_Metrics.py")
    table = at.dataframe[0].value
    assert len(table) == 10 and set(table["mode"]) >= {"direct", "subtraction", "mixture"}
    assert (table["n"] == 48).all()  # default: the whole test split
    assert len(at.get("plotly_chart")) == 4
    # the sources as the other pages name them (it read mnist, cifar here); the charts' legends too
    assert set(table["source"]) == set(at.dataframe[1].value["source"]) == {"MNIST", "CIFAR"}
    assert {t["name"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]} == {"MNIST", "CIFAR"}
    # ticks short enough for five side by side on a phone ("subtraction projection projection" ran together)
    assert chart_x(at, 0) == ["direct", "subtract", "proj.<br>uniform", "proj.<br>optimal", "mixture"]
    assert "48.13 dB" in texts(at.info)
    audit = at.dataframe[1].value
    assert (audit["report-style PSNR (dB)"] - audit["honest PSNR (dB)"] > 40).all()
    assert len(at.get("download_button")) == 2
    widget(at.number_input, "Test pairs").set_value(10).run()
    assert (at.dataframe[0].value["n"] == 10).all()


def test_metrics_shows_a_blank_not_none_for_the_ci_of_one_pair(app_env):
    """One pair scored has no 95% CI: the table showed the word "None" in its CI columns."""
    at = open_page("app_pages/3_Metrics.py")
    widget(at.number_input, "Test pairs").set_value(1).run()
    table = at.dataframe[0].value
    assert (table["n"] == 1).all() and table["psnr_ci95"].isna().all()
    assert at.dataframe[0].proto.HasField("placeholder") and at.dataframe[0].proto.placeholder == ""


def test_compare_page_curves_and_table(app_env):
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "tiny-run-2")
    at = open_page("app_pages/4_Compare.py")
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"]) == 2
    assert chart_points(at) == 3
    assert set(at.dataframe[0].value["run"]) == {"tiny-run", "tiny-run-2"}
    assert json.loads(at.dataframe[0].proto.columns)["lr"]["type_config"]["format"] == "%.2g"
    widget(at.toggle, "Test PSNR").set_value(True).run()
    assert not at.exception
    assert at.dataframe[0].value["cifar PSNR"].notna().all()
    columns = json.loads(at.dataframe[0].proto.columns)  # how many pairs, where Metrics scores every one by default
    # the box goes up to the split's 48 pairs: it went up to 100,000, and 2,000 typed read "(2000 pairs)" over 48
    assert widget(at.number_input, "Test pairs to score").max == 48
    assert columns["cifar PSNR"]["label"] == "CIFAR PSNR (48 pairs)" and "first 48 test pairs" in \
        columns["cifar PSNR"]["help"]
    widget(at.number_input, "Test pairs to score").set_value(20).run()
    assert json.loads(at.dataframe[0].proto.columns)["cifar PSNR"]["label"] == "CIFAR PSNR (20 pairs)"
    assert (columns["last_loss"]["label"], columns["best_loss"]["label"]) == ("last loss (raw)", "best loss (EMA 0.90)")
    long = runs / "tiny-run-2" / "metrics.csv"  # a 20-epoch run's 15,000 rows: at most 1,500 points are sent
    long.write_text(",".join(METRIC_FIELDS) + "\n" + "".join(f"{i},0,0.1,0.2,{1 / i},0.001,100,{i}\n"
                                                              for i in range(1, 15_001)))
    at.run()
    short, drawn = sorted(chart_points(at, trace=t) for t in (0, 1))
    assert short == 3 and 1000 < drawn <= 1500


def test_compare_sends_fewer_points_a_run_the_more_runs_are_picked(app_env):
    """76 runs of 1,250 points took a second a click for the browser to redraw: the chart's points are budgeted,
    each run's curve still from its first step to its last."""
    import mixsep_ui as ui

    data, runs = app_env
    steps = 4_000
    (runs / "tiny-run" / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n" + "".join(
        f"{i},0,0.1,0.2,{1 / i},0.001,100,{i}\n" for i in range(1, steps + 1)))
    names = ["tiny-run"] + [f"copy-{i:02d}" for i in range(1, 40)]
    for name in names[1:]:
        shutil.copytree(runs / "tiny-run", runs / name)
    at = open_page("app_pages/4_Compare.py", run=names)
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"]) == 40
    counts = [chart_points(at, trace=t) for t in range(len(names))]
    assert all(300 <= n <= 600 for n in counts), counts  # 24,000 points in all
    assert sum(counts) <= ui.COMPARE_POINTS
    assert chart_x(at, trace=0)[0] == 1 and chart_x(at, trace=0)[-1] == steps  # the first step and the last
    at.query_params.clear()
    at.query_params["run"] = names[:2]
    at.run()
    assert [chart_points(at, trace=t) for t in (0, 1)] == [chart_points(at, trace=1)] * 2
    assert 1000 < chart_points(at, trace=0) <= 1500  # two runs: each as detailed as before


def test_compare_keeps_its_runs_and_settings_from_page_to_page_but_not_a_delete(app_env):
    data, runs = app_env
    for name in ("a-run", "b-run", "c-run"):
        shutil.copytree(runs / "tiny-run", runs / name)
    at = open_page("app_pages/4_Compare.py")
    assert len(at.multiselect(key="compare_runs_all runs").value) == 3  # the first three, by default
    at.multiselect(key="compare_runs_all runs").set_value(["c-run"])
    widget(at.radio, "Loss").set_value("loss_mnist")
    widget(at.slider, "EMA smoothing").set_value(0.5)
    at.multiselect(key="delete_runs").set_value(["b-run"])
    at.checkbox(key="delete_sure").check().run()
    at.switch_page("app_pages/2_Samples.py").run()  # another page and back: the pick and the settings are kept
    at.switch_page("app_pages/4_Compare.py").run()  # (they went back to the first three runs and the defaults)
    assert not at.exception
    assert at.multiselect(key="compare_runs_all runs").value == ["c-run"]
    assert (widget(at.radio, "Loss").value, widget(at.slider, "EMA smoothing").value) == ("loss_mnist", 0.5)
    assert set(at.dataframe[0].value["run"]) == {"c-run"}
    # a delete's pick and confirmation are not: one ticked on an earlier visit must not delete with one click
    assert at.multiselect(key="delete_runs").value == [] and at.checkbox(key="delete_sure").value is False
    assert widget(at.button, "Delete").disabled
    # the only run picked deleted: the first runs are shown, and the delete box is there with no run picked too
    at.multiselect(key="delete_runs").set_value(["c-run"]).run()
    at.checkbox(key="delete_sure").check().run()
    widget(at.button, "Delete").click().run()
    runs_box = at.multiselect(key="compare_runs_all runs")
    assert not (runs / "c-run").exists() and len(runs_box.value) == 3 and runs_box.value == runs_box.options[:3]
    at.multiselect(key="compare_runs_all runs").set_value([]).run()
    assert "Pick one or more runs." in texts(at.info) and not at.multiselect(key="delete_runs").disabled
    assert at.checkbox(key="delete_sure").value is False


def test_compare_ticks_a_short_runs_steps_once_each(app_env):
    """Compare's x axis read "1 2 2 3 3 4 4" for a 3-step run: whole-number labels on ticks every half step."""
    data, runs = app_env
    at = open_page("app_pages/4_Compare.py")
    axis = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]
    assert axis["tickformat"] == "d" and axis["dtick"] == 1
    (runs / "tiny-run" / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n" + "".join(
        f"{i},0,0.1,0.2,{1 / i},0.001,100,{i}\n" for i in range(1, 41)))
    at.run()
    axis = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]
    assert axis["tickformat"] == "d" and "dtick" not in axis  # 40 steps: plotly's own whole-number ticks


def test_compare_tells_many_runs_apart(app_env):
    """Plotly's own colours repeat after ten traces: the 11th run was drawn in the first one's colour."""
    data, runs = app_env
    for i in range(30):
        shutil.copytree(runs / "tiny-run", runs / f"tiny-run-{i:02d}")
    at = open_page("app_pages/4_Compare.py")
    widget(at.multiselect, "Runs").set_value(sorted(p.name for p in runs.iterdir())).run()
    def lines(at):
        return {t["name"]: (t["line"]["color"], t["line"]["dash"])
                for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}

    drawn = lines(at)
    assert len(drawn) == 31 and len(set(drawn.values())) == 31
    legend = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["legend"]
    assert legend["orientation"] == "v" and legend["x"] > 1  # a column beside the plot, not rows eating its height
    assert len({c for c, _ in drawn.values()}) == 15 and {d for _, d in drawn.values()} == {"solid", "dash", "dot"}
    import mixsep_ui
    assert all(0.12 <= mixsep_ui._luminance(c) <= 0.30 for c, _ in drawn.values())  # seen on a white and a dark page
    widget(at.multiselect, "Runs").set_value(["tiny-run-03", "tiny-run-07"]).run()
    assert lines(at) == {n: drawn[n] for n in ("tiny-run-03", "tiny-run-07")}  # a run keeps its colour
    shutil.copytree(runs / "tiny-run", runs / "tiny-run-99")  # a new run, the newest: the others keep theirs
    os.utime(runs / "tiny-run-99", (time.time() + 60, time.time() + 60))  # copytree copied the folder's time too
    at = open_page("app_pages/4_Compare.py")
    widget(at.multiselect, "Runs").set_value(["tiny-run-03", "tiny-run-07", "tiny-run-99"]).run()
    now = lines(at)
    assert {n: now[n] for n in ("tiny-run-03", "tiny-run-07")} == {n: drawn[n] for n in ("tiny-run-03", "tiny-run-07")}
    assert now["tiny-run-99"] not in (now["tiny-run-03"], now["tiny-run-07"])
    for gone in ("tiny-run", "tiny-run-00", "tiny-run-01", "tiny-run-05"):  # deleted, not shown: nothing moves (QA: a
        shutil.rmtree(runs / gone)  # run's place among all runs was its colour, so every run after it changed)
    at.run()
    kept = lines(at)  # (tiny-run-99 had wanted a colour all 31 runs' earlier names held: it may take a freed one)
    assert {n: kept[n] for n in ("tiny-run-03", "tiny-run-07")} == {n: now[n] for n in ("tiny-run-03", "tiny-run-07")}


def test_the_runs_shown_never_share_a_line_past_60_runs_and_keep_theirs_otherwise():
    """15 colours x 4 dashes tell 60 runs apart: handed out among a folder's 77 runs, five runs picked were all
    drawn solid orange (QA). Of the runs shown, the later by name of two that share a line takes a free one."""
    import mixsep_ui

    names = [f"wk{i:02d}-run" for i in range(77)]
    every = mixsep_ui.run_lines(names)
    shared = {}
    for n in names:
        shared.setdefault(tuple(every[n].values()), []).append(n)
    clash = next(g for g in shared.values() if len(g) > 1)  # the folder's own: 77 runs on 60 lines
    alone = [g[0] for g in shared.values() if len(g) == 1][:10]
    for shown in (clash, clash + alone, names[:60], names[17:]):
        lines = mixsep_ui.run_lines(names, shown)
        assert list(lines) == shown and len({tuple(v.values()) for v in lines.values()}) == len(shown)
        assert all(lines[n] == every[n] for n in alone if n in shown)  # a run no other shown run shares keeps its own
        assert min(clash) not in shown or lines[min(clash)] == every[min(clash)]  # and of two that share one, the
        # first by name


def test_log_axis_ticks_are_as_many_as_fit():
    """A loss over 1-2 decades had a labelled tick at every digit ("0.1 0.09 0.08 0.07 0.06" on top of each other)."""
    import plotly.graph_objects as go

    from mixsep_ui import line_mode, log_ticks, style

    assert log_ticks(0.0004, 0.3) == [0.001, 0.01, 0.1]
    assert log_ticks(0.004, 0.15) == [0.005, 0.01, 0.02, 0.05, 0.1]
    assert log_ticks(0.09, 0.32) == [0.1, 0.2, 0.3]
    assert log_ticks(0.075, 0.125) == [0.08, 0.09, 0.1]
    assert log_ticks(0.1, 0.101) == [] and log_ticks(0, 1) == [] and log_ticks(1, float("inf")) == []
    # a hand-edited loss of 1e308 beside real ones: a label at each of 312 decades, run together, "Infinity" at the
    # top (QA); at most 8, every k-th decade, each a finite number
    wide = log_ticks(0.0004, 1e308)
    assert 3 <= len(wide) <= 8 and all(math.isfinite(v) for v in wide) and wide[0] == 0.001 and wide == sorted(wide)
    fig = go.Figure()  # what the charts of losses put on their axis: the range of every trace, raw and smoothed
    fig.add_scatter(x=[1, 2, 3], y=[0.15, 0.05, 0.02])
    fig.add_scatter(x=[1, 2, 3], y=[0.12, 0.03, 0.004])
    axis = style(fig, "Training loss", "step", "MSE loss").layout.yaxis
    assert (axis.type, axis.tickformat, axis.tickvals) == ("log", "~g", (0.005, 0.01, 0.02, 0.05, 0.1))
    # a run's first step, one value: drawn as a point (a line through one point is not drawn), on a factor of 2
    # either way with its ticks (plotly spread it over 0.03 to 2 with a label at every digit, run together: QA)
    fig = go.Figure()
    fig.add_scatter(x=[1], y=[0.3], mode=line_mode([1]))
    axis = style(fig, "Training loss", "step", "MSE loss").layout.yaxis
    assert fig.data[0].mode == "lines+markers" and line_mode([1, 2]) == "lines"
    assert axis.range == pytest.approx((math.log10(0.15), math.log10(0.6))) and axis.tickvals == (0.2, 0.3, 0.5)


def test_compare_reads_a_picked_runs_metrics_again_only_once_they_changed(app_env):
    """Compare re-read every picked run's whole metrics.csv on each click (0.7 s of a rerun with 76 runs picked):
    now only a file that changed since (its size, time or inode), whose new rows the chart then shows."""
    data, runs = app_env
    at = open_page("app_pages/4_Compare.py")
    assert chart_points(at) == 3
    metrics = runs / "tiny-run" / "metrics.csv"
    last = metrics.read_text().splitlines()[-1].split(",")
    with open(metrics, "a") as f:  # the trainer's next row
        f.write(",".join([str(int(last[0]) + 1), *last[1:]]) + "\n")
    at.run()
    assert chart_x(at) == [1, 2, 3, 4]
    drawn = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    stat = metrics.stat()
    with open(metrics, "r+b") as f:  # the same bytes' count, in place, and its time put back: to a reader that
        changed = f.read().replace(b"0.", b"9.")  # goes by the file's stamp, not changed: read from the cache
        f.seek(0)
        f.write(changed)
    os.utime(metrics, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    at.run()  # a click that changes nothing drawn (a run picked to delete, say)
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["data"] == drawn


def test_runs_deleted_on_compare_leave_its_url(app_env):
    """After Delete the address still named the deleted run: a reload, Back or the link shared said "No run named"."""
    data, runs = app_env
    for name in ("doomed", "kept"):
        shutil.copytree(runs / "tiny-run", runs / name)
    at = open_page("app_pages/4_Compare.py", run=["doomed", "tiny-run", "kept"])
    assert widget(at.multiselect, "Runs").value == ["doomed", "tiny-run", "kept"]
    at.multiselect(key="delete_runs").set_value(["doomed"]).run()
    at.checkbox(key="delete_sure").check().run()
    widget(at.button, "Delete").click().run()
    assert not (runs / "doomed").exists() and at.query_params["run"] == ["tiny-run", "kept"]
    at.run()  # a reload: the link is the runs left, said without a word of a missing run
    assert not at.warning and widget(at.multiselect, "Runs").value == ["tiny-run", "kept"]
    shutil.rmtree(runs / "kept")  # by hand: it left the comparison without a word (QA)
    at.run()
    assert texts(at.warning) == "Run 'kept' is gone (deleted?); comparing the others."
    assert widget(at.multiselect, "Runs").value == ["tiny-run"]
    at.run()  # said once
    assert not at.warning and not at.exception


def test_compare_shows_what_loaded_and_disk_use_and_deletes_runs(app_env):
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "doomed")
    config = json.loads((runs / "doomed" / "config.json").read_text())
    (runs / "doomed" / "config.json").write_text(json.dumps(dict(config, cpu_bf16=True)))
    at = open_page("app_pages/4_Compare.py")
    table = at.dataframe[0].value
    assert list(table["pretrained_loaded"]) == [False, False]  # recorded by the trainer, not the request
    assert table.set_index("run")["cpu_bf16"].to_dict() == {"doomed": True, "tiny-run": False}  # its precision
    assert (table["disk"] > 0).all()
    at.multiselect(key="delete_runs").set_value(["doomed"]).run()
    assert widget(at.button, "Delete").disabled  # not before the confirmation
    at.checkbox(key="delete_sure").check().run()
    widget(at.button, "Delete").click().run()
    assert not at.exception and not (runs / "doomed").exists() and (runs / "tiny-run").exists()
    # the confirmation is spent: another pick needs another tick (the box once stayed ticked)
    assert at.checkbox(key="delete_sure").value is False and at.multiselect(key="delete_runs").value == []
    at.multiselect(key="delete_runs").set_value(["tiny-run"]).run()
    assert widget(at.button, "Delete").disabled and (runs / "tiny-run").exists()
    # ticked for one pick, then the pick changed: unticked (it stayed ticked, and the new pick went with one click)
    shutil.copytree(runs / "tiny-run", runs / "other")
    at.run()
    at.checkbox(key="delete_sure").check().run()
    at.multiselect(key="delete_runs").set_value(["other"]).run()
    assert at.checkbox(key="delete_sure").value is False and widget(at.button, "Delete").disabled
    # a pick and a tick in one rerun (the browser sends a pick when its box loses focus, to the click on the tick):
    # the tick is for that pick, and stays
    at.multiselect(key="delete_runs").set_value(["tiny-run"])
    at.checkbox(key="delete_sure").check().run()
    assert at.checkbox(key="delete_sure").value is True and not widget(at.button, "Delete").disabled
    at.multiselect(key="delete_runs").set_value([]).run()
    assert at.checkbox(key="delete_sure").value is False
    shutil.rmtree(runs / "other")
    # picked, then gone before Delete (a second click on it, another tab): done, not "There is no run named"
    shutil.copytree(runs / "tiny-run", runs / "doomed")
    at.run()
    at.multiselect(key="delete_runs").set_value(["doomed"]).run()
    at.checkbox(key="delete_sure").check().run()
    shutil.rmtree(runs / "doomed")
    widget(at.button, "Delete").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert at.multiselect(key="delete_runs").value == [] and (runs / "tiny-run").exists()


# --------------------------------------------------------------------------- training from the page


def test_sliders_change_the_config(app_env):
    at = open_page("app_pages/1_Train.py")
    cfg = at.session_state["train_config"]
    assert (cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["batch_size"], cfg["epochs"], cfg["train_size"]) == \
        (1e-3, 0.9, 0.999, 128, 1, 0)  # the report's
    widget(at.select_slider, "Learning rate").set_value(1e-4)
    widget(at.slider, "Adam beta1").set_value(0.5)
    widget(at.slider, "Adam beta2").set_value(0.99)
    widget(at.slider, "Epochs").set_value(3)
    widget(at.select_slider, "Batch size").set_value(32)
    widget(at.select_slider, "Training pairs").set_value(512)
    widget(at.number_input, "Seed").set_value(7)
    widget(at.toggle, "ImageNet").set_value(False)
    widget(at.toggle, "Fresh MNIST partners").set_value(True)
    widget(at.selectbox, "Learning-rate schedule").set_value("onecycle")
    widget(at.selectbox, "Loss").set_value("log_mse")
    assert at.session_state["train_config"]["checkpoint_seconds"] == 10.0
    widget(at.number_input, "Minimum seconds between checkpoints").set_value(0.0)  # it was missing from the page
    at.run()
    cfg = at.session_state["train_config"]
    assert (cfg["lr"], cfg["beta1"], cfg["beta2"], cfg["epochs"], cfg["batch_size"], cfg["train_size"], cfg["seed"],
            cfg["pretrained"]) == (1e-4, 0.5, 0.99, 3, 32, 512, 7, False)
    assert (cfg["repair"], cfg["schedule"], cfg["loss"], cfg["checkpoint_seconds"]) == (True, "onecycle", "log_mse", 0.0)
    # a visit to another page keeps them
    at.switch_page("app_pages/4_Compare.py").run()
    at.switch_page("app_pages/1_Train.py").run()
    assert at.session_state["train_config"] == cfg


def test_the_recipe_button_sets_the_models_settings_and_keeps_the_rest(app_env):
    from mixsep.config import RECIPES

    at = open_page("app_pages/1_Train.py")
    widget(at.number_input, "Seed").set_value(7)
    widget(at.select_slider, "Training pairs").set_value(512)
    widget(at.selectbox, "Model").set_value("unet_narrow")
    at.run()
    button = next(b for b in at.button if b.label == "Use unet_narrow's recipe")
    assert "--lr 0.012 --schedule onecycle" in button.help
    button.click().run()
    assert not at.exception
    cfg = at.session_state["train_config"]
    assert {k: cfg[k] for k in RECIPES["unet_narrow"]} == RECIPES["unet_narrow"] and cfg["model"] == "unet_narrow"
    assert (cfg["seed"], cfg["train_size"]) == (7, 512)  # what the recipe leaves alone stays the user's
    assert widget(at.select_slider, "Learning rate").value == 1.2e-2  # the widgets show it
    # the user can move a setting after it, one step (the slider widened to 34 keeps its range:
    # narrowed to the value it held, it became another widget and crashed), and a visit to
    # another page keeps that
    widget(at.slider, "Epochs").set_value(33)
    at.run()
    assert not at.exception and widget(at.slider, "Epochs").max == 34
    widget(at.slider, "Epochs").set_value(5)
    at.run()
    assert not at.exception
    at.switch_page("app_pages/4_Compare.py").run()
    at.switch_page("app_pages/1_Train.py").run()
    cfg = at.session_state["train_config"]
    assert (cfg["epochs"], cfg["lr"], cfg["loss"]) == (5, 1.2e-2, "log_mse")


def test_a_run_that_says_finished_while_its_trainer_exits_shows_no_eta(app_env):
    """The trainer writes "finished" to status.json a moment (seconds, on a busy machine) before its process
    ends: the page read "Finished: 6 steps." above "step 6/6 · … · ETA 0m 00s" until then."""
    import conftest
    import mixsep_ui

    data, runs = app_env
    at = open_page("app_pages/1_Train.py")
    widget(at.select_slider, "Batch size").set_value(16)
    widget(at.toggle, "ImageNet").set_value(False)
    at.run()
    widget(at.button, "Start").click().run()
    assert not at.error, texts(at.error)
    child = mixsep_ui.registry(runs)._proc
    run = next(p for p in runs.iterdir() if p.name != "tiny-run")

    def said_finished() -> bool:
        try:
            return json.loads((run / "status.json").read_text())["state"] == "finished"
        except (OSError, ValueError, KeyError):
            return False

    conftest.frozen_when(child, said_finished, 120, "the trainer's last status", slice_s=0.002)
    try:  # the trainer frozen between its last status and its exit: alive, and finished
        at.run()
        assert not at.exception
        assert "Finished: 6 steps." in texts(at.success)
        text = at.get("progress")[0].proto.text
        assert text.startswith("step 6/6 · ") and text.endswith(" · finished") and "ETA" not in text, text
    finally:
        child.send_signal(signal.SIGCONT)
    child.wait(60)


@pytest.mark.heavy(13)
def test_start_live_curves_reload_second_tab_stop(app_env, monkeypatch):
    data, runs = app_env
    at = open_page("app_pages/1_Train.py")
    widget(at.select_slider, "Batch size").set_value(16)
    widget(at.slider, "Epochs").set_value(20)  # 120 steps: the test stops it long before
    widget(at.toggle, "ImageNet").set_value(False)
    at.run()
    widget(at.button, "Start").click().run()
    assert not at.error, texts(at.error)
    poll(at, lambda a: chart_points(a) >= 1, what="the first curve point")
    first = chart_points(at)
    assert "step" in at.get("progress")[0].proto.text and "samples/s" in at.get("progress")[0].proto.text
    assert "Live updates are paused" not in texts(at.caption)
    # Auto, the default: the 5 s pace for the trainer's first 5 minutes, then 15 s
    assert ("Live updates every 5 s, the loss chart every 25 s; once the run has trained 5 minutes, every 15 s and "
            "the loss chart every 75 s (Auto).") in texts(at.caption)  # the chart's pace said: a curve behind the bar looked frozen (QA)
    import mixsep_ui
    pid, slows_after = mixsep_ui.registry(runs)._pid, mixsep_ui.AUTO_SLOWS_AFTER_S
    os.kill(pid, signal.SIGSTOP)
    try:  # a newest row at 301 s of training from a trainer seconds old is the last trainer's (a resume's first
        # step): still the first minutes (QA: the slower pace, and "has trained over 5 minutes", said at once)
        metrics = next(p for p in runs.iterdir() if p.name != "tiny-run") / "metrics.csv"
        last = metrics.read_text().splitlines()[-1].split(",")
        with open(metrics, "a") as f:
            f.write(",".join([str(int(last[0]) + 1), *last[1:-1], "301.0"]) + "\n")
        at.run()
        assert "Live updates every 5 s, the loss chart every 25 s; once the run has trained 5 minutes, every 15 s" \
            in texts(at.caption)
        monkeypatch.setattr(mixsep_ui, "AUTO_SLOWS_AFTER_S", 1)  # past its first second, the trainer has lived and
        at.run()  # trained that long: the slower pace, said
        assert "Live updates every 15 s, the loss chart every 75 s: the run has trained over" in texts(at.caption)
    finally:
        os.kill(pid, signal.SIGCONT)
        monkeypatch.setattr(mixsep_ui, "AUTO_SLOWS_AFTER_S", slows_after)
    widget(at.radio, "Live updates").set_value("Paused").run()  # nothing polls now: the page says so
    assert "Live updates are paused: pick a pace above" in texts(at.caption)
    widget(at.radio, "Live updates").set_value("2 s").run()
    assert "Live updates every 2 s, the loss chart every 10 s." in texts(at.caption)
    # a reload (a new session) shows the same run, and its Start is refused: one run at a time
    other = open_page("app_pages/1_Train.py")
    run_name = next(p.name for p in runs.iterdir() if p.name != "tiny-run")
    assert run_name in texts(other.subheader) and chart_points(other) >= first
    picker = widget(other.selectbox, "Run")  # while a run trains every tab shows it, and no other can be picked
    assert picker.value == run_name and picker.disabled
    # its sidebar starts from the running run's settings, not the defaults (they once came back)
    started = {k: other.session_state["train_config"][k] for k in ("batch_size", "epochs", "pretrained")}
    assert started == {"batch_size": 16, "epochs": 20, "pretrained": False}
    widget(other.toggle, "ImageNet").set_value(False).run()
    widget(other.button, "Start").click().run()
    assert "already in progress" in texts(other.error)
    other.run()  # the next rerun (the chart's, when rows arrive) kept the refusal: it wiped it, leaving the
    assert "already in progress" in texts(other.error)  # other tab's run shown under this tab's settings, unsaid
    poll(at, lambda a: chart_points(a) > first, what="the curve to gain points")
    widget(at.button, "Stop").click().run()
    assert "Stopping after the current step" in texts(at.info)
    poll(at, lambda a: "Run stopped" in texts(a.warning), timeout=60, what="the stop")
    assert (runs / run_name / "checkpoints" / "last.pt").is_file()
    poll(other, lambda a: "already in progress" not in texts(a.error), timeout=60,  # the run that refused it
         what="the refusal to go once that run ended")  # has ended (its process gone)
    assert len(read_metrics(runs / run_name)) < 120


@pytest.mark.heavy(10)
def test_start_clicked_twice_and_a_run_deleted_while_it_trains_then_stopped(app_env):
    """A second click on Start showed a red "already in progress (RUN, step 0/?)" about the run the first had
    started, for the whole run. A run folder deleted while it trained read "failed" while its trainer ran on,
    and Stop then raised FileNotFoundError (the STOP file has no folder) before its SIGTERM, so nothing ended it."""
    import mixsep_ui

    data, runs = app_env
    at = open_page("app_pages/1_Train.py")
    widget(at.select_slider, "Batch size").set_value(16)
    widget(at.slider, "Epochs").set_value(50)  # 300 steps: it is stopped long before
    widget(at.toggle, "ImageNet").set_value(False)
    at.run()
    widget(at.button, "Start").click().run()
    widget(at.button, "Start").click().run()  # the same settings, again
    assert not at.error, texts(at.error)
    poll(at, lambda a: chart_points(a) >= 1, what="the first curve point")
    run = next(p for p in runs.iterdir() if p.name != "tiny-run")
    jobs = mixsep_ui.registry(runs)
    pid = jobs.running() and jobs._pid
    shutil.rmtree(run)
    at.run()
    assert not at.exception and texts(at.warning).endswith(
        "was deleted while it trained; its trainer stops at its next checkpoint, or now with Stop."), texts(at.warning)
    assert "gone" not in texts(at.warning) and not at.get("progress")  # it shows the run it was, not another
    widget(at.button, "Stop").click().run()
    assert not at.exception, [e.value for e in at.exception]
    poll(at, lambda a: jobs.running() is None, timeout=60, what="the trainer to end")  # its SIGTERM reached it
    assert not Path(f"/proc/{pid}").exists()  # ended and reaped, long before its 300 steps
    assert not run.exists()  # not made again
    at.run()
    assert not at.exception and "tiny-run" in texts(at.subheader)


def test_failed_run_says_lower_the_learning_rate(app_env):
    data, runs = app_env
    run = runs / "tiny-run"
    (run / "metrics.csv").write_text("\n".join((run / "metrics.csv").read_text().splitlines()[:3]) + "\n")
    write_status(run, "failed", "The loss became non-finite at step 3 (lr=0.1); training stopped. The last good "
                 "checkpoint (step 2) is kept. Lower the learning rate and start again.", step=2, total_steps=3)
    at = open_page("app_pages/1_Train.py")
    assert "Lower the learning rate" in texts(at.error)
    assert widget(at.button, "Resume")


def test_a_run_stopped_before_its_first_step_can_be_started_again(app_env):
    """Stop pressed while the trainer loaded left a run with no total, no checkpoint and no button: dead."""
    data, runs = app_env
    early = _stopped_before_its_first_step(runs, "zz-early")
    at = open_page("app_pages/1_Train.py")
    assert "zz-early" in texts(at.subheader) and not [b for b in at.button if b.label == "Resume this run"]
    assert widget(at.button, "Start this run again")


def test_an_older_run_can_be_picked_and_resumed_and_other_tabs_keep_their_own_pick(app_env):
    """The page showed only the newest run: a run stopped earlier could not be resumed from the dashboard."""
    data, runs = app_env
    older = _stopped_before_its_first_step(runs, "aa-older")
    os.utime(older, (time.time() - 3600,) * 2)  # tiny-run is the newest, so it is shown first
    at, other = open_page("app_pages/1_Train.py"), open_page("app_pages/1_Train.py")
    assert "tiny-run" in texts(at.subheader) and "Finished: 3 steps." in texts(at.success)
    assert widget(at.selectbox, "Run").options == ["tiny-run", "aa-older"]
    widget(at.selectbox, "Run").set_value("aa-older").run()
    assert "aa-older" in texts(at.subheader) and "Run stopped at step 0" in texts(at.warning)
    other.run()  # looking at a run in one tab does not change what another tab shows
    assert "tiny-run" in texts(other.subheader) and "aa-older" not in texts(other.subheader)
    widget(at.button, "Start this run again").click().run()
    assert not at.error, texts(at.error)
    poll(at, lambda a: "Finished: 3 steps." in texts(a.success), what="the picked run to train to its end")
    assert "aa-older" in texts(at.subheader) and len(read_metrics(older)) == 3
    assert (older / "checkpoints" / "last.pt").is_file()
    assert json.loads((runs / "tiny-run" / "status.json").read_text())["state"] == "finished"  # untouched


def test_compare_without_test_pairs_says_so_once_and_keeps_its_table(app_env, tmp_path, monkeypatch):
    data, runs = app_env
    no_test = tmp_path / "no-test"
    shutil.copytree(data, no_test)
    (no_test / "cifar-10-batches-py" / "test_batch").unlink()
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(no_test))
    at = open_page("app_pages/4_Compare.py")
    widget(at.toggle, "Test PSNR").set_value(True).run()
    assert not at.exception and len(at.error) == 1 and "test" in at.error[0].value
    assert list(at.dataframe[0].value["run"]) == ["tiny-run"] and "cifar PSNR" not in at.dataframe[0].value


@pytest.mark.parametrize("page, label, toggle", [("app_pages/2_Samples.py", "Seed", "Shuffle"),
                                                 ("app_pages/3_Metrics.py", "Test pairs to score", None),
                                                 ("app_pages/4_Compare.py", "Test pairs to score", "Test PSNR")])
def test_every_whole_number_box_reads_what_is_typed_and_refuses_a_fraction(app_env, page, label, toggle):
    """Streamlit's integer box reads what is typed with the browser's parseInt (1e3 became 1, 2.5 became 2,
    without a word): each whole number box is Train's float box (ui_settings.whole_number_box), which gives an
    int back and says a fraction is refused (the real browser's reading: tests/test_browser.py)."""
    from streamlit.proto.NumberInput_pb2 import NumberInput

    at = open_page(page)
    if toggle:
        widget(at.toggle, toggle).set_value(True).run()
    box = widget(at.number_input, label)
    assert box.proto.data_type == NumberInput.FLOAT and box.proto.format == "%g"
    box.set_value(3.0).run()
    assert not at.exception and not at.error, texts(at.error)
    if page.endswith("Metrics.py"):
        assert (at.dataframe[0].value["n"] == 3).all()  # an int reached the scoring
    widget(at.number_input, label).set_value(2.5).run()
    assert not at.exception and f"{label} must be a whole number (got 2.5)." in texts(at.error)
    if page.endswith("Metrics.py"):
        assert not at.dataframe  # nothing scored on 2 pairs
    if toggle:  # the box is disabled, and so unused, with its toggle off: the page goes on, and says nothing of it
        widget(at.toggle, toggle).set_value(False).run()
        assert not at.exception and not at.error, texts(at.error)
        if page.endswith("Samples.py"):
            assert at.image  # the grid, drawn in order


def test_start_with_bad_batch_size_explains(app_env):
    at = open_page("app_pages/1_Train.py")
    widget(at.toggle, "ImageNet").set_value(False)
    widget(at.select_slider, "Training pairs").set_value(512).run()  # the tiny root has 96
    widget(at.button, "Start").click().run()
    assert not at.error  # the child reports it; the page shows it once the child has ended
    poll(at, lambda a: a.error, what="the failure message")
    assert "only 96 are available" in texts(at.error)


def test_a_start_refusal_goes_once_the_setting_it_was_about_changes(app_env):
    """Start refused a seed of 2.5; with the seed made 7 the refusal stayed (it was kept while the run training
    then, none, was still the one training: None == None)."""
    data, runs = app_env
    at = open_page("app_pages/1_Train.py")
    at.number_input(key="train_seed").set_value(2.5).run()
    widget(at.button, "Start").click().run()
    assert "must be a whole number, not the number 2.5" in texts(at.error)
    at.run()  # kept while nothing changes
    assert "must be a whole number, not the number 2.5" in texts(at.error)
    at.number_input(key="train_seed").set_value(7.0).run()
    assert not at.exception and not at.error, texts(at.error)
    assert sorted(p.name for p in runs.iterdir()) == ["tiny-run"]  # nothing was started


def _box_script():
    import streamlit as st

    from ui_settings import whole_number_box

    got = whole_number_box("Seed", 0, 2**63 - 1, 2**60 + 1, key="seed")  # a box a held seed widened this far
    st.write(f"got {got!r}")


def test_a_whole_number_past_2_53_typed_in_a_box_is_refused_not_rounded(app_env):
    """The browser keeps a typed number as a double: 9007199254740993 reaches the page as 9007199254740992.0
    (here as the double that follows it), a whole number, which became another seed without a word. A number
    that large, once typed, is said under the box and comes back as a float, which every caller refuses; the
    value the box was given, unchanged, comes back whole."""
    at = AppTest.from_function(_box_script, default_timeout=60)
    at.run()
    assert not at.exception and not at.error and at.markdown[0].value == f"got {2**60 + 1!r}"  # given: kept whole
    at.number_input(key="seed").set_value(2.0**53 + 2).run()
    assert not at.exception and at.markdown[0].value == "got 9007199254740994.0"
    assert texts(at.error) == ("Seed must be below 2**53 (9007199254740992) when typed here: the browser keeps a typed "
                               "number as a double, which rounds one that large (the command line takes it whole).")
    at.number_input(key="seed").set_value(2.0**53 - 1).run()  # the largest a double holds whole
    assert not at.error and at.markdown[0].value == f"got {2**53 - 1!r}"


def test_start_with_a_batch_larger_than_the_pairs_makes_no_run_folder(app_env):
    data, runs = app_env
    before = sorted(p.name for p in runs.iterdir())
    at = open_page("app_pages/1_Train.py")
    widget(at.toggle, "ImageNet").set_value(False)
    widget(at.select_slider, "Batch size").set_value(256)
    widget(at.select_slider, "Training pairs").set_value(128).run()
    widget(at.button, "Start").click().run()
    assert "Batch size 256 is larger than the 128 training pairs; lower it." in texts(at.error)
    assert sorted(p.name for p in runs.iterdir()) == before  # it once left a failed run behind


def test_start_on_damaged_training_data_says_why_and_leaves_no_run_folder(app_env, tmp_path, monkeypatch):
    """The trainer refuses a training file cut short only once it reads it: the page showed a failed run, kept
    among the runs, where `train` removes the folder it made for a run the data refused."""
    data, runs = app_env
    damaged = shutil.copytree(data, tmp_path / "damaged")
    images = damaged / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:len(images.read_bytes()) // 2])
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(damaged))
    before = sorted(p.name for p in runs.iterdir())
    at = open_page("app_pages/1_Train.py")
    widget(at.toggle, "ImageNet").set_value(False).run()
    widget(at.button, "Start").click().run()
    # the trainer says why, then ends: its run folder goes with it
    poll(at, lambda a: a.error and sorted(p.name for p in runs.iterdir()) == before, timeout=60,
         what="the trainer's refusal, and its run folder removed")
    assert f"{images} is truncated or corrupt" in seen(texts(at.error))
    # no download command without this data root's --data-root (QA: run as printed, it fetched into ./data)
    assert "; delete it and download it again." in texts(at.error) and "\\`" not in texts(at.error)
    assert widget(at.selectbox, "Run").options == before  # no failed run to pick, resume or delete
    at.run()  # it stays said (every tab followed the start) until the next one
    assert "is truncated or corrupt" in seen(texts(at.error))
    assert "gone (deleted?)" not in texts(at.warning)  # it said so too, of the run its trainer refused


# --------------------------------------------------------------------------- no data, bad input


def test_a_command_in_a_sentence_shows_as_code_never_as_backticks(app_env, tmp_path, monkeypatch):
    """mixsep's sentences quote commands between backticks, as the CLI prints them; the Train page showed the
    backticks themselves (it made the whole sentence literal text)."""
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(tmp_path / "empty"))
    at = open_page("app_pages/1_Train.py")
    widget(at.button, "Start").click().run()
    error = next(e.value for e in at.error if "No MNIST train data" in e.value)
    assert f"Run `python -m mixsep download --data-root {tmp_path / 'empty'}` where" in error  # a code span
    text = re.sub(r"`[^`]*`", "", error)  # the rest: text, as typed, with no backtick shown
    assert not markup(text) and "`" not in seen(text)
    assert seen(text).replace("\u2060", "").startswith(f"No MNIST train data under {tmp_path / 'empty'}: expected")
    at.run()
    assert not at.exception




def test_no_data_every_page_explains(app_env, tmp_path, monkeypatch):
    data, _ = app_env
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(tmp_path / "empty"))
    monkeypatch.setattr("mixsep.data.download", lambda root, splits=None: (_ for _ in ()).throw(
        MixsepError("Could not download mnist train (no network). Copy the files there by hand.")))
    at = open_page("dashboard.py")
    # one sentence for the four sets (there were four warnings, each with the same advice)
    assert len(at.warning) == 1 and "MNIST train, MNIST test, CIFAR-10 train and CIFAR-10 test are missing under" \
        in seen(at.warning[0].value).replace("\u2060", "")
    assert [b.label for b in at.button if b.label.startswith("Download")] == ["Download MNIST and CIFAR-10 (about 182 MB)"]
    widget(at.button, "Download").click().run()
    assert "Could not download" in texts(at.error)
    at = open_page("app_pages/1_Train.py")
    widget(at.button, "Start").click().run()
    assert "No MNIST train data" in texts(at.error)
    for page in ("app_pages/2_Samples.py", "app_pages/3_Metrics.py"):
        at = open_page(page)
        assert "No MNIST test data" in texts(at.error), page
    open_page("app_pages/4_Compare.py")
    (tmp_path / "half").mkdir()  # MNIST there: the button names what it fetches (it said both, 180 MB: QA)
    (tmp_path / "half" / "MNIST").symlink_to(data / "MNIST")
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(tmp_path / "half"))
    at = open_page("dashboard.py")
    assert [b.label for b in at.button if b.label.startswith("Download")] == ["Download CIFAR-10 (about 170 MB)"]


def test_data_root_is_fixed_by_the_server_not_by_a_visitor(app_env, tmp_path, monkeypatch):
    """The Download button writes into the data root, so no page may point it elsewhere."""
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(tmp_path / "elsewhere"))
    at = open_page("dashboard.py")
    assert not at.text_input and str((tmp_path / "elsewhere").resolve()) in " ".join(m.value for m in at.markdown)
    said = seen(texts(at.warning)).replace("\u2060", "")
    assert f"are missing under `{tmp_path / 'elsewhere'}` " in said
    at.switch_page("app_pages/2_Samples.py").run()
    assert f"No MNIST test data under {tmp_path / 'elsewhere'}" in texts(at.error)


@pytest.mark.parametrize("variable, make, says", [
    ("MIXSEP_RUNS_DIR", "loop", "The runs folder {} is a link that leads back to itself; start the server with "
                                "another --runs-dir (or MIXSEP_RUNS_DIR)."),
    ("MIXSEP_DATA_ROOT", "loop", "The data root {} is a link that leads back to itself; start the server with "
                                 "another --data-root (or MIXSEP_DATA_ROOT)."),
    ("MIXSEP_DATA_ROOT", "long", "The data root {} has a name too long for the file system; start the server with "
                                 "another --data-root (or MIXSEP_DATA_ROOT)."),
])
def test_a_folder_no_file_system_call_takes_gets_one_sentence_on_every_page(app_env, tmp_path, monkeypatch,
                                                                           variable, make, says):
    """A runs folder or data root that was a symlink loop showed RuntimeError: Symlink loop on every page, and a
    data root of a 300-character name showed [Errno 36] File name too long on Home."""
    if make == "loop":
        (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
        (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
        folder = tmp_path / "loop1"
    else:
        folder = tmp_path / ("d" * 300)
    monkeypatch.setenv(variable, str(folder))
    for page in [*PAGES, "app_pages/5_Sweep.py"]:
        at = open_page(page)  # no exception
        assert [seen(e.value).replace("\u2060", "") for e in at.error] == [says.format(folder)], page
        assert len(at.sidebar.get("page_link")) == len(PAGES) + 1, page  # the way to the other pages stays


def test_download_button_fetches_and_reruns(app_env, tmp_path, monkeypatch):
    target = tmp_path / "new-root"
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(target))
    monkeypatch.setattr("mixsep.data.download", lambda root, splits=None: make_data_root(Path(root)))
    at = open_page("dashboard.py")
    widget(at.button, "Download").click().run()
    assert not at.exception and "All four source/split sets found" in texts(at.success)


def test_no_runs_yet(app_env):
    data, runs = app_env
    shutil.rmtree(runs / "tiny-run")
    for page in PAGES[2:]:
        assert "No runs yet" in texts(open_page(page).info)
    assert "No run yet" in texts(open_page("app_pages/1_Train.py").info)


@pytest.mark.parametrize("name, message", [
    ("../../etc", "not a valid run name"),
    ("..", "not a valid run name"),
    ("/etc", "not a valid run name"),
    ("no-such-run", "There is no run named 'no-such-run'"),
])
def test_run_names_cannot_escape(app_env, name, message):
    for page in ("app_pages/2_Samples.py", "app_pages/3_Metrics.py"):
        at = open_page(page, run=name)
        assert message in texts(at.error), page
        # and the way out: the runs there are (a bad name once left only the error on the page)
        assert widget(at.selectbox, "Run").value == "tiny-run", page
        assert "pick" in texts(at.error).lower() and "below" in texts(at.error), page


def test_a_link_to_a_folder_whose_name_no_run_can_have_says_why_alike_on_every_page(app_env):
    """QA: for a folder named -dash, Train said "There is no run named '-dash'" (it is there) and Samples told it to
    use characters it used; Home's note gave the same advice, and printed a 200-character name whole."""
    data, runs = app_env
    for name in ("-dash", "L" * 200):
        shutil.copytree(runs / "tiny-run", runs / name)
    says = ("'-dash' is not a valid run name: use ASCII letters (a-z, A-Z), digits, spaces, '.', '_' and '-', "
            "starting with a letter or digit. Pick a run below.")
    for page in ("app_pages/1_Train.py", "app_pages/2_Samples.py"):
        assert seen(texts(open_page(page, run="-dash").error)).replace("\u2060", "") == says, page
    note = seen(texts(open_page("dashboard.py").caption)).replace("\u2060", "")
    assert (f"Not listed: 2 run folders whose name the pages cannot use (-dash, {'L' * 40}… (200 characters)); rename "
            "them with ASCII letters (a-z, A-Z), digits, spaces, '.', '_' and '-', starting with a letter or digit, "
            "128 characters at most.") in note


def test_odd_folder_names_and_links_in_the_runs_folder(app_env, tmp_path):
    """The newest folder has a space in its name, another links outside the runs folder, a third is
    a run inside a group (a sweep's trial): every page shows what it can, none raises."""
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", tmp_path / "outside")
    (runs / "escape").symlink_to(tmp_path / "outside")
    shutil.copytree(runs / "tiny-run", runs / "study" / "trial-0001")
    shutil.copytree(runs / "tiny-run", runs / "my run")  # newest
    for page in PAGES:
        at = open_page(page)
        assert not at.exception, page
    at = open_page("app_pages/2_Samples.py")
    assert at.selectbox(key="run").value == "my run" and "escape" not in at.selectbox(key="run").options
    assert not at.exception and not at.error
    at = open_page("app_pages/3_Metrics.py", run="study/trial-0001")
    assert not at.exception and not at.error and at.selectbox(key="run").value == "study/trial-0001"
    assert "with study/trial-0001 · `last.pt`" in at.get("progress")[0].proto.text  # the study named: trials of
    at = open_page("app_pages/2_Samples.py", run="study/trial-0001")                # two studies differ
    assert "study/trial-0001  last.pt  step 3 " in texts(at.caption)
    assert "outside the runs folder" in texts(open_page("app_pages/2_Samples.py", run="escape").error)


def _broken_run(runs: Path, name: str) -> Path:
    run = runs / name
    shutil.copytree(runs / "tiny-run", run)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    return run


def _stopped_before_its_first_step(runs: Path, name: str) -> Path:
    """A run whose Stop came while its trainer loaded: no checkpoint, no metric row, no total."""
    run = _broken_run(runs, name)
    (run / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n")
    write_status(run, "stopped", "stopped by request before training began", step=0, total_steps=0)
    return run


def test_switching_runs_shows_the_new_runs_checkpoint(app_env):
    """Both runs hold a last.pt: the checkpoint chosen on the first run must not carry its path
    over to the second (the Samples, Metrics and Separate pages showed the first run's model
    under the second run's name)."""
    data, runs = app_env
    other = runs / "other-run"
    shutil.copytree(runs / "tiny-run", other)
    state = torch.load(other / "checkpoints" / "last.pt", weights_only=True)
    state["step"] = 99
    torch.save(state, other / "checkpoints" / "last.pt")
    at = open_page("app_pages/2_Samples.py", run="tiny-run")
    assert "tiny-run  last.pt  step 3 " in texts(at.caption)
    widget(at.selectbox, "Run").set_value("other-run")
    at.run()
    assert not at.exception and "other-run  last.pt  step 99 " in texts(at.caption)
    widget(at.selectbox, "Run").set_value("tiny-run")
    at.run()
    assert "tiny-run  last.pt  step 3 " in texts(at.caption)
    at = open_page("app_pages/3_Metrics.py", run="tiny-run")  # Metrics names what it scored
    assert "with tiny-run · `last.pt` · step 3 · tiny" in at.get("progress")[0].proto.text
    widget(at.selectbox, "Run").set_value("other-run")
    at.run()
    assert not at.exception and "with other-run · `last.pt` · step 99 · tiny" in at.get("progress")[0].proto.text


def test_a_link_or_back_to_another_run_shows_that_run_and_the_sidebar_keeps_the_pick(app_env):
    """A page opened with ?run=X shows X even after another run was picked in the session (the Sweep page's
    "Samples of TRIAL" opened the earlier pick, and the page wrote that pick back into the URL); the browser's
    Back to ?run=A after picking B shows A. A page opened from the sidebar (no ?run=) keeps the pick."""
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "other-run")
    at = open_page("app_pages/2_Samples.py", run="tiny-run")
    widget(at.selectbox, "Run").set_value("other-run").run()
    assert at.query_params["run"] == "other-run"
    at.query_params["run"] = "tiny-run"  # Back, or a link to tiny-run
    at.run()
    assert not at.exception and widget(at.selectbox, "Run").value == "tiny-run"
    assert at.query_params["run"] == "tiny-run" and "tiny-run  last.pt" in texts(at.caption)
    widget(at.selectbox, "Run").set_value("other-run").run()  # a pick here is kept over the URL it replaces
    at.run()
    assert widget(at.selectbox, "Run").value == "other-run" and at.query_params["run"] == "other-run"
    at.query_params.clear()  # the sidebar's link to Metrics: no ?run=
    at.switch_page("app_pages/3_Metrics.py").run()
    # the pick is kept, and the page writes nothing into the URL as it opens: Streamlit pushes a history entry for
    # each change of the URL, so Back had to be pressed twice to leave a page opened from the sidebar
    assert widget(at.selectbox, "Run").value == "other-run" and "run" not in at.query_params
    at.query_params["run"] = "tiny-run"  # Back to the link: followed again
    at.run()
    assert widget(at.selectbox, "Run").value == "tiny-run"


def test_a_run_picked_on_train_is_the_one_a_page_opened_from_the_sidebar_shows(app_env):
    """Samples, Metrics and Separate opened from the sidebar show the run picked last; one picked on Train was not
    among them (they showed the run picked before, or the newest)."""
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "other-run")
    os.utime(runs / "other-run", (time.time() + 60, time.time() + 60))  # the newest: shown when nothing is picked
    at = open_page("app_pages/1_Train.py")
    widget(at.selectbox, "Run").set_value("tiny-run").run()
    for page in ("app_pages/2_Samples.py", "app_pages/3_Metrics.py", "app_pages/6_Separate.py"):
        at.query_params.clear()  # the sidebar's link: no ?run=
        at.switch_page(page).run()
        assert not at.exception and widget(at.selectbox, "Run").value == "tiny-run", page


def test_the_train_page_takes_a_link_to_a_run_as_the_other_pages_do(app_env, trainer):
    """/Train?run=X shows X (it showed the last run started, whatever the link said), and the page writes its
    pick into the URL; Back to ?run=A after picking B shows A. A sweep's trial, a run that is not there and a
    link while another run trains each get a sentence, and the page shows what it can."""
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "other-run")
    shutil.copytree(runs / "tiny-run", runs / "demo" / "trial-0001")
    at = open_page("app_pages/1_Train.py", run="tiny-run")
    assert widget(at.selectbox, "Run").value == "tiny-run" and at.query_params["run"] == "tiny-run"
    widget(at.selectbox, "Run").set_value("other-run").run()
    assert at.query_params["run"] == "other-run"
    at.query_params["run"] = "tiny-run"  # Back
    at.run()
    assert not at.exception and widget(at.selectbox, "Run").value == "tiny-run"
    at.query_params["run"] = "demo/trial-0001"
    at.run()
    assert "is a run inside the folder 'demo', which this page does not train" in texts(at.warning)
    (runs / "demo" / "sweep.json").write_text("{}")  # a sweep's study folder: its trial
    at.query_params["run"] = "tiny-run"
    at.run()
    at.query_params["run"] = "demo/trial-0001"
    at.run()
    assert "is a trial of the sweep 'demo', which resumes it" in texts(at.warning)
    assert widget(at.selectbox, "Run").value == "tiny-run"
    at.query_params["run"] = "no-such-run"
    at.run()
    assert "There is no run named 'no-such-run'" in texts(at.error) and widget(at.selectbox, "Run").value == "tiny-run"
    at.run()  # said once
    assert not at.error and widget(at.selectbox, "Run").value == "tiny-run"
    status = json.loads((runs / "other-run" / "status.json").read_text()) | {"state": "running"} | trainer(
        runs / "other-run")
    (runs / "other-run" / "status.json").write_text(json.dumps(status))
    at = open_page("app_pages/1_Train.py", run="tiny-run")  # a link while other-run trains
    assert "Run 'other-run' is training, so this page shows it; 'tiny-run' can be picked once it ends." \
        in texts(at.info)
    assert widget(at.selectbox, "Run").value == "other-run"


def url_runs(at: AppTest) -> list:
    """The runs a page's URL names (AppTest keeps one value as a string, several as a list)."""
    value = at.query_params.get("run", [])
    return [value] if isinstance(value, str) else list(value)


def test_compare_shows_the_runs_a_link_names_and_writes_its_pick_into_the_url(app_env):
    """/Compare?run=A&run=B compares A and B (it showed the newest three, whatever the link said), also when
    a study is picked; the page writes the runs picked into the URL, so the comparison can be shared; a run of
    the link that is not there is named, and the others are shown."""
    data, runs = app_env
    for name in ("b-run", "c-run", "demo/trial-0001"):
        shutil.copytree(runs / "tiny-run", runs / name)
    at = open_page("app_pages/4_Compare.py")
    default = widget(at.multiselect, "Runs").value
    assert len(default) == 3 and url_runs(at) == []  # opened from the sidebar: no history entry of its own
    at = open_page("app_pages/4_Compare.py", run=["tiny-run", "demo/trial-0001"])
    assert not at.exception and widget(at.multiselect, "Runs").value == ["tiny-run", "demo/trial-0001"]
    assert widget(at.selectbox, "Study").value == "all runs" and not at.warning
    widget(at.multiselect, "Runs").set_value(["b-run"]).run()
    assert url_runs(at) == ["b-run"]  # a pick goes into the URL
    at.query_params["run"] = ["c-run", "gone-run"]  # Back, or an old link
    at.run()
    assert widget(at.multiselect, "Runs").value == ["c-run"]
    assert "No run named 'gone-run' in" in texts(at.warning)
    widget(at.selectbox, "Study").set_value("demo").run()
    assert widget(at.multiselect, "Runs").value == ["demo/trial-0001"]
    at.query_params["run"] = ["tiny-run"]  # a link while a study is picked: among all runs
    at.run()
    assert widget(at.selectbox, "Study").value == "all runs" and widget(at.multiselect, "Runs").value == ["tiny-run"]


def test_a_picked_runs_state_is_said_beneath_the_picker_and_follows_it(app_env):
    """The pickers now list runs by name (a label with the state lost the pick in a browser once the state
    changed: tests/test_browser.py reproduces that); the picked run's state is a caption that follows it."""
    data, runs = app_env
    other = runs / "other-run"
    shutil.copytree(runs / "tiny-run", other)
    os.utime(other, (time.time() - 3600,) * 2)  # tiny-run is the newest, the one shown when a pick is lost
    write_status(other, "stopped", "stopped by request", step=3, total_steps=6)
    samples = open_page("app_pages/2_Samples.py", run="other-run")
    compare = open_page("app_pages/4_Compare.py")
    widget(compare.multiselect, "Runs").set_value(["other-run"]).run()
    assert "other-run" in texts(samples.caption) and "stopped" in texts(samples.caption)
    write_status(other, "finished", "", step=6, total_steps=6)  # resumed to its end elsewhere
    for _ in range(2):
        samples.run()
        compare.run()
    assert not samples.warning, texts(samples.warning)
    assert "other-run  last.pt" in texts(samples.caption) and "finished" in texts(samples.caption)
    assert widget(compare.multiselect, "Runs").value == ["other-run"]


def test_corrupt_checkpoint(app_env):
    data, runs = app_env
    run = _broken_run(runs, "corrupt")
    (run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    for page in ("app_pages/2_Samples.py", "app_pages/3_Metrics.py"):
        assert "not a readable mixsep checkpoint" in texts(open_page(page, run="corrupt").error)


def test_run_from_another_version(app_env):
    data, runs = app_env
    run = _broken_run(runs, "future")
    model = build_model("tiny", pretrained=False)
    config = TrainConfig(data_root=str(data), model="tiny", pretrained=False)
    save_checkpoint(run / "checkpoints" / "last.pt", model, config, 6, 1)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["model"] = "hypernet-9000"
    torch.save(state, run / "checkpoints" / "last.pt")
    assert "does not know" in texts(open_page("app_pages/2_Samples.py", run="future").error)
    state["config"]["model"] = "tiny"
    state["model"] = {k: v for k, v in list(state["model"].items())[:-2]}  # weights of another architecture
    torch.save(state, run / "checkpoints" / "last.pt")
    assert "another model or another version" in texts(open_page("app_pages/3_Metrics.py", run="future").error)


def test_half_written_run(app_env):
    data, runs = app_env
    run = _broken_run(runs, "half")
    (run / "config.json").write_text('{"lr": 0.001, "mod')
    (run / "status.json").unlink()
    (run / "metrics.csv").write_text("step,epoch,loss_mnist,loss_cifar,loss,lr,samples_per_s,elapsed_s\n1,0,0.1,0.")
    home = open_page("dashboard.py")
    row = home.dataframe[1].value.set_index("run").loc["half"]
    assert "half written" in row["message"]
    at = open_page("app_pages/2_Samples.py", run="half")
    assert "holds no checkpoint" in texts(at.info) and "Wait" not in texts(at.info)  # no trainer: none will come
    open_page("app_pages/4_Compare.py")


def test_damaged_status_and_binary_metrics_leave_every_page_standing(app_env):
    """A status.json step that is text, or a metrics.csv of random bytes, in any one run took Home, Train and
    Compare down with a TypeError or a UnicodeDecodeError."""
    data, runs = app_env
    words = _broken_run(runs, "zz-words")
    (words / "status.json").write_text('{"state": "finished", "step": "abc", "total_steps": 6}')
    noise = _broken_run(runs, "zz-noise")
    (noise / "metrics.csv").write_bytes(random.Random(0).randbytes(3000))
    os.utime(noise)  # the newest run: the one the Train page shows
    home = open_page("dashboard.py")
    rows = home.dataframe[1].value.set_index("run")
    assert rows.loc["zz-words", "state"] == "unknown" and "step is not a count" in rows.loc["zz-words", "message"]
    assert rows.loc["zz-noise", "last_loss"] is None or pd.isna(rows.loc["zz-noise", "last_loss"])
    train = open_page("app_pages/1_Train.py")
    assert "zz-noise" in texts(train.subheader)
    open_page("app_pages/4_Compare.py")


def test_status_and_sweep_files_of_other_types_or_nested_too_deep_leave_every_page_standing(app_env):
    """Valid JSON of the wrong shape in one run's status.json (a message that is a number, JSON nested 100,000
    deep, ...) or in a study's sweep.json gave a TypeError or a RecursionError on every page that lists runs."""
    import socket

    data, runs = app_env
    hostile = {"nested": "[" * 100_000 + "]" * 100_000, "message": '{"state": "finished", "message": 5}',
               "updated": '{"state": "finished", "updated": "yesterday"}',
               "warnings": '{"state": "finished", "warnings": [1]}',
               "loaded": '{"state": "finished", "pretrained_loaded": "yes"}',
               "validation": '{"state": "finished", "validation": {"best_psnr": "high"}}'}
    for name, text in hostile.items():
        (_broken_run(runs, f"zz-{name}") / "status.json").write_text(text)
    for study, text in {"deep": "[" * 100_000 + "]" * 100_000,
                        "odd": json.dumps({"state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                                           "pid_start": "?", "others": [{"pid": [1]}, {"pid": "12"}]})}.items():
        (runs / study).mkdir()
        (runs / study / "sweep.json").write_text(text)
    # Home lists the runs as every page does (runs_table), Compare draws their columns, Sweep reads sweep.json
    for page in ["dashboard.py", "app_pages/4_Compare.py", "app_pages/5_Sweep.py"]:
        at = open_page(page)  # no exception
        if page == "dashboard.py":
            rows = at.dataframe[1].value.set_index("run")
    assert {n: rows.loc[f"zz-{n}", "state"] for n in hostile} == dict.fromkeys(hostile, "unknown")
    said = {n: rows.loc[f"zz-{n}", "message"] for n in hostile}
    assert said["nested"].startswith("status.json is missing or half written"), said
    assert [said[n].split(";")[0] for n in hostile if n != "nested"] == [
        "status.json is damaged (message is not text)", "status.json is damaged (updated is not a time)",
        "status.json is damaged (warnings is not a list of text)",
        "status.json is damaged (pretrained_loaded is not true or false)",
        "status.json is damaged (validation is not a sweep trial's scores)"], said


def test_a_fifo_for_metrics_csv_leaves_the_run_listed_and_every_page_standing(app_env):
    """Every page that lists runs hung for good on a run whose metrics.csv was a FIFO (the list read it to its end)."""
    import threading

    data, runs = app_env
    piped = _broken_run(runs, "piped")
    (piped / "metrics.csv").unlink()
    os.mkfifo(piped / "metrics.csv")
    waited = []  # a page that waits on it is let go after 30 s, and fails
    watchdog = threading.Timer(30, lambda: (waited.append(True), unblock_fifo(piped / "metrics.csv")))
    watchdog.start()
    try:
        home = open_page("dashboard.py")
        assert not waited, "Home waited on the FIFO"
        rows = home.dataframe[1].value.set_index("run")
        assert rows.loc["piped", "message"] == "metrics.csv is not a regular file (a FIFO, say), so its rows are not read"
        at = open_page("app_pages/4_Compare.py")
        widget(at.multiselect, "Runs").set_value(["piped", "tiny-run"]).run()
        assert "metrics.csv is not a regular file" in at.dataframe[0].value.set_index("run")["note"]["piped"]
        open_page("app_pages/1_Train.py")
        assert not waited, "a page waited on the FIFO"
    finally:
        watchdog.cancel()


def test_home_says_where_a_killed_or_failed_run_resumes_when_steps_after_its_checkpoint_are_lost(app_env):
    """A run killed or failed 30 steps after its last checkpoint read 180/300 on Home, as if a resume went on
    from 180; it goes on from the checkpoint (the message of a killed run said so, a failed run's nowhere)."""
    data, runs = app_env
    killed, failed = runs / "killed", runs / "failed"
    for run in (killed, failed):
        shutil.copytree(runs / "tiny-run", run)
    (killed / "status.json").write_text('{"state": "running", "pid": 999999999, "step": 1, "total_steps": 3}')
    write_status(failed, "failed", "RuntimeError: boom", step=2, total_steps=3)
    home = open_page("dashboard.py")
    rows = home.dataframe[1].value.set_index("run")
    column = json.loads(home.dataframe[1].proto.columns)["progress"]  # wide enough to read ("545/7680, re…": QA)
    assert column["width"] == "medium" and "where a resume starts" in column["help"], column
    assert rows.loc["killed", "state"] == "interrupted"
    assert rows.loc["killed", "progress"] == "3/3, resumes at step 1" and rows.loc["failed", "progress"] == \
        "3/3, resumes at step 2" and rows.loc["tiny-run", "progress"] == "3/3", rows["progress"]


def test_junk_metrics_rows_are_neither_drawn_nor_shown_as_the_last_loss(app_env):
    """A hand-edited row of step 1e30 was drawn at step -9223372036854775808 on Compare's curve (and reached the
    Train page as a step of 10**30); a row of loss -5, an MSE below zero, was shown as the run's last loss."""
    data, runs = app_env
    metrics = runs / "tiny-run" / "metrics.csv"
    last = read_metrics(runs / "tiny-run")["loss"].iloc[-1]
    with open(metrics, "a") as f:
        f.write("1e30,0,0.1,0.2,0.3,0.001,100,9\n4,0,0.1,0.2,-5,0.001,100,9\n")
    home = open_page("dashboard.py")
    row = home.dataframe[1].value.set_index("run").loc["tiny-run"]
    assert row["last_loss"] == last and row["progress"] == "3/3"
    assert chart_x(open_page("app_pages/4_Compare.py")) == [1, 2, 3]
    progress = open_page("app_pages/1_Train.py").get("progress")[0].proto.text  # its tail's last step
    assert progress.startswith("step 3/3 · "), progress


def test_train_page_copes_with_deleted_and_half_written_runs(app_env):
    data, runs = app_env
    at = open_page("app_pages/1_Train.py")
    assert "tiny-run" in texts(at.subheader)
    half = _broken_run(runs, "zz-half")
    (half / "status.json").unlink()
    os.utime(half)  # the newest run
    shutil.rmtree(runs / "tiny-run")
    at.run()
    assert not at.exception and "zz-half" in texts(at.subheader) and "incomplete" in texts(at.warning)
    shutil.rmtree(half)
    at.run()
    assert not at.exception and "No run yet" in texts(at.info)


def test_train_says_when_the_run_it_shows_is_deleted(app_env):
    """Train switched to another run in silence when the one it showed was deleted; Samples says so."""
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "doomed")
    at = open_page("app_pages/1_Train.py")
    widget(at.selectbox, "Run").set_value("doomed").run()
    assert "doomed" in texts(at.subheader)
    shutil.rmtree(runs / "doomed")
    at.run()
    assert not at.exception and "tiny-run" in texts(at.subheader)
    assert "Run 'doomed' is gone (deleted?); showing the latest run instead." in texts(at.warning)


def test_run_deleted_while_shown(app_env):
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "doomed")
    at = open_page("app_pages/3_Metrics.py", run="doomed")
    assert at.selectbox[0].value == "doomed"
    shutil.rmtree(runs / "doomed")
    at.run()
    assert not at.exception
    assert "'doomed' is gone" in texts(at.warning) and at.selectbox[0].value == "tiny-run"


def test_separate_page_says_at_once_when_the_checkpoint_cannot_separate(app_env):
    data, runs = app_env
    (runs / "tiny-run" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    at = open_page("app_pages/6_Separate.py")
    # before anything is uploaded (it once waited for an upload to say so)
    assert "is not a readable mixsep checkpoint" in texts(at.error) and not at.file_uploader



# --------------------------------------------------------------------------- names are text, not markdown


def markup(markdown: str) -> list[str]:
    """What Streamlit would still render as markup in ``markdown``: unescaped link, image, emphasis, code,
    math, HTML and directive characters, and what it rewrites in the parsed text, where escapes are gone
    (remark-gfm's autolink literals, their regexes copied here; :shortcodes:)."""
    bare = re.sub(r"\\[!-/:-@\[-`{-~]", "", markdown)  # escaped characters show as themselves
    text = seen(markdown)
    return (re.findall(r"[\[\]*_`$<>!~|:@]", bare)
            + re.findall(r"(?i)https?://|www(?=\.)", text)
            + re.findall(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+", text)
            + re.findall(r":(?:streamlit|material/\w+|[\w+-][\w_+-]*):", text))


def shows_literally(markdown: str, text: str) -> bool:
    """Whether ``markdown`` shows ``text`` character for character, and no markup at all."""
    return text in seen(markdown).replace("\u2060", "") and not markup(markdown)


@pytest.fixture
def trainer():
    """trainer(RUN): a live process that holds RUN's lock, as a trainer does, to name as its trainer in its
    status.json (a run "training now"); its identity."""
    procs = []

    def hold(run: Path) -> dict:
        procs.append(conftest.holding(run / ".lock"))
        return identity(procs[-1].pid)
    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


LINK = "[Your session expired, log in here](https://evil.example/login)"
IMAGE = "![x](https://evil.example/track.png)"
ODD = "**bold** $x^2$ _it_ :red[red] :material/home: https://evil.example www.evil.example a@evil.example"


@pytest.mark.parametrize("page, name", [("app_pages/6_Separate.py", LINK), ("app_pages/3_Metrics.py", IMAGE),
                                        ("app_pages/2_Samples.py", ODD)])
def test_a_link_to_a_run_shows_its_name_as_text_never_as_markdown(app_env, page, name):
    at = open_page(page, run=name)
    error = next(e.value for e in at.error if "not a valid run name" in e.value)
    assert shows_literally(error, f"'{name}' is not a valid run name"), (error, markup(error))
    assert widget(at.selectbox, "Run").value == "tiny-run"  # and the way out is still there


def test_a_link_with_a_very_long_run_name_is_quoted_short(app_env):
    """A ?run= of 5,000 characters filled the error box with a hundred lines (Metrics), the warning too (Compare)."""
    at = open_page("app_pages/3_Metrics.py", run="a" * 5000)
    error = next(e.value for e in at.error if "not a valid run name" in e.value)
    assert f"'{'a' * 128}… (5000 characters)' is not a valid run name" in error and len(error) < 500
    at = open_page("app_pages/4_Compare.py", run=["tiny-run", "b" * 5000])
    assert f"No run named '{'b' * 128}… (5000 characters)'" in texts(at.warning) and len(texts(at.warning)) < 500


def test_odd_but_valid_run_names_show_as_typed(app_env, trainer):
    data, runs = app_env
    name = "1. a _b_ -- c"  # a list item, italics and an em dash, were it markdown
    shutil.copytree(runs / "tiny-run", runs / name)
    at = open_page("app_pages/2_Samples.py", run=name)
    assert any(shows_literally(c.value, f"{name}  last.pt  step 3") for c in at.caption), texts(at.caption)
    at = open_page("app_pages/3_Metrics.py", run=name)
    assert shows_literally(at.get("progress")[0].proto.text.split(" · ")[0], f"with {name}")
    at = open_page("app_pages/6_Separate.py", run=name)
    at.file_uploader[0].set_value([("a.png", png_bytes(np.zeros((32, 32, 3), np.uint8)), "image/png")]).run()
    caption = next(c.value for c in at.caption if " · mode " in c.value).split(" · mode ")[0]  # the run's part
    assert shows_literally(caption, f"{name} · last.pt · step 3"), caption
    busy = _broken_run(runs, "x _y_ z")
    write_status(busy, "running", step=1, total_steps=3, **trainer(busy))
    at = open_page("app_pages/6_Separate.py", run=busy.name)
    info = at.info[0].value
    assert shows_literally(info.split(" holds")[0], "Run x _y_ z") and "holds no checkpoint yet" in info, info
    at = open_page("app_pages/4_Compare.py")  # a refused deletion quotes the name
    at.multiselect(key="delete_runs").set_value([busy.name]).run()
    at.checkbox(key="delete_sure").check().run()
    widget(at.button, "Delete").click().run()
    assert shows_literally(at.error[0].value, "Run 'x _y_ z' is training now"), texts(at.error)
    write_status(busy, "failed", step=1, total_steps=3, message=f"failed in {name}")  # the Train page's last run
    at = open_page("app_pages/1_Train.py")
    assert shows_literally(at.subheader[0].value.split(" ", 1)[1], "x _y_ z"), texts(at.subheader)
    assert shows_literally(at.error[0].value, f"failed in {name}"), texts(at.error)


def test_separate_shows_uploaded_file_names_as_text(app_env):
    at = open_page("app_pages/6_Separate.py")
    good, bad = "**bold** $x^2$ _it_.png", "[click](https://evil.example) <b>:red[x]</b>.png"
    mixture = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    at.file_uploader[0].set_value([(good, png_bytes(mixture), "image/png"),
                                   (bad, b"not an image", "image/png")]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert shows_literally(at.error[0].value, f"{bad} is not an image file"), at.error[0].value
    assert len(at.image) == 3 and shows_literally(at.image[0].captions[0], good), at.image[0].captions


def test_separate_sends_its_enlarged_pixels_as_png(app_env):
    """The 4x nearest-neighbour enlargements reach the browser losslessly (as JPEG they blurred)."""
    at = open_page("app_pages/6_Separate.py")
    mixture = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    at.file_uploader[0].set_value([("a.png", png_bytes(mixture), "image/png")]).run()
    urls = [url for img in at.image for url in img.value]
    assert len(urls) == 3 and all(url.endswith(".png") for url in urls), urls


def test_compare_notes_a_run_whose_config_is_unreadable(app_env):
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "garbled")
    (runs / "garbled" / "config.json").write_text('{"lr": 0.001, "mod')
    at = open_page("app_pages/4_Compare.py")
    notes = at.dataframe[0].value.set_index("run")["note"]
    assert "not a readable mixsep config" in notes["garbled"] and notes["tiny-run"] == ""
    (runs / "garbled" / "config.json").write_text('{"name": "my-webapp", "version": "1.2.3"}')  # another project's
    at.run()
    notes = at.dataframe[0].value.set_index("run")["note"]
    assert notes["garbled"].endswith("config.json names no mixsep setting ('name', 'version'), so it is not a mixsep "
                                     "run's config.json."), notes["garbled"]  # QA: it said to "give --run-dir" here


def test_compare_notes_a_config_with_a_value_of_another_type(app_env):
    """train_size "all" took the page down (int("all")); lr "fast" was listed as a healthy run."""
    data, runs = app_env
    for name, key, value in (("typed-all", "train_size", "all"), ("typed-fast", "lr", "fast"),
                             ("typed-huge", "lr", 10 ** 400)):  # float() overflowed: every page fell over
        shutil.copytree(runs / "tiny-run", runs / name)
        config = json.loads((runs / name / "config.json").read_text())
        (runs / name / "config.json").write_text(json.dumps(dict(config, **{key: value})))
    at = open_page("app_pages/4_Compare.py")
    widget(at.multiselect, "Runs").set_value(sorted(p.name for p in runs.iterdir())).run()
    notes = at.dataframe[0].value.set_index("run")["note"]
    assert "config.json: Setting 'train_size' must be a whole number, not the string \"all\"" in notes["typed-all"]
    assert "config.json: Setting 'lr' must be a number, not the string \"fast\"" in notes["typed-fast"]
    assert "config.json: Setting 'lr' is a whole number of about 401 digits, too large for a float" in notes["typed-huge"]
    open_page("dashboard.py")  # the home page's table of runs reads them too
    assert notes["tiny-run"] == ""


def test_compare_shows_blanks_not_none_and_small_runs_in_kb(app_env):
    data, runs = app_env
    small = _broken_run(runs, "small")  # no checkpoint: a few KB on disk
    at = open_page("app_pages/4_Compare.py")
    table = at.dataframe[0].value.set_index("run")
    # no run here has a validation PSNR: a number column of blanks, not a column of None (shown "None")
    assert table["val_psnr"].dtype.kind == "f" and table["val_psnr"].isna().all()
    assert at.dataframe[0].proto.HasField("placeholder") and at.dataframe[0].proto.placeholder == ""  # not "None"
    # the disk in bytes, shown in KB, MB or GB by the browser (a few KB read "0.0 MB")
    assert json.loads(at.dataframe[0].proto.columns)["disk"]["type_config"]["format"] == "bytes"
    assert table.loc["small", "disk"] == disk_usage(small) < 100_000


def test_a_run_without_checkpoints_is_told_to_wait_only_while_it_trains(app_env, trainer):
    data, runs = app_env
    _broken_run(runs, "emptied")  # finished, its checkpoints deleted
    write_status(_broken_run(runs, "training"), "running", step=1, total_steps=3, **trainer(runs / "training"))
    at = open_page("app_pages/2_Samples.py", run="emptied")
    info = texts(at.info)
    assert "holds no checkpoint" in info and "removed, or never written" in info and "Pick another run" in info
    assert "Wait for it" not in info and "yet" not in info
    at = open_page("app_pages/2_Samples.py", run="training")
    assert "holds no checkpoint yet" in texts(at.info) and "Wait for it" in texts(at.info)
    at = open_page("app_pages/4_Compare.py")
    widget(at.toggle, "Test PSNR").set_value(True).run()
    notes = at.dataframe[0].value.set_index("run")["note"]
    assert notes["emptied"] == "no checkpoint: removed, or never written" and notes["training"] == "no checkpoint yet"


def test_compare_notes_a_run_without_a_checkpoint_unscored_too_and_a_checkpoints_file_is_named(app_env, trainer):
    """Compare said "no checkpoint" only once Test PSNR was on, though its note column is documented to say it; a
    run whose checkpoints was a file was said to hold none in its checkpoints folder, which it does not have."""
    data, runs = app_env
    _broken_run(runs, "emptied")  # finished, its checkpoints deleted
    write_status(_broken_run(runs, "training"), "running", step=1, total_steps=3, **trainer(runs / "training"))
    filed = _broken_run(runs, "filed")
    (filed / "checkpoints").rmdir()
    (filed / "checkpoints").write_text("not a folder")
    at = open_page("app_pages/4_Compare.py")
    widget(at.multiselect, "Runs").set_value(["emptied", "training", "filed", "tiny-run"]).run()
    expected = {"emptied": "no checkpoint: removed, or never written", "training": "no checkpoint yet",
                "filed": "no checkpoint: its checkpoints is a file, not a folder", "tiny-run": ""}
    assert at.dataframe[0].value.set_index("run")["note"].to_dict() == expected
    widget(at.toggle, "Test PSNR").set_value(True).run()  # scored: the same notes, each said once
    assert at.dataframe[0].value.set_index("run")["note"].to_dict() == expected
    for page in ("app_pages/2_Samples.py", "app_pages/3_Metrics.py"):
        info = texts(open_page(page, run="filed").info)
        assert "Run filed holds no checkpoint: its checkpoints is a file, not a folder" in info, page
        assert "checkpoints folder has none" not in info and "Pick another run" in info, page


def test_a_legend_of_many_runs_goes_under_the_plot_not_over_its_title(app_env):
    """Compare's legend, one entry a run, wrapped onto the chart's title from about 7 runs."""
    import plotly.graph_objects as go

    import mixsep_ui

    def legend_y(entries: int, name: str = "run-{}", title: str = "Training loss") -> float:
        fig = go.Figure([go.Scatter(x=[1, 2], y=[1, 2], name=name.format(i)) for i in range(entries)])
        return mixsep_ui.style(fig, title, "step", "loss").layout.legend.y

    assert legend_y(3) == 1.0 and legend_y(4) == 1.0  # the training chart's three heads: beside the title
    assert legend_y(3, title="Training loss · " + "r" * 60) < 0  # a long title ran under the legend
    assert legend_y(9) < 0
    assert legend_y(3, "sweep-20261130/trial-000{}") < 0  # three long names covered the title at narrow widths


def test_compare_notes_a_checkpoint_of_another_model_and_unreadable_metrics(app_env):
    """The row named the config's model beside the scores of whatever last.pt held; a metrics.csv of no readable
    row left the run without a curve or a loss, and no word why."""
    data, runs = app_env
    shutil.copytree(runs / "tiny-run", runs / "relabelled")
    config = json.loads((runs / "relabelled" / "config.json").read_text())
    (runs / "relabelled" / "config.json").write_text(json.dumps(dict(config, model="unet_narrow")))
    shutil.copytree(runs / "tiny-run", runs / "garbled-metrics")
    (runs / "garbled-metrics" / "metrics.csv").write_text("step,epoch\nfoo,bar\n")
    at = open_page("app_pages/4_Compare.py")
    widget(at.multiselect, "Runs").set_value(["relabelled", "garbled-metrics", "tiny-run"])
    widget(at.toggle, "Test PSNR").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    notes = at.dataframe[0].value.set_index("run")["note"]
    assert notes["relabelled"] == "last.pt holds a tiny model, not the config's unet_narrow: the scores are the tiny's"
    assert notes["garbled-metrics"] == "metrics.csv holds no readable row" and notes["tiny-run"] == ""


def test_a_stopped_run_with_a_bad_config_says_so_everywhere_and_keeps_saying_it(app_env):
    """Its status message hid the config's refusal on Home and Compare, Compare then claimed the checkpoint held
    another model than the config's (blank) one, and the Train page's refusal of Resume vanished at the next
    refresh; the Train page's pick was lost on a visit to another page."""
    data, runs = app_env
    bad = runs / "bad-config"
    shutil.copytree(runs / "tiny-run", bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(config, lr="fast")))
    (bad / "metrics.csv").write_text("\n".join((bad / "metrics.csv").read_text().splitlines()[:3]) + "\n")
    write_status(bad, "stopped", "stopped by request", step=2, total_steps=3)
    os.utime(bad, (time.time() - 3600,) * 2)  # not the newest: it must be picked
    refusal = "config.json: Setting 'lr' must be a number, not the string \"fast\""
    at = open_page("app_pages/4_Compare.py")
    widget(at.multiselect, "Runs").set_value(["bad-config", "tiny-run"])
    widget(at.toggle, "Test PSNR").set_value(True).run()
    note = at.dataframe[0].value.set_index("run")["note"]["bad-config"]
    assert note.startswith("stopped by request; ") and refusal in note and "holds a" not in note, note
    at = open_page("app_pages/1_Train.py")
    widget(at.selectbox, "Run").set_value("bad-config").run()
    resume = widget(at.button, "Resume this run")
    assert "saved settings" in resume.help and "--run-dir" in resume.help  # the sidebar's toggles do not apply
    resume.click().run()
    at.run()  # the status's next refresh
    assert refusal in seen(texts(at.error)).replace("\u2060", "")  # the word joiner is invisible
    at.switch_page("app_pages/2_Samples.py").run()
    at.switch_page("app_pages/1_Train.py").run()
    assert widget(at.selectbox, "Run").value == "bad-config" and refusal in seen(texts(at.error)).replace("\u2060", "")


def test_a_run_trained_on_another_data_root_says_so_on_every_page_and_resumes_on_the_servers(app_env, tmp_path,
                                                                                               monkeypatch):
    """A run copied from another machine: Metrics, Samples and Compare scored and showed the server's pairs without
    a word (11.49 dB on the page, 11.59 dB from evaluate, which reads the run's own), Samples said which of them it
    had trained on, and Resume was refused and told to download into the other machine's folder (QA)."""
    data, runs = app_env
    monkeypatch.delenv("MIXSEP_DATA_ROOT")  # the server's data root is its flag, which a child does not inherit
    monkeypatch.setattr("sys.argv", [str(ROOT / "dashboard.py"), "--data-root", str(data), "--runs-dir", str(runs)])
    theirs, gone = runs / "theirs", tmp_path / "their data ` *x*"
    shutil.copytree(runs / "tiny-run", theirs)
    config = json.loads((theirs / "config.json").read_text())
    (theirs / "config.json").write_text(json.dumps(dict(config, data_root=str(gone))))
    (theirs / "metrics.csv").write_text("\n".join((theirs / "metrics.csv").read_text().splitlines()[:3]) + "\n")
    write_status(theirs, "stopped", "stopped by request", step=2, total_steps=3)
    said = f"This run trained on the data root ``{gone}``, which is not a folder on this machine; these test pairs " \
           f"come from this server's, `{data}`"
    at = open_page("app_pages/3_Metrics.py", run="theirs")
    assert said in texts(at.info), texts(at.info)
    assert "trained on the data root" not in texts(open_page("app_pages/3_Metrics.py", run="tiny-run").info)
    long = runs / "long"  # a data root no path on this system can be (asking whether it is a folder raised)
    shutil.copytree(runs / "tiny-run", long)
    (long / "config.json").write_text(json.dumps(dict(config, data_root="/" + "x" * 5000)))
    assert "which is not a folder on this machine" in texts(open_page("app_pages/3_Metrics.py", run="long").info)
    at = open_page("app_pages/2_Samples.py", run="theirs")
    assert said.replace("these test pairs", "these test pairs") in texts(at.info), texts(at.info)  # the test split
    at = open_page("app_pages/4_Compare.py")
    widget(at.multiselect, "Runs").set_value(["theirs", "tiny-run"])
    widget(at.toggle, "Test PSNR").set_value(True).run()
    notes = at.dataframe[0].value.set_index("run")["note"]
    assert f"trained on another data root ({gone}); scored on this server's" in notes["theirs"], notes
    assert "data root" not in notes["tiny-run"]
    at = open_page("app_pages/1_Train.py")
    widget(at.selectbox, "Run").set_value("theirs").run()
    assert f"The run's data root, ``{gone}``, is not a folder on this machine: Resume trains it on this server's, " \
           f"`{data}`." in texts(at.caption), texts(at.caption)
    widget(at.button, "Resume this run").click().run()
    poll(at, lambda a: json.loads((theirs / "config.json").read_text())["data_root"] == str(data.resolve())
         and "Finished" in texts(a.success), what="the resume on the server's data root")
    assert not at.error, texts(at.error)


def test_the_live_updates_pace_is_kept_in_the_url(app_env):
    """A reload put Live updates back to Auto: the pace chosen is in the URL (?train_refresh=Paused), as the run
    is, so a reload or a bookmark keeps it (seen in Chromium too); a value the page does not know is Auto."""
    for given, shown in (("Paused", "Paused"), ("15 s", "15 s"), ("3 s", "Auto")):
        at = open_page("app_pages/1_Train.py", train_refresh=given)
        assert widget(at.radio, "Live updates").value == shown, given


def test_a_run_that_ended_on_its_time_budget_says_why_and_how_to_train_on(app_env):
    """A run that spent its --max-minutes read "Finished: 1 steps." at a third of its bar, with no reason and no way
    on, where Home showed its message (QA)."""
    import dataclasses

    from mixsep import TrainConfig
    from mixsep.train import train_steps

    data, runs = app_env
    config = TrainConfig.load(runs / "tiny-run" / "config.json")
    list(train_steps(dataclasses.replace(config, max_minutes=1e-9), runs / "budget"))  # over time after one step
    at = open_page("app_pages/1_Train.py")
    widget(at.selectbox, "Run").set_value("budget").run()
    said = texts(at.info)
    assert "Finished early: time budget reached at step 1 of " in said and "Finished:" not in texts(at.success), said
    assert f"`python -m mixsep train --run-dir {runs / 'budget'} --max-minutes M`." in said, said
    widget(at.selectbox, "Run").set_value("tiny-run").run()  # one that trained to its end: as before
    assert "Finished: 3 steps." in texts(at.success) and "Finished early" not in texts(at.info)


def test_a_run_the_train_page_just_started_has_no_checkpoint_yet_not_a_removed_one(app_env, tmp_path, monkeypatch):
    """For the seconds its child loads torch and the data (no status.json, no lock yet), other pages said the
    run was not training and its checkpoints "were removed, or never written"."""
    import mixsep_ui
    from mixsep import TrainConfig

    data, runs = app_env
    slow = tmp_path / "slow"  # the child starts as slowly as on a loaded machine: a real process, held at start
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(8)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")])))
    run = mixsep_ui.registry(runs).start(TrainConfig(data_root=str(data), model="tiny", pretrained=False,
                                                     device="cpu", batch_size=8, train_size=24))
    at = open_page("app_pages/3_Metrics.py", run=run.name)
    info = texts(at.info)
    assert "holds no checkpoint yet" in info and "removed" not in info, info


def test_home_says_once_that_the_data_root_is_a_file_and_offers_no_download(app_env, tmp_path, monkeypatch):
    """The sentence was shown four times, once per source and split, over a Download button that could only
    say the same again."""
    (tmp_path / "data-file").write_text("not a folder")
    monkeypatch.setenv("MIXSEP_DATA_ROOT", str(tmp_path / "data-file"))
    at = open_page("dashboard.py")
    warned = [w.value for w in at.warning]
    assert len(warned) == 1 and "is a file, not a folder" in warned[0], warned
    assert not [b for b in at.button if "Download" in str(b.label)]
    assert list(at.dataframe[0].value["found"]) == ["missing"] * 4
