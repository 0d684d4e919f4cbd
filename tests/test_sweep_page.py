"""The Sweep page with studies it did not make (a shared storage), hostile values in a study, and
the switch to a study that starts while the page refreshes only its live part."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import conftest
from conftest import seen
from test_app_pages import markup, shows_literally
from test_sweep import TINY, app_page, page_env, sweep_args  # noqa: F401  (page_env: the fixture, shared)

from mixsep.cli import build_parser
from mixsep.sweep import ATTR, create_study, open_storage, plan

HOSTILE = "**bold** [link](http://evil.example) <b>x</b> :red[RED]"
HOSTILE_RUN = "x` [evil link](http://evil.example) **BOLD** `y"


def mixsep_study(data: Path, runs: Path, name: str):
    return create_study(plan(build_parser().parse_args(
        ["sweep", "--data-root", str(data), "--runs-dir", str(runs), "--study", name, *TINY])))


def picker(at):
    """The "Show study" box, or None when the last run did not draw it."""
    return next((s for s in at.selectbox if s.key == "sweep_pick"), None)


def test_studies_others_made_are_not_listed_and_a_studys_values_show_as_text(page_env):
    """A plain Optuna study in the runs folder's journal gave KeyError: 'run' and "3 of 0 trials done";
    a trial's parameter value and run folder rendered as bold, red and live links."""
    import optuna

    data, runs = page_env
    made = mixsep_study(data, runs, "made")
    storage = open_storage(None, runs)
    plain = optuna.create_study(study_name="plain", storage=storage, direction="maximize")
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    for name, attrs in (("bare", {}), ("evil", {"run": HOSTILE_RUN, "val_psnr": 12.0})):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr(ATTR, made.user_attrs[ATTR])
        study.add_trial(optuna.trial.create_trial(
            params={HOSTILE: HOSTILE, "lr": 0.002}, value=12.0, user_attrs=attrs,
            distributions={HOSTILE: optuna.distributions.CategoricalDistribution([HOSTILE]),
                           "lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True)}))

    huge = optuna.create_study(study_name="huge", storage=storage, direction="maximize")
    huge.set_user_attr(ATTR, made.user_attrs[ATTR])
    for value, lr in ((1e308, 1e-300), (-1e308, 1e300), (29.0, 3e-3)):  # parallel coordinates: NaN to integer
        huge.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "beta1": 0.9}, value=value,
            distributions={"lr": optuna.distributions.FloatDistribution(1e-300, 1e300, log=True),
                           "beta1": optuna.distributions.FloatDistribution(0.5, 0.99)}))

    at = app_page("5_Sweep.py", 60)
    assert not at.exception, [e.value for e in at.exception]
    assert picker(at).options == ["huge", "evil", "bare", "made"]
    assert any(i.value.startswith("This view cannot be drawn for this study's values (ValueError") for i in at.info)
    infos = [i.value for i in at.info]
    assert len(at.get("plotly_chart")) + sum(v.startswith("This view cannot") for v in infos) == 4, infos  # the rest stand
    history = json.loads(at.get("plotly_chart")[0].proto.spec)  # in the page's words, whole trials on its x axis
    assert not history["layout"].get("title", {}).get("text") and history["layout"]["xaxis"]["dtick"] == 1
    shown = [t["name"] for t in history["data"] if t.get("showlegend", True)]
    assert shown == ["validation PSNR (dB)", "Best so far"], shown
    note = "1 study of this storage not made by `python -m mixsep sweep` is not listed."
    assert note in [c.value for c in at.caption]

    picker(at).set_value("bare").run()  # a mixsep study's trial without a run folder: no command to score it
    assert not at.exception, [e.value for e in at.exception]
    assert "1 of 20 trials done" in at.get("progress")[0].proto.text and not at.code
    assert at.dataframe[0].proto.placeholder == ""  # its missing figures are blank cells, not a grey "None"
    columns = json.loads(at.dataframe[0].proto.columns)  # not the test pairs' best mode of Compare and Metrics
    # lr as the Train page's slider shows it, beside the best trial's line (the table read 2.00e-3)
    assert columns["lr"]["type_config"]["format"] == "%.2g"
    assert "on the validation pairs (held out of the trial's training data, never test pairs), each head's direct " \
        "output" in columns["MNIST SSIM"]["help"] and columns["val PSNR"]["help"].startswith("The mean of the MNIST")

    picker(at).set_value("evil").run()  # its run folder is not here: no command that would fail, a note
    assert not at.exception, [e.value for e in at.exception]
    assert not at.code
    assert any(shows_literally(c.value, f"Its run folder, {HOSTILE_RUN}, is not in this runs folder") for c in at.caption)
    (runs / HOSTILE_RUN).mkdir(parents=True)  # there now
    at.run()
    best = next(s.value for s in at.success if s.value.startswith("Best so far: "))
    values = best.split(" dB, ", 1)[1]
    assert shows_literally(values, f"{HOSTILE} = {HOSTILE}, lr = 0.002"), (values, markup(values))
    assert [c.value for c in at.code] == [f"python -m mixsep evaluate '{runs / HOSTILE_RUN}'  # scores it on the "
                                          "test split"]  # a code block: shown as typed, and quoted to paste

    at.text_input(key="sweep_name").set_value("plain")
    at.button[0].click().run()  # Start: the name of the study that is not listed
    assert "not made by `python -m mixsep sweep`" in seen(at.error[0].value), [e.value for e in at.error]
    assert not (runs / "plain").exists()


def fragment_tick(at, monkeypatch):
    """One beat of a fragment's run_every timer, as the browser sends it: a rerun of that fragment alone.

    AppTest only reruns the whole page, which rebuilds the picker and hid the bug; the runner's rerun
    request carries the fragment's id here, as the browser's does.
    """
    import streamlit.testing.v1.local_script_runner as runner

    fragment, = at._fragment_storage._fragments  # the page's one fragment, registered by the last full run
    real = runner.RerunData
    with monkeypatch.context() as m:
        m.setattr(runner, "RerunData", lambda **kw: real(**{**kw, "fragment_id": fragment, "is_auto_rerun": True}))
        at.run()


@pytest.mark.heavy(12)
def test_a_study_started_on_the_page_is_shown_while_it_runs(page_env, monkeypatch):
    """Just after Start the new study is not in the storage yet; the picker kept the study shown before,
    and the live part, refreshing alone, showed that one until the sweep ended."""
    import sweep_ui

    data, runs = page_env
    mixsep_study(data, runs, "older")
    at = app_page("5_Sweep.py", 120)
    assert picker(at).value == "older"
    at.text_input(key="sweep_name").set_value("page")
    at.multiselect(key="sweep_model").set_value(["tiny"])
    at.select_slider(key="sweep_batch_size").set_value((16, 16))
    at.toggle(key="sweep_pretrained").set_value(False)  # no download attempt per trial
    at.number_input(key="sweep_trials").set_value(1000)  # runs past the test's end: it is stopped below
    at.number_input(key="sweep_val").set_value(16)
    at.button[0].click().run()
    assert not at.error, [e.value for e in at.error]
    sweeps = sweep_ui.registry(runs)
    try:
        assert sweeps.running() is not None and picker(at).value == "older"  # the child has not made it yet
        deadline = time.monotonic() + 120
        while (picker(at) is None or picker(at).value != "page") and time.monotonic() < deadline:
            time.sleep(1)
            fragment_tick(at, monkeypatch)
            assert not at.exception, [e.value for e in at.exception]
        assert picker(at) is not None and picker(at).value == "page"
        assert "sweep running" in at.get("progress")[0].proto.text  # while it runs, not at its end
    finally:
        sweeps.stop()
        sweeps.wait(120)


def test_the_sweeps_whole_number_boxes_read_what_is_typed_and_start_refuses_a_fraction(page_env):
    """Trials, Validation pairs and Report every were integer boxes: the browser's parseInt read 1e3 as 1 and
    2.5 as 2, without a word. They are Train's float box now (ui_settings.whole_number_box)."""
    from streamlit.proto.NumberInput_pb2 import NumberInput

    data, runs = page_env
    at = app_page("5_Sweep.py", 60)
    boxes = {b.key: b for b in at.number_input}
    for key in ("sweep_trials", "sweep_val", "sweep_every"):
        assert boxes[key].proto.data_type == NumberInput.FLOAT and boxes[key].proto.format == "%g"
    at.number_input(key="sweep_trials").set_value(1e3).run()
    assert at.number_input(key="sweep_trials").value == 1000 and not at.error
    at.number_input(key="sweep_trials").set_value(2.5).run()
    assert "Trials must be a whole number (got 2.5)." in " ".join(e.value for e in at.error)
    at.button[0].click().run()  # Start
    assert any("correct it in the sidebar" in e.value for e in at.error)
    assert not runs.exists() or not any(runs.iterdir())  # no study was started


def test_a_typed_study_name_in_starts_refusal_shows_as_typed(page_env):
    """The refusal quoting a typed study name went through ui.sentence, which shows what sits between backticks
    as code: 'bad `name`/x' read 'bad name/x' with 'name' in code."""
    data, runs = page_env
    at = app_page("5_Sweep.py", 60)
    typed = "bad `name`/x **b**"
    at.text_input(key="sweep_name").set_value(typed).run()
    at.button[0].click().run()  # Start
    said = [e.value for e in at.error if "not a usable study name" in e.value]
    assert said and shows_literally(said[0], f"'{typed}' is not a usable study name"), said


def test_start_while_a_run_trains_says_why_once(page_env, monkeypatch):
    """Start pressed while the Train page trains a run said the same sentence twice: as Start's error and as
    the page's warning. The run's name shows as typed in it."""
    from types import SimpleNamespace

    import mixsep_ui

    data, runs = page_env
    name = "run `one` **b**"
    monkeypatch.setattr(mixsep_ui.registry(runs), "running", lambda: SimpleNamespace(name=name))
    at = app_page("5_Sweep.py", 60)
    busy = f"Training run {name} is in progress; one sweep or training at a time."
    assert [shows_literally(w.value, busy) for w in at.warning] == [True]
    at.button[0].click().run()  # Start
    said = [a.value for a in (*at.error, *at.warning) if "in progress" in a.value]
    assert len(said) == 1 and shows_literally(said[0], busy), said
    assert not runs.exists() or not any(runs.iterdir())


def test_a_journal_replaced_or_restored_from_a_shorter_copy_is_read_anew(page_env, tmp_path):
    """The page keeps the runs folder's journal open and replays it from where it last read. Moved away and made
    anew (what the damaged-journal sentence advises), or restored over from an older copy, it was read from the old
    file's offset: the page listed the gone studies and not the new ones, until the server restarted."""
    import shutil

    data, runs = page_env
    mixsep_study(data, runs, "old")
    assert picker(app_page("5_Sweep.py", 60)).options == ["old"]
    journal = runs / "optuna.journal"
    journal.rename(tmp_path / "journal.old")
    mixsep_study(data, runs, "fresh")
    mixsep_study(data, runs, "fresher")  # a longer file than the old one
    at = app_page("5_Sweep.py", 60)  # another tab of the same server: the storage it cached
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(picker(at).options) == ["fresh", "fresher"]
    shutil.copyfile(tmp_path / "journal.old", journal)  # written over in place: the same file, now shorter
    assert picker(app_page("5_Sweep.py", 60)).options == ["old"]
    mixsep_study(data, runs, "later")  # and a journal that grows is still read on from where it was
    assert sorted(picker(app_page("5_Sweep.py", 60)).options) == ["later", "old"]
    shutil.copyfile(journal, tmp_path / "backup")
    mixsep_study(data, runs, "gone")
    assert sorted(picker(app_page("5_Sweep.py", 60)).options) == ["gone", "later", "old"]
    shutil.copyfile(tmp_path / "backup", journal)  # restored in place while no tab looked, and then it grew past
    for name in ("g1", "g2", "g3"):                # the size the page last saw
        mixsep_study(data, runs, name)
    at = app_page("5_Sweep.py", 60)
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(picker(at).options) == ["g1", "g2", "g3", "later", "old"]
    other = tmp_path / "other"
    for name in ("o1", "o2", "o3"):
        mixsep_study(data, other, name)
    shutil.copyfile(other / "optuna.journal", journal)  # written over in place by a longer journal: the same size check
    at = app_page("5_Sweep.py", 60)                       # passes, the first record differs
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(picker(at).options) == ["o1", "o2", "o3"]
    inode = journal.stat().st_ino
    journal.unlink()  # removed, and a new journal made (on this file system, often on the same inode)
    for name in ("n1", "n2", "n3", "n4"):
        mixsep_study(data, runs, name)
    at = app_page("5_Sweep.py", 60)
    assert not at.exception, ([e.value for e in at.exception], journal.stat().st_ino == inode)
    assert sorted(picker(at).options) == ["n1", "n2", "n3", "n4"]


def test_resume_on_the_page_trains_as_its_per_machine_toggles_show(page_env):
    """Resume gave the sweep only the study and the data root, so a study started with --compile or --cpu-bf16
    resumed with them whatever this page's toggles showed (a machine's own choices: LOCAL)."""
    import sweep_ui

    data, runs = page_env
    mixsep_study(data, runs, "s")
    at = app_page("5_Sweep.py", 60)
    next(t for t in at.toggle if t.key == "sweep_compile").set_value(True).run()
    next(t for t in at.toggle if t.key == "sweep_cuda_graphs").set_value(False).run()
    next(b for b in at.button if b.label == "Resume").click().run()
    assert not at.exception, [e.value for e in at.exception]
    child = sweep_ui.registry(runs)._proc
    assert child is not None, [e.value for e in at.error]
    words = child.args[child.args.index("--study"):]
    assert words[:2] == ["--study", "s"] and "--compile" in words and "--no-cpu-bf16" in words, words
    assert "--no-cuda-graphs" in words, words


def test_resume_on_the_page_trains_on_the_studys_data_root_or_where_that_is_gone_the_servers(page_env, tmp_path,
                                                                                             monkeypatch, capfd):
    """The page's Resume gave the sweep the server's data root always: a study made on another folder changed the
    data its validation pairs come from, so its later trials scored on other pairs than its first (a study's
    resume on the command line reads the study's own)."""
    import shutil

    import sweep_ui

    data, runs = page_env
    made_on = tmp_path / "made on"
    shutil.copytree(data, made_on)
    mixsep_study(made_on, runs, "s")
    at = app_page("5_Sweep.py", 60)  # the server's data root: `data` (MIXSEP_DATA_ROOT)
    next(b for b in at.button if b.label == "Resume").click().run()
    assert not at.exception, [e.value for e in at.exception]
    child = sweep_ui.registry(runs)._proc
    assert child is not None, [e.value for e in at.error]
    words = child.args[child.args.index("--study"):]
    assert words[words.index("--data-root") + 1] == str(made_on.resolve()) and words.count("--data-root") == 1, words
    sweep_ui.registry(runs).stop()
    child.wait(120)
    shutil.rmtree(made_on)  # the study's folder is not here: the server's, and the server's terminal says nothing
    capfd.readouterr()
    p = plan(build_parser().parse_args(["sweep", "--study", "s", "--runs-dir", str(runs)]), str(data))
    assert p.config.data_root == str(data.resolve()) and capfd.readouterr().err == ""


def test_a_sweep_of_this_runs_folder_in_another_storage_is_named_not_shown_as_starting(page_env, tmp_path,
                                                                                       monkeypatch):
    """A sweep started with --storage sqlite:///... while the page reads the runs folder's journal: the page
    said "Study 'q2' is starting…" for the whole sweep, and once the journal held another study, showed that
    one as "not running" beside a Stop that would stop the sweep it did not show."""
    import os
    import socket
    import subprocess

    from mixsep.run import identity, write_json
    from mixsep.sweep import storage_key, storage_label

    data, runs = page_env
    elsewhere = f"sqlite:///{tmp_path / 'q2.db'}"
    (runs / "q2").mkdir(parents=True)
    sweeper = conftest.holding(runs / "q2" / ".sweep.lock")  # a live sweep command, as sweep.json names it
    try:
        write_json(runs / "q2" / "sweep.json", {
            "study": "q2", "storage": storage_label(elsewhere, runs), "storage_key": storage_key(elsewhere, runs),
            "host": socket.gethostname(), "state": "running", **identity(sweeper.pid)})
        said = f"Sweep 'q2' is running with its trials in {elsewhere}, not in the storage this page reads"
        for journal_holds in ([], ["made"]):
            for name in journal_holds:
                mixsep_study(data, runs, name)
            at = app_page("5_Sweep.py", 60)
            assert not at.exception, [e.value for e in at.exception]
            infos = [seen(i.value).replace("\u2060", "") for i in at.info]
            assert sum(said in i for i in infos) == 1, infos
            assert not any("starting" in i or "No study yet" in i for i in infos), infos
            if journal_holds:
                assert picker(at).value == "made"
                assert "sweep not running" in at.get("progress")[0].proto.text
        # the page reading that storage, spelt another way (relative to the server's folder, a driver named, a
        # query): it is the sweep's own storage, shown live, not "in another storage"
        monkeypatch.chdir(tmp_path)
        at.text_input(key="sweep_storage").set_value("sqlite+pysqlite:///q2.db?timeout=5").run()
        assert not at.exception, [e.value for e in at.exception]
        assert not any("not in the storage this page reads" in seen(i.value) for i in at.info)
        assert sweeper.poll() is None and os.path.exists(f"/proc/{sweeper.pid}")
    finally:
        sweeper.kill()
        sweeper.wait()


def test_a_storage_key_names_the_database_whatever_the_spelling(tmp_path, monkeypatch):
    from mixsep.sweep import storage_key

    monkeypatch.chdir(tmp_path)
    same = ["postgresql://me:secret@DB.example/study", "postgresql+psycopg2://me@db.example:5432/study?sslmode=require"]
    assert len({storage_key(u, tmp_path) for u in same}) == 1 and "secret" not in storage_key(same[0], tmp_path)
    assert storage_key("postgresql://me@db.example/other", tmp_path) != storage_key(same[0], tmp_path)
    assert storage_key("sqlite:///s.db", tmp_path) == storage_key(f"sqlite:///{tmp_path}/s.db?timeout=5", tmp_path)
    assert storage_key("", tmp_path) == storage_key(None, tmp_path / ".") != storage_key("sqlite:///s.db", tmp_path)
    assert storage_key("postgresql://u@/db?host=/var/run/postgresql", tmp_path) != \
        storage_key("postgresql://u@/db?host=/tmp", tmp_path)  # two servers by their sockets
    assert storage_key("mysql://u@h/db", tmp_path) == storage_key("mariadb://u@h:3306/db", tmp_path)


def test_an_sqlite_storage_is_named_as_it_was_typed():
    """A file name with a space or a "ü" was shown percent-encoded ("x%20y%20%C3%BC.db") in every sentence."""
    from mixsep.sweep import storage_label

    assert storage_label("sqlite:///x y ü.db", Path(".")) == "sqlite:///x y ü.db"
    assert storage_label("postgresql://me:secret@db/ü", Path(".")) == "postgresql://me:***@db/%C3%BC"  # a server's


def test_start_and_resume_write_an_sqlite_storage_only_inside_the_runs_folder(page_env, tmp_path):
    """The Storage box made the server create an SQLite file wherever it may write, or add Optuna's tables to another
    program's database, which the README's list of what the server writes does not allow. Start and Resume now
    refuse an SQLite file outside the runs folder (the server's own MIXSEP_SWEEP_STORAGE is the server's choice);
    reading one, to watch a sweep started in a terminal, stays."""
    import sqlite3

    import sweep_ui

    data, runs = page_env
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other_app = elsewhere / "app.db"  # another program's database
    with sqlite3.connect(other_app) as db:
        db.execute("create table notes (body text)")
    made_there = elsewhere / "study.db"  # a study started in a terminal, stored there
    create_study(plan(build_parser().parse_args(["sweep", "--data-root", str(data), "--runs-dir", str(runs), "--study",
                                                 "terminal", "--storage", f"sqlite:///{made_there}", *TINY])))
    before = {p: p.read_bytes() for p in (other_app, made_there)}
    refusal = (f"The dashboard writes studies only inside its runs folder ({runs.resolve()}), and the SQLite file "
               f"{{}} is not in it; name a file there (sqlite:///{runs.resolve()}/NAME.db), or run the sweep in a "
               "terminal (`python -m mixsep sweep --storage URL`), or start the server with MIXSEP_SWEEP_STORAGE set "
               "to that URL.")
    at = app_page("5_Sweep.py", 60)
    at.number_input(key="sweep_val").set_value(16)  # settings this data root takes: Start would start the sweep
    at.multiselect(key="sweep_model").set_value(["tiny"])
    at.select_slider(key="sweep_batch_size").set_value((16, 16))
    for db in (elsewhere / "new.db", other_app):
        at.text_input(key="sweep_storage").set_value(f"sqlite:///{db}").run()
        at.text_input(key="sweep_name").set_value("page")
        next(b for b in at.button if b.label == "Start").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert [seen(e.value).replace("\u2060", "") for e in at.error] == [refusal.format(db)]
    at.text_input(key="sweep_storage").set_value(f"sqlite:///{made_there}").run()
    assert at.selectbox(key="sweep_pick").value == "terminal"  # read and shown
    next(b for b in at.button if b.label == "Resume").click().run()
    assert [seen(e.value).replace("\u2060", "") for e in at.error] == [refusal.format(made_there)]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["app.db", "study.db"]
    assert {p: p.read_bytes() for p in before} == before and sweep_ui.registry(runs).running() is None
    sweep_ui.check_writes_here(f"sqlite:///{runs}/inside.db", runs)  # a file in the runs folder may be written
    sweep_ui.check_writes_here("postgresql://user@dbhost/mixsep", runs)  # a database server is no file here


def test_a_database_that_goes_bad_after_the_page_read_it_is_one_sentence(page_env, monkeypatch):
    """Optuna raises StorageInternalError from a database lost after the page opened it (PostgreSQL stopped): the
    page showed it as a traceback. Here the SQLite file the server reads is overwritten with what is no database."""
    data, runs = page_env
    runs.mkdir(parents=True)
    db = runs / "s.db"
    url = f"sqlite:///{db}"
    monkeypatch.setenv("MIXSEP_SWEEP_STORAGE", url)
    create_study(plan(build_parser().parse_args(["sweep", "--data-root", str(data), "--runs-dir", str(runs),
                                                 "--study", "gone", "--storage", url, *TINY])))
    at = app_page("5_Sweep.py", 60)
    assert not at.exception and picker(at).value == "gone", [e.value for e in at.exception]
    size = db.stat().st_size
    with open(db, "r+b") as f:  # in place: the server's open connection reads it
        f.write(b"no database here" * (size // 16))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    said = [e.value for e in at.error if "Cannot read the sweep's database" in e.value]
    assert len(said) == 1 and "the page reads it again as it refreshes" in said[0], [e.value for e in at.error]


def test_parallel_coordinates_show_every_trial_and_tell_close_values_apart():
    """QA: Optuna coloured the worst trial's line near-white (plotly's Blues starts at white), so it looked missing,
    and its objective axis read 13.5, 13.4, 13.4, 13.4, 13.4 for trials of 13.41 to 13.46."""
    import optuna
    import optuna.visualization as vis

    import sweep_ui

    study = optuna.create_study(direction="maximize")
    for value, lr in ((13.41, 1e-3), (13.46, 3e-3), (13.43, 2e-3)):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, value=value, distributions={
            "lr": optuna.distributions.FloatDistribution(1e-5, 1, log=True)}))
    fig = vis.plot_parallel_coordinate(study, target_name="validation PSNR (dB)")
    sweep_ui._readable_parallel(fig, study.trials)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 3
    for t in lines:  # every line stands out from the white page: no channel above 230 out of 255
        assert max(int(c) for c in t.line.color[4:-1].split(",")) <= 230, t.line.color
    assert sorted(t.customdata[0][1] for t in lines) == ["13.410", "13.430", "13.460"]  # the hover's value, exact
    ticks = [(a.text, 13.41 + 0.05 * a.y) for a in fig.layout.annotations if a.x == 0]
    assert len({t for t, _ in ticks}) == 5 and all(len(t.split(".")[1]) == 3 for t, _ in ticks), ticks
    assert all(abs(float(text) - at) <= 0.0005 + 1e-9 for text, at in ticks), ticks  # each label where it stands


def test_parallel_coordinates_label_each_parameters_ticks_as_the_values_there_on_a_ground_of_their_own():
    """QA, 90 trials: their lines crossed the tick labels out, the highest beta2 tried (0.9998) read "1", and the
    learning rate's lowest value (7.43e-05) and the decade next to it (0.0001) were printed over each other."""
    import optuna
    import optuna.visualization as vis

    import sweep_ui

    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(0)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-5, 0.1, log=True),
             "beta2": optuna.distributions.FloatDistribution(0.9, 0.9999),
             "batch_size": optuna.distributions.CategoricalDistribution([16, 32])}
    for i in range(30):
        lr, beta2 = (7.43e-5, 0.9998) if i == 0 else (float(10 ** rng.uniform(-4.1, -1)), float(rng.uniform(0.908, 0.999)))
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "beta2": beta2, "batch_size": int(rng.choice([16, 32]))},
            value=float(rng.uniform(10, 20)), distributions=dists))
    fig = vis.plot_parallel_coordinate(study, target_name="validation PSNR (dB)")
    sweep_ui._readable_parallel(fig, study.trials)
    axes = list(fig.layout.xaxis.ticktext)
    ticks = {name: [(a.y, a.text) for a in fig.layout.annotations if a.x == axes.index(name)] for name in dists}
    assert all(a.bgcolor for a in fig.layout.annotations)
    beta2 = [t.params["beta2"] for t in study.trials]
    assert ticks["beta2"][-1] == (1.0, "0.9998") and len(ticks["beta2"]) == 5
    span = 0.9998 - min(beta2)  # each label within a thousandth of the axis of its value, in as few digits
    assert all(abs(float(text) - (min(beta2) + y * span)) <= span / 1000 for y, text in ticks["beta2"]), ticks
    assert all(len(text.rstrip("0").split(".")[1]) <= 4 for _, text in ticks["beta2"]), ticks
    lr = [text for _, text in ticks["lr"]]
    assert lr[0] == "7.43e-05" and "0.0001" not in lr and {"0.001", "0.01"} <= set(lr)
    assert [text for _, text in ticks["batch_size"]] == ["16", "32"]
    # a trial added without beta2 (Optuna adds a "None" tick and stretches the axis): the values' ticks read as above
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3, "batch_size": 16}, value=12.0,
                                              distributions={k: v for k, v in dists.items() if k != "beta2"}))
    fig = vis.plot_parallel_coordinate(study, target_name="validation PSNR (dB)")
    sweep_ui._readable_parallel(fig, [t for t in study.trials if t.state.is_finished()])
    texts = [a.text for a in fig.layout.annotations if a.x == list(fig.layout.xaxis.ticktext).index("beta2")]
    assert "0.9998" in texts and "1" not in texts, texts


def test_a_picked_study_says_what_resume_goes_on_with_beside_the_sidebars_new_study(page_env):
    """With a study picked, the sidebar showed a new study's defaults (20 trials, the default ranges) as if they
    were the study's; Resume goes on with the study's own, which the page did not show (QA)."""
    import mixsep_ui as ui

    data, runs = page_env
    tiny = TINY[:TINY.index("--batch-size")] + TINY[TINY.index("--batch-size") + 2:]  # searched below
    made = create_study(plan(build_parser().parse_args(sweep_args(
        data, runs, "--study", "s", *tiny, "--space", "lr=0.0001:0.01:log,beta1,batch_size=8|16", "--epochs", "2",
        "--trials", "1"))))
    storage = open_storage(None, runs)
    import optuna

    odd = optuna.create_study(study_name="odd", storage=storage, direction="maximize")  # written by another tool
    odd.set_user_attr(ATTR, {**made.user_attrs[ATTR], "space": f"{HOSTILE}=1:2", "config": 5, "trials": HOSTILE})
    at = app_page("5_Sweep.py", 60)
    picker(at).set_value("s").run()
    assert not at.exception, [e.value for e in at.exception]
    assert next(n for n in at.number_input if n.key == "sweep_trials").value == 20  # the sidebar: a new study's
    said = seen(next(c.value for c in at.caption if c.value.startswith("This study")))
    assert said.startswith("This study searches Learning rate from 0.0001 to 0.01 (log scale), Adam beta1 from "), said
    assert "Epochs: 2;" in said and "Model: tiny;" in said and "1 trial on 16 validation pairs" in said, said
    # a searched setting is each trial's own: not "Batch size: 16" (the study's fixed flags) beside "among 8, 16"
    assert "Batch size among 8, 16." in said and "Batch size:" not in said, said
    assert "Resume goes on with these" in said
    picker(at).set_value("odd").run()
    assert not at.exception, [e.value for e in at.exception]
    caption = next(c.value for c in at.caption if c.value.startswith("This study"))
    assert ui.literal(HOSTILE) in caption and f"{ui.literal(HOSTILE)} trials" in caption, caption


def test_the_new_studys_settings_the_storage_and_the_study_shown_are_kept_from_page_to_page(page_env):
    """A visit to a trial's Samples and back gave the default name, 20 trials on 2,000 pairs and the newest study
    back, while the ranges were kept: Start then ran another study than the one set up, without a word (QA)."""
    data, runs = page_env
    for name in ("older", "newer"):
        mixsep_study(data, runs, name)
    at = app_page("5_Sweep.py", 60)
    first = picker(at).value
    other = ({"older", "newer"} - {first}).pop()
    at.text_input(key="sweep_name").set_value("mystudy")
    for key, value in (("sweep_trials", 21), ("sweep_val", 500), ("sweep_every", 7)):
        next(n for n in at.number_input if n.key == key).set_value(value)
    picker(at).set_value(other).run()
    at.switch_page("app_pages/2_Samples.py").run()
    at.switch_page("app_pages/5_Sweep.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="sweep_name").value == "mystudy" and picker(at).value == other
    assert [next(n for n in at.number_input if n.key == k).value for k in ("sweep_trials", "sweep_val", "sweep_every")] \
        == [21, 500, 7]
    # the storage typed is kept too; a study kept that the storage shown does not hold is not picked
    url = f"sqlite:///{runs / 'other.db'}"
    create_study(plan(build_parser().parse_args(["sweep", "--data-root", str(data), "--runs-dir", str(runs), "--study",
                                                 "elsewhere", "--storage", url, *TINY])))
    at.text_input(key="sweep_storage").set_value(url).run()
    assert not at.exception, [e.value for e in at.exception]
    assert picker(at).value == "elsewhere"
    at.switch_page("app_pages/2_Samples.py").run()
    at.switch_page("app_pages/5_Sweep.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="sweep_storage").value == url and picker(at).value == "elsewhere"
    at.text_input(key="sweep_storage").set_value("").run()
    assert not at.exception, [e.value for e in at.exception]
    assert picker(at).value == first  # "elsewhere" is not in the journal: its first study again
