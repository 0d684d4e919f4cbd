"""Sweep: search the learning rate, Adam's betas (and more) with Optuna; watch the trials live."""
import shlex
import time

import streamlit as st

import mixsep_ui as ui
import sweep_ui as sw
from mixsep import MixsepError
from mixsep.sweep import (ATTR, best_trial, counts, recorded_storage, storage_key, trials_done, trials_frame,
                          worker_gone)
from ui_settings import whole_number_box

data_root, runs_dir = ui.setup("Sweep")
sweeps = sw.registry(runs_dir)

with st.sidebar:
    st.subheader("Search space")
    space, fixed = sw.space_widgets()
    st.subheader("Each trial")
    budget, local = sw.budget_widgets()
    # these, the study's name, the storage and the study shown are kept from page to page, as the ranges are: a
    # visit to a trial's Samples gave 20 trials on 2,000 pairs under the default name back, without a word (QA)
    trials = whole_number_box("Trials", 1, 1000, 20, key="sweep_trials", help="Finished trials the study aims at.",
                              persist_state="session")
    val_size = whole_number_box("Validation pairs", 1, 20000, 2000, key="sweep_val", persist_state="session",
                                help="Held out from the end of the training data; no trial trains on them.")
    every = whole_number_box("Report every (steps)", 0, 100000, 0, key="sweep_every", persist_state="session",
                             help="Validation reports the pruner judges; 0 = once per epoch.")

top = st.columns([2, 2, 1, 1, 1], vertical_alignment="bottom")
name = top[0].text_input("Study", value=time.strftime("sweep-%Y%m%d"), key="sweep_name", persist_state="session")
with top[1]:
    url = sw.storage_url()
live = sweeps.running()
here = storage_key(url or None, runs_dir)  # the database or journal this page reads, however it is written


def elsewhere(sweep: dict | None) -> bool:
    """A live sweep of this runs folder whose study is in another storage than this page reads (its sweep.json
    names it): the page showed "starting…" for it all along, or another study of its storage beside an armed
    Stop. One without a key (this server's own child, an older mixsep's) counts as here."""
    return bool(sweep) and isinstance(sweep.get("storage_key"), str) and sweep["storage_key"] != here


away = recorded_storage(live) if elsewhere(live) else None  # as it can be typed under Storage
training = ui.registry(runs_dir).running()
busy = f"Training run {training.name} is in progress; one sweep or training at a time." if training else None
try:
    with sw.reading(url, runs_dir):
        studies, others = sw.mixsep_studies(sw.storage(url, runs_dir))
    unreadable = False
except MixsepError as e:  # said here, and the page goes on: Stop, and the notice of a sweep running here, come from
    studies, others, unreadable = [], 0, True  # its sweep.json, not from the storage the box names (they were gone)
    st.error(ui.sentence(e))  # it may quote a study, a path or a URL: as text
flags = ["--data-root", str(data_root), "--trials", str(trials), "--val-size", str(val_size),
         "--report-every", str(every), *fixed, *budget] + (["--space", ",".join(space)] if space else [])
said = []  # Start's refusal: the warning below does not say it again
# a storage that cannot be read (said above) cannot take a study either: Start waits for the box to be corrected
if top[2].button("Start", type="primary", icon=":material/play_arrow:", disabled=live is not None or unreadable,
                 width="stretch"):
    try:
        for label, v in (("Trials", trials), ("Validation pairs", val_size), ("Report every (steps)", every)):
            if not isinstance(v, int):  # said under its box too
                raise MixsepError(f"{label} must be a whole number (got {v}); correct it in the sidebar.")
        if name in studies:
            raise MixsepError(f"Study '{name}' exists already; pick it below and press Resume, or choose a new name.")
        sw.check_writes_here(url, runs_dir)
        sweeps.start(["--study", name, *flags], storage=url or None, busy=busy)
        st.session_state["sweep_show"] = name
        st.rerun()
    except MixsepError as e:  # the study's and the training run's names as typed
        said.append(str(e))
        st.error(ui.sentence(e, name, training and training.name))
if top[3].button("Stop", icon=":material/stop:", disabled=live is None, width="stretch"):
    sweeps.stop()
    st.info("Stopping: the running trial checkpoints and is queued to resume with the study.")
if away:
    st.info(f"Sweep '{ui.literal(live['study'])}' is running with its trials in {ui.literal(away)}, not in the "
            "storage this page reads: enter that under Storage to watch them. Stop stops it.")
if busy and live is None and busy not in said:
    st.warning(ui.sentence(busy, training.name))  # the run's name as typed
if others:  # a shared storage: say why its other studies are not in the picker
    st.caption(f"{others} {'study' if others == 1 else 'studies'} of this storage not made by "
               f"`python -m mixsep sweep` {'is' if others == 1 else 'are'} not listed.")
if not studies and (live is None or away):
    if not away and not unreadable:
        st.info("No study yet: set the ranges in the sidebar, name the study and press Start.")
    st.stop()
shown = live["study"] if live and not away else st.session_state.get("sweep_show")
if shown in studies and st.session_state.get("sweep_followed") != shown:  # a study just started (here or
    st.session_state["sweep_pick"] = st.session_state["sweep_followed"] = shown  # elsewhere): show it, once
# kept from page to page; one kept that this storage does not hold (deleted, or in the storage the box named then)
# gives way to the first (Streamlit's own)
shown = st.selectbox("Show study", studies, index=studies.index(shown) if shown in studies else 0, key="sweep_pick",
                     persist_state="session") if studies else shown
if top[4].button("Resume", icon=":material/replay:", disabled=live is not None or not shown or unreadable,
                 width="stretch"):
    try:
        sw.check_writes_here(url, runs_dir)
        # the study's own data root where it is here, else this server's: a study's trials compare on one
        # validation set (the page gave the server's always, and a study made on another folder changed it)
        sweeps.start(["--study", shown, *local], storage=url or None, busy=busy, data_root=data_root)
        st.rerun()
    except MixsepError as e:
        if str(e) != busy:  # busy: the warning above says so already
            st.error(ui.sentence(e, shown, training and training.name))


@st.fragment(run_every=2.0 if live else None)
def show(study_name: str) -> None:
    try:
        with sw.reading(url, runs_dir):
            show_study(study_name)
    except MixsepError as e:  # the database went away since the page read it: said, and read again at the next refresh
        st.error(ui.sentence(e))


def show_study(study_name: str) -> None:
    import optuna

    store = sw.storage(url, runs_dir)
    now = sweeps.running()
    ours = now if now and not elsewhere(now) else None  # the live sweep, if in this storage
    if live and not now:  # it just ended: one last full rerun stops the refresh
        st.rerun()
    if now and now["study"] not in studies and sw.made_by_mixsep(store, now["study"]):
        st.rerun(scope="app")  # the picker was built before the new study existed: rebuilt, it shows the study
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
        attrs = study.user_attrs.get(ATTR)
    except (KeyError, AttributeError):
        study = attrs = None
    if not isinstance(attrs, dict):  # the sweep creates the study, then sets its attributes
        why = ("is starting…" if ours and ours["study"] == study_name else "is not in this storage." if study is None
               else "was not made by `python -m mixsep sweep`; there is nothing of it to show.")
        st.info(f"Study '{ui.literal(study_name)}' {why}")
        return
    c, target = counts(study), attrs.get("trials") if isinstance(attrs.get("trials"), int) else 0
    state = f"running (pid {ours['pid']})" if ours and ours["study"] == study_name else "not running"
    gone = sum(map(worker_gone, study.get_trials(deepcopy=False)))  # a killed sweep's: no longer running (QA)
    st.progress(min(c["done"] / max(target, 1), 1.0), text=f"{trials_done(c['done'], target)} · "
                f"{c['running'] - gone} running · " + (f"{gone} interrupted · " if gone else "")
                + f"{c['waiting']} queued · sweep {state}")
    st.caption(sw.study_settings(attrs))  # what Resume goes on with: the sidebar beside it shows a new study's
    if sweeps.error() and not now:
        st.error(ui.literal(sweeps.error()))
    best = best_trial(study)
    if best is not None:  # names and values come from the storage, which others may write: shown as text
        values = ", ".join(f"{ui.literal(k)} = {ui.literal(ui.setting_text(k, v))}"  # as the table and the slider
                           for k, v in best.params.items())
        st.success(f"Best so far: trial {best.number}, validation PSNR {best.value:.2f} dB, {values}")
        run = best.user_attrs.get("run")
        if isinstance(run, str) and run and (runs_dir / run).is_dir():
            st.code(f"python -m mixsep evaluate {shlex.quote(str(runs_dir / run))}  # scores it on the test split",
                    language="bash")
        elif isinstance(run, str) and run:  # a command that would fail: say why instead
            st.caption(f"Its run folder, {ui.literal(run)}, is not in this runs folder (trained on another machine, "
                       "or moved); copy it here to score it on the test split.")
    sw.open_links(sw.trials_table(trials_frame(study), key="sweep_table"))
    sw.figures(study, space)


if shown and not unreadable:  # show() reads the storage again: said once, above
    show(shown)
