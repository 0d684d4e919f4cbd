"""One declaration per setting: the metadata, the flags and widgets made from it, and its bad values."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mixsep import MixsepError, TrainConfig
from mixsep.cli import build_parser, main
from mixsep.config import GROUPS, add_train_flags, config_from_args, setting_by_name, settings
from mixsep.model import MODELS

ROOT = Path(__file__).resolve().parents[1]
# the train command's flags before they were generated: scripts and the docs use these names
TODAYS_FLAGS = {"--data-root": "./data", "--epochs": 1, "--batch-size": 128, "--lr": 1e-3, "--beta1": 0.9,
                "--beta2": 0.999, "--weight-decay": 0.0, "--schedule": "constant", "--loss": "mse", "--train-size": 0,
                "--repair": False, "--no-repair": False, "--seed": 0, "--model": "faithful", "--pretrained": True,
                "--no-pretrained": True, "--device": "auto", "--checkpoint-every": 200, "--max-minutes": 0.0}
NOT_SETTINGS = {"help", "runs_dir", "run_dir", "config", "quiet", "recipe"}  # the train command's own flags


def train_actions() -> dict[str, argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


# --------------------------------------------------------------------------- flags


def test_every_field_has_exactly_one_flag_with_its_default():
    actions = train_actions()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(actions) - NOT_SETTINGS == fields  # no field without a flag, no flag without a field
    # a flag left out is None, so that --recipe can tell it from one given; the config fills the default
    assert config_from_args(build_parser().parse_args(["train"])) == TrainConfig()
    for s in settings():
        a = actions[s.name]
        assert s.flag in a.option_strings and a.default is None, s.name
        assert a.help and "Traceback" not in a.help and ("(default " in a.help or "; default " in a.help), a.help
        if s.type is bool:
            assert f"--no-{s.flag[2:]}" in a.option_strings


def test_setting_argv_is_read_back_by_the_train_flags():
    for s in settings():
        for value in ((True, False) if s.type is bool else (s.default,)):
            args = build_parser().parse_args(["train", *s.argv(value)])
            assert getattr(args, s.name) == value, (s.name, s.argv(value))


def test_todays_flag_names_and_defaults_are_kept():
    by_flag = {o: a for a in train_actions().values() for o in a.option_strings}
    left_out = config_from_args(build_parser().parse_args(["train"]))
    for flag, default in TODAYS_FLAGS.items():
        assert getattr(left_out, by_flag[flag].dest) == default, flag


def test_flags_make_the_config(tmp_path):
    args = build_parser().parse_args(["train", "--data-root", str(tmp_path), "--lr", "2e-3", "--batch-size", "5e1",
                                      "--no-pretrained", "--repair", "--schedule", "onecycle", "--no-amp",
                                      "--weight-decay", "1e-4", "--seed", str(2**63 - 1), "--max-minutes", "1.5"])
    cfg = config_from_args(args)
    assert cfg == TrainConfig(data_root=str(tmp_path), lr=2e-3, batch_size=50, pretrained=False, repair=True,
                              schedule="onecycle", amp=False, weight_decay=1e-4, seed=2**63 - 1, max_minutes=1.5)
    assert type(cfg.batch_size) is int and type(cfg.lr) is float


def test_flags_without_defaults_tell_what_the_user_gave():
    """The form a sweep uses for its fixed flags: every setting left alone is None."""
    p = argparse.ArgumentParser()
    add_train_flags(p, defaults=False)
    args = p.parse_args(["--epochs", "3", "--no-pretrained"])
    given = {k: v for k, v in vars(args).items() if v is not None}
    assert given == {"epochs": 3, "pretrained": False}
    assert config_from_args(args) == TrainConfig(epochs=3, pretrained=False)


@pytest.mark.parametrize("text,value", [("5e4", 50000), ("12345678901234567.0", 12345678901234567),
                                        ("9223372036854775807.0", 2**63 - 1), ("1_000", 1000)])
def test_a_whole_number_written_in_any_form_is_read_exactly(text, value):
    """--seed 12345678901234567.0 was read through a float and became ...568 without a word; the other
    commands' whole numbers (grid --n, sweep --trials) took no 2e1 at all."""
    assert config_from_args(build_parser().parse_args(["train", "--seed", text])).seed == value
    assert build_parser().parse_args(["grid", "run", "--seed", text]).seed == value


def test_config_file_overrides_the_flags(tmp_path):
    path = tmp_path / "config.json"
    TrainConfig(lr=5e-4, epochs=4).save(path)
    args = build_parser().parse_args(["train", "--config", str(path), "--lr", "1e-2"])
    assert config_from_args(args) == TrainConfig(lr=5e-4, epochs=4)


def test_a_config_file_with_unknown_keys_is_refused_but_a_runs_own_is_read(tmp_path, capsys):
    """{"rows": [], "foo": 1} trained a full default run; a typo such as "learning_rate" was dropped unseen."""
    typo = tmp_path / "mine.json"
    typo.write_text('{"learning_rate": 0.01, "epochs": 1}')
    runs = tmp_path / "runs"
    assert main(["train", "--config", str(typo), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {typo} names a setting mixsep does not know ('learning_rate'); the settings are "
                          "data_root, ") and "\n" not in err
    assert not runs.exists()
    twice = tmp_path / "twice.json"  # the last "lr" was taken without a word
    twice.write_text('{"lr": 0.5, "epochs": 1, "lr": 0.001}')
    assert main(["train", "--config", str(twice), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {twice} gives 'lr' more than once; keep one of each (JSON would silently take the last)."
    assert not runs.exists()
    run = tmp_path / "old-run"  # a run folder of another version: its extra key is dropped, as before
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**TrainConfig(lr=5e-4).to_dict(), "retired_setting": 3}))
    args = build_parser().parse_args(["train", "--config", str(run / "config.json"), "--run-dir", str(run)])
    assert config_from_args(args).lr == 5e-4


# --------------------------------------------------------------------------- metadata


def test_metadata_is_consistent():
    ss = settings()
    assert [s.name for s in ss] == [f.name for f in dataclasses.fields(TrainConfig)]
    for s in ss:
        assert s.type in (int, float, bool, str) and s.group in GROUPS and s.help and s.label, s.name
        s.check(s.default)  # every default is valid
        if s.low is not None and s.high is not None:
            assert s.low < s.high, s.name
        if s.log:
            assert s.low is not None and s.low > 0, s.name
        if s.choices is not None:
            assert s.default in s.choices and s.type is str, s.name
        if s.sweep is not None:
            if s.categorical:
                assert len(set(s.sweep)) == len(s.sweep) >= 2, s.name
                for v in s.sweep:
                    s.check(v)
            else:
                low, high = s.sweep
                assert low < high, s.name
                s.check(low), s.check(high)  # the sweep stays inside the valid range
        for v in s.options or ():
            s.check(v)
        for v in s.span or ():
            s.check(v)
        if s.widget in ("slider", "number") and s.span:
            assert s.span[0] <= s.default <= s.span[1], s.name
        if s.options:
            assert s.default in s.options, s.name


def test_the_default_search_space_is_the_sliders():
    sweep = {s.name: s.sweep for s in settings() if s.sweep is not None}
    assert sweep == {"lr": (1e-5, 1e-1), "beta1": (0.5, 0.999), "beta2": (0.9, 0.9999), "model": tuple(MODELS),
                     "batch_size": (16, 32, 64, 128, 256, 512), "schedule": ("constant", "onecycle"),
                     "loss": ("mse", "log_mse")}
    assert setting_by_name("lr").log and not setting_by_name("beta1").log
    assert {s.name for s in settings() if s.categorical} == {"model", "batch_size", "schedule", "loss"}


def test_sweep_distributions():
    lr = setting_by_name("lr").distribution()
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-1, True)
    assert setting_by_name("batch_size").distribution((32, 64)).choices == (32, 64)
    assert setting_by_name("beta2").distribution((0.95, 0.99)).high == 0.99


def test_model_choices_come_from_the_models():
    assert setting_by_name("model").choices == tuple(MODELS)
    assert setting_by_name("model", resolve=False).choices is None  # the parser stays free of torch


# --------------------------------------------------------------------------- validate, from_dict, load


@pytest.mark.parametrize("field,value,match", [
    ("batch_size", 1, "BatchNorm needs two samples per channel"),
    ("epochs", 0, "Epochs must lie in [1, 100000] (got 0): fewer trains nothing, and more is surely a typo"),
    ("batch_size", True, "Setting 'batch_size' must be a whole number, not the boolean true"),
    ("batch_size", 12.5, "must be a whole number"),
    ("weight_decay", -1e-4, "Weight decay must lie in [0, 1] (got -0.0001)"),
    ("weight_decay", math.nan, "Weight decay must be a finite number"),
    ("lr", math.inf, "Learning rate must be a finite number"),
    ("lr", "0.001", "Setting 'lr' must be a number, not the string \"0.001\""),
    ("lr", [1e-3], "Setting 'lr' must be a number, not the list"),
    ("seed", -1, "Seed must lie in"),
    ("seed", 2**63, "Seed must lie in"),
    ("pretrained", 1, "Setting 'pretrained' must be true or false"),
    ("schedule", "cosine", "Unknown learning-rate schedule 'cosine'"),
    ("device", "tpu", "Unknown device 'tpu'"),
    ("max_minutes", -1.0, "must be at least 0"),
    ("data_root", None, "Setting 'data_root' must be text, not null; write it like its default"),
    ("weight_decay", 1e39, "Weight decay must lie in [0, 1] (got 1e+39); 0 turns it off, and beyond 1 it only pulls every weight to zero"),
])
def test_bad_values_get_one_sentence(field, value, match):
    with pytest.raises(MixsepError, match=re.escape(match)) as e:
        dataclasses.replace(TrainConfig(), **{field: value}).validate()
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_good_edge_values_pass():
    TrainConfig(batch_size=2, seed=2**63 - 1, weight_decay=0.0, lr=1e-6, device="cuda:1").validate()


@pytest.mark.parametrize("data", [[1, 2], 3, "lr", None])
def test_from_dict_refuses_what_is_not_an_object(data):
    with pytest.raises(MixsepError, match="JSON object of settings"):
        TrainConfig.from_dict(data)


def test_from_dict_reads_whole_numbers_as_floats_and_drops_unknown_keys():
    cfg = TrainConfig.from_dict({"lr": 1, "weight_decay": 0, "from_a_later_version": 3})
    assert type(cfg.lr) is float and cfg.lr == 1.0 and type(cfg.weight_decay) is float
    cfg.validate()


def test_a_runs_saved_config_from_before_a_setting_existed_keeps_what_its_version_did(tmp_path, monkeypatch):
    """Configs saved before checkpoint_seconds existed took today's 10 s: an old run resumed wrote epoch checkpoints
    at most every 10 s and lost epoch-2.pt without a word (QA); its version wrote one at every epoch's end."""
    old = TrainConfig(model="tiny", keep_epochs=1).to_dict()
    del old["checkpoint_seconds"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    assert TrainConfig.load(run / "config.json", of_run=True).checkpoint_seconds == 0.0  # a run's own
    assert TrainConfig.from_dict(old, saved=True).checkpoint_seconds == 0.0  # a checkpoint's or a study's
    # a file a user wrote, or one that says it: today's default, or what it says
    assert TrainConfig.load(run / "config.json").checkpoint_seconds == TrainConfig().checkpoint_seconds == 10.0
    assert TrainConfig.from_dict({**old, "checkpoint_seconds": 30}, saved=True).checkpoint_seconds == 30.0
    monkeypatch.syspath_prepend(str(ROOT))
    import mixsep_ui  # the pages say the cadence its trainer keeps (QA: "at most once in 10 s" of such a run)

    assert mixsep_ui._checkpoint_cadence(run) == "every 200 steps and at the end of each epoch"


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "holds a JSON list, not an object of settings"),
    ("42", "holds a JSON number"),
    ("{\"lr\": ", "is not a readable mixsep config"),
    ("[" * 200_000 + "]" * 200_000, "is not a readable mixsep config \\(nested too deeply\\)"),
    ('{"seed": ' + "9" * 5000 + "}", "is not a readable mixsep config \\(Exceeds the limit"),
])
def test_load_refuses_files_that_are_not_configs(tmp_path, text, match):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(MixsepError, match=match) as e:
        TrainConfig.load(path)
    assert "half written" not in str(e.value)  # only a run's own config.json may be


def test_load_refuses_a_fifo_and_a_link_loop_without_waiting(tmp_path):
    fifo, loop = tmp_path / "fifo.json", tmp_path / "loop.json"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    loop.symlink_to(loop)
    with pytest.raises(MixsepError, match="is not a regular file"):
        TrainConfig.load(fifo)
    with pytest.raises(MixsepError, match=r"cannot be read \(Too many levels of symbolic links\)"):
        TrainConfig.load(loop)
    for path in (fifo, loop):
        assert main(["train", "--config", str(path)]) == 2


# --------------------------------------------------------------------------- the real command line


def mixsep_train(tmp_path, *args) -> subprocess.CompletedProcess:
    """`mixsep train ...` through the CLI's main in this process (a bad value is refused before any
    training; test_cli runs the real `python -m mixsep` for the traceback-free exit), as a finished process."""
    argv = ["train", "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "no-data"), "--quiet", *args]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("MIXSEP_CACHE_DIR", str(tmp_path / "cache"))
        mp.chdir(tmp_path)
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusals
            code = e.code
    return subprocess.CompletedProcess(["mixsep", *argv], code, out.getvalue(), err.getvalue())


def assert_one_sentence(p: subprocess.CompletedProcess, match: str, tmp_path: Path) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and match in errors[0], p.stderr
    assert errors[0].rstrip().endswith(".")
    assert not (tmp_path / "runs").exists()  # refused before any run folder is made


@pytest.mark.parametrize("args,match", [
    (["--batch-size", "1"], "Batch size must be at least 2 (got 1): BatchNorm needs two samples per channel"),
    (["--weight-decay", "-0.01"], "Weight decay must lie in [0, 1] (got -0.01)"),
    (["--weight-decay", "nan"], "Weight decay must be a finite number (got nan)"),
    (["--seed", "1e20"], "Seed must lie in [0, 9223372036854775807] (got 1e20)"),
    (["--seed", "-3"], "Seed must lie in"),
    (["--lr", "abc"], "--lr takes a number (got 'abc')"),
    (["--lr", "inf"], "Learning rate must be a finite number"),
    (["--epochs", "2.5"], "--epochs takes a whole number (got '2.5')"),
    # past 2**63 - 1: 1e4300 left a run folder and a traceback (no message can print its 4,301 digits)
    (["--seed", "1e4300"], "Seed must lie in [0, 9223372036854775807] (got 1e4300)"),
    (["--checkpoint-every", "1e4300"], "--checkpoint-every takes a whole number no larger than"),
    (["--train-size", "99999999999999999999"], "--train-size takes a whole number no larger than"),
    (["--schedule", "cosine"], "Unknown learning-rate schedule 'cosine'; choose one of: constant, onecycle"),
    (["--model", "nope"], "Unknown model 'nope'"),
])
def test_bad_flags_one_sentence_exit_2(tmp_path, args, match):
    assert_one_sentence(mixsep_train(tmp_path, *args), match, tmp_path)


@pytest.mark.parametrize("config,match", [
    ({"lr": "0.001"}, "Setting 'lr' must be a number, not the string \"0.001\""),
    ({"batch_size": True}, "Setting 'batch_size' must be a whole number, not the boolean true"),
    ({"epochs": [2]}, "Setting 'epochs' must be a whole number, not the list [2]"),
    ({"seed": 1e20}, "Setting 'seed' must be a whole number, not the number 1e+20"),
    ({"weight_decay": float("nan")}, "Weight decay must be a finite number"),
    ({"batch_size": 1}, "BatchNorm needs two samples"),
    ([{"lr": 1e-3}], "holds a JSON list, not an object of settings"),
])
def test_bad_config_file_one_sentence_exit_2(tmp_path, config, match):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))  # NaN is written as JSON's NaN, which Python reads back
    assert_one_sentence(mixsep_train(tmp_path, "--config", str(path)), match, tmp_path)


@pytest.mark.parametrize("kind,match", [
    ("missing", "There is no config file"),
    ("folder", "is a folder; give the config.json file"),
    ("fifo", "is not a regular file; give a config.json file"),
    ("link loop", "cannot be read (Too many levels of symbolic links)"),
])
def test_a_config_file_that_does_not_read_is_said_before_the_flags_beside_it(tmp_path, kind, match):
    """`train --config missing.json --model tiny` said --model would be ignored, and only once it was dropped
    that the file was not there."""
    path = tmp_path / "mine.json"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer forever
    elif kind == "link loop":
        path.symlink_to(path)
    p = mixsep_train(tmp_path, "--config", str(path), "--model", "tiny")
    assert_one_sentence(p, match, tmp_path)
    assert "would be ignored" not in p.stderr


# --------------------------------------------------------------------------- widgets


def draw_all(ranges: bool):
    """An app that draws every setting's widget, or every sweep dimension's range."""
    import streamlit as st

    from mixsep.config import settings
    from ui_settings import setting_widget

    for s in settings():
        if s.widget and (s.sweep is not None or not ranges):
            st.session_state.setdefault("values", {})[s.name] = setting_widget(s, "t_", range_=ranges)


@pytest.fixture
def app_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # ui_settings.py sits at the repo root, as `streamlit run` sees it


WIDGETS = {"slider": "slider", "select_slider": "select_slider", "toggle": "toggle", "select": "selectbox",
           "number": "number_input"}


def test_train_widgets_match_the_settings(app_path):
    at = AppTest.from_function(draw_all, args=(False,)).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {s.name: s for s in settings() if s.widget}
    assert at.session_state["values"] == {name: s.default for name, s in shown.items()}
    for name, s in shown.items():
        w = getattr(at, WIDGETS[s.widget])(key=f"t_{name}")
        assert w.label.startswith(s.label) and w.value == s.default, name
    # the defaults are the report's settings, and moving a widget changes the value it returns
    at.select_slider(key="t_lr").set_value(1e-4)
    at.select_slider(key="t_train_size").set_value(512)
    at.number_input(key="t_weight_decay").set_value(1e-3)
    at.run()
    values = at.session_state["values"]
    assert (values["lr"], values["train_size"], values["weight_decay"]) == (1e-4, 512, 1e-3)
    TrainConfig(**values).validate()


def test_sweep_ranges_drawn_with_the_same_widgets(app_path):
    at = AppTest.from_function(draw_all, args=(True,)).run()
    assert not at.exception, [e.value for e in at.exception]
    values = at.session_state["values"]
    assert values == {s.name: s.sweep for s in settings() if s.sweep is not None}
    at.select_slider(key="t_lr").set_value((1e-4, 1e-2))
    at.select_slider(key="t_batch_size").set_value((32, 128))
    at.slider(key="t_beta1").set_value((0.8, 0.95))
    at.multiselect(key="t_schedule").unselect("constant")
    at.run()
    values = at.session_state["values"]
    assert values["lr"] == (1e-4, 1e-2) and values["batch_size"] == (32, 64, 128)
    assert values["beta1"] == (0.8, 0.95) and values["schedule"] == ("onecycle",)


# --------------------------------------------------------------------------- the extremes train


def test_largest_seed_and_smallest_batch_train(tiny_config, tmp_path):
    from mixsep.train import train_steps

    # data.py derives per-epoch seeds from it: they must stay inside torch's 64-bit range
    cfg = dataclasses.replace(tiny_config, seed=2**63 - 1, batch_size=2, train_size=4, repair=True)
    assert [r.step for r in train_steps(cfg.validate(), tmp_path / "run")] == [1, 2]


# --------------------------------------------------------------------------- how torch's threads wait

OPENMP_SETTING = re.compile(r"^\s*(OMP_WAIT_POLICY|GOMP_SPINCOUNT) = '([^']*)'", re.M)


def openmp_settings(args: list[str], **env) -> tuple[dict, str]:
    """(libgomp's own report of its wait settings, stdout) of a real Python process started with ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, *args], env={**base, **env, "OMP_DISPLAY_ENV": "VERBOSE"},
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return dict(OPENMP_SETTING.findall(out.stderr)), out.stdout


def test_torch_threads_sleep_while_they_wait_unless_the_user_chose():
    """libgomp prints what it read when torch loads it (OMP_DISPLAY_ENV): the runtime's state, not ours."""
    info = ["-m", "mixsep", "info", "--model", "tiny", "--data-root", str(ROOT)]
    got, stdout = openmp_settings(info)
    assert got["GOMP_SPINCOUNT"] == "0" and "(OMP_WAIT_POLICY=PASSIVE)" in stdout.splitlines()[0]
    got, stdout = openmp_settings(info, OMP_WAIT_POLICY="ACTIVE")
    assert got["OMP_WAIT_POLICY"] == "ACTIVE" and got["GOMP_SPINCOUNT"] != "0" and "(OMP_WAIT_POLICY=ACTIVE)" in stdout
    got, stdout = openmp_settings(info, GOMP_SPINCOUNT="1234")
    assert got["GOMP_SPINCOUNT"] == "1234" and "(GOMP_SPINCOUNT=1234)" in stdout
    # read once, when torch loads libgomp: a program that imports torch before mixsep keeps the default
    got, _ = openmp_settings(["-c", "import torch, mixsep"])
    assert got["GOMP_SPINCOUNT"] == "300000"
