"""Compare: overlaid loss curves of several runs, their settings and final figures side by side."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import mixsep_ui as ui
from mixsep import MixsepError
from mixsep.run import list_checkpoints, shown_name
from ui_settings import whole_number_box

data_root, runs_dir = ui.setup("Compare runs")
rows = {r["run"]: r for r in ui.runs_table(runs_dir)}
if not rows:
    st.info(f"No runs yet in {ui.code_span(runs_dir.resolve())}. Start one on the Train page.")
    ui.page_link("Train", "Go to Train")
    st.stop()
studies = sorted({ui.study_of(n) for n in rows} - {""})
# a link (?run=A&run=B, which this page writes as runs are picked, so a comparison can be shared) picks those runs
# among all runs
wanted = ui.url_link("_compare_in_url", many=True)
if wanted:
    missing = [n for n in wanted if n not in rows]
    if missing:
        st.warning(ui.literal(f"No run named {', '.join(repr(shown_name(n)) for n in missing)} in {runs_dir.resolve()}; "
                              + ("showing the others of the link." if len(missing) < len(wanted) else "pick runs below.")))
    if len(missing) < len(wanted):
        st.session_state["compare_study"] = "all runs"
        st.session_state["compare_runs_all runs"] = [n for n in dict.fromkeys(wanted) if n in rows]
if st.session_state.get("compare_study") not in ("all runs", *studies):  # a study deleted since it was picked
    st.session_state.pop("compare_study", None)
# the study, the runs and the display settings are kept from page to page (persist_state), as Train's and Samples'
# are: they went back to the three newest runs after a visit to another page; Delete's boxes are not kept (a
# confirmation ticked on another visit must not delete)
study = st.selectbox("Study", ["all runs", *studies], key="compare_study", persist_state="session",
                     help="Only one sweep's trials.") if studies else "all runs"
if study != "all runs":
    rows = {n: r for n, r in rows.items() if ui.study_of(n) == study}
key = f"compare_runs_{study}"  # by name only: a label with the state lost the pick when the state changed
first = list(rows)[:3 if study == "all runs" else 10]
if key not in st.session_state:
    st.session_state[key] = first
elif not set(st.session_state[key]) <= set(rows):  # a run deleted since: the rest, or the first runs if none is left
    # one deleted by hand (or on another page or tab) is said, not dropped without a word (QA); Delete's own toast
    # says what it deleted (ui.delete_runs keeps their names until they are dropped from the pick here)
    deleted_here = st.session_state.pop("deleted_runs", set())
    gone = [n for n in st.session_state[key] if n not in rows and n not in deleted_here]
    kept = [n for n in st.session_state[key] if n in rows]
    st.session_state[key] = kept or first
    if gone:
        st.warning(ui.literal(f"Run {', '.join(repr(shown_name(n)) for n in gone)} is gone (deleted?); "
                              + ("comparing the others." if kept else "comparing the latest runs instead.")))
chosen = st.multiselect("Runs", list(rows), key=key, persist_state="session",
                        on_change=ui.url_follows, args=(key, "_compare_in_url"))  # a pick goes into the URL
# one row that wraps, each control as wide as its label (columns of fixed shares cut the toggle to "Test …" at 800 px)
row = st.container(horizontal=True, vertical_alignment="center")
loss = row.radio("Loss", list(ui.LOSSES), format_func=ui.LOSSES.get, index=2, horizontal=True, key="compare_loss",
                 persist_state="session")
smoothing = row.slider("EMA smoothing", 0.0, 0.99, 0.9, 0.01, width=260, key="compare_smoothing", persist_state="session")
score = row.toggle("Test PSNR", help="Score each run's latest checkpoint on test pairs (slower).", key="compare_score",
                   persist_state="session")


def delete_box() -> None:
    # keyed: a warning above it that went at the next rerun (a link naming a run that is gone) made it a new
    # element, drawn closed again at the first pick in it (QA)
    with st.expander("Delete runs", icon=":material/delete:", key="compare_delete_box"):
        doomed = st.multiselect("Runs to delete", list(rows), key="delete_runs",
                                help="Only folders inside the runs folder; a run that is training cannot be deleted.")
        # a confirmation is for the runs it was ticked for: another pick unticks it (one ticked for a run, kept
        # while that run was swapped for another, deleted the other with one click). Unticked here, before the box
        # is drawn, not in the pick's callback: the browser sends a pick when its box loses focus, so a pick and
        # the tick that took the focus came in one rerun, and the callback undid the tick
        if st.session_state.get("delete_sure") and st.session_state.get("_delete_sure_for") != sorted(doomed):
            st.session_state["delete_sure"] = False
        sure = st.checkbox(f"Yes, delete {len(doomed)} run folder(s) and their checkpoints for good", key="delete_sure",
                           on_change=lambda: st.session_state.update(
                               _delete_sure_for=sorted(st.session_state.get("delete_runs", []))))
        st.button("Delete", icon=":material/delete_forever:", disabled=not (doomed and sure),
                  on_click=ui.delete_runs, args=(runs_dir, "_compare_in_url"))
        for message in st.session_state.pop("delete_errors", []):
            st.error(ui.literal(message))  # it quotes the run's name


if not chosen:  # the runs can still be deleted (with the last run picked deleted, the box was gone, ticked)
    st.info("Pick one or more runs.")
    delete_box()
    st.stop()

fig = go.Figure()
# a run's line follows its name among all runs, not its place among those chosen nor its age (ui.run_lines)
lines = ui.run_lines(rows, chosen)
points = ui.curve_points(len(chosen))  # many runs, fewer points each: the browser redraws them at each click
for name in chosen:
    curve, best = ui.loss_curve(runs_dir / name, loss, smoothing, points)  # read again only when metrics.csv changed
    rows[name] = rows[name] | ui.best_scores(runs_dir / name, best)
    if len(curve):
        fig.add_scatter(x=curve["step"], y=curve["ema"], name=name, mode=ui.line_mode(curve), line=lines[name])
st.plotly_chart(ui.style(fig, f"Training loss, {ui.LOSSES[loss]} (EMA {smoothing:.2f})", "step", "MSE loss", height=420))

table = pd.DataFrame([rows[n] for n in chosen]).reindex(
    columns=["run", "state", "note", "model", "pretrained_loaded", "cpu_bf16", "lr", "beta1", "beta2", "batch_size", "epochs",
             "train_size", "step", "last_loss", "best_loss", "val_psnr", "disk"])
table["note"] = [rows[n]["message"] for n in chosen]  # why a run is odd: an unreadable config, a failure...


def add_note(i: int, text: str) -> None:
    """Add ``text`` to row i's note, unless it says so already (a table cell is plain text, never markdown)."""
    if text not in table.loc[i, "note"].split("; "):
        table.loc[i, "note"] = "; ".join(filter(None, [table.loc[i, "note"], text]))


for i, name in enumerate(chosen):  # no checkpoint: said whether or not the runs are scored
    if not rows[name]["checkpoints"]:
        add_note(i, ui.no_checkpoint_note(runs_dir / name, rows[name]["state"], runs_dir))
numbers = ["lr", "beta1", "beta2", "batch_size", "epochs", "step", "last_loss", "best_loss", "val_psnr"]
table[numbers] = table[numbers].apply(pd.to_numeric, errors="coerce")  # numbers sort and format as numbers; a missing one is blank
table["disk"] = [rows[n]["disk_mb"] * 1e6 for n in chosen]  # bytes: shown in KB, MB or GB
table["train_size"] = [("all" if v == 0 else str(int(v))) if pd.notna(v) else "" for v in table["train_size"]]
try:  # the box goes up to the test split's pairs, as on Metrics: a column's "(N pairs)" is what was scored
    total = len(ui.pairs(data_root, "test")) if score else 0
except MixsepError as e:  # said once here, rather than in each run's note
    st.error(str(e))
    score = False
if score:
    count = whole_number_box("Test pairs to score", 1, total, min(500, total), step=100, key="compare_pairs",
                             persist_state="session",
                             help=f"The first pairs of the test split ({total} pairs). Fewer is faster.")
    if not isinstance(count, int):  # a fraction: said under the box
        st.stop()
    bar = st.progress(0.0, text="Scoring…")
    for i, name in enumerate(chosen):
        found = list_checkpoints(runs_dir / name)
        try:
            if not found:
                raise MixsepError(ui.no_checkpoint_note(runs_dir / name, rows[name]["state"], runs_dir))
            ev, scored_config, _ = ui.evaluation(found[0], data_root, int(count))
            if other := ui.other_data_root(runs_dir / name, scored_config, data_root):  # Metrics says so too
                add_note(i, f"trained on another data root ({other}); scored on this server's")
            if rows[name].get("model") and scored_config.model != rows[name]["model"]:  # the checkpoint's model's figures
                add_note(i, f"{found[0].name} holds a {scored_config.model} model, not the config's "
                            f"{rows[name].get('model')}: the scores are the {scored_config.model}'s")
            for source in ("mnist", "cifar"):
                best = ev.best(source)
                table.loc[i, f"{source} PSNR"] = best["psnr_mean"]
                table.loc[i, f"{source} best mode"] = ev.best_mode(source)
        except MixsepError as e:
            add_note(i, str(e))
        bar.progress((i + 1) / len(chosen), text=f"Scored {i + 1}/{len(chosen)} runs")
    scored = [c for c in ("mnist PSNR", "cifar PSNR", "mnist best mode", "cifar best mode") if c in table]
    table = table[["run", "state", *scored, *(c for c in table if c not in ("run", "state", *scored))]]  # in view
st.dataframe(table, hide_index=True, placeholder="", column_config={
    "lr": ui.lr_column(), "batch_size": "batch", "train_size": "pairs",
    "pretrained_loaded": st.column_config.CheckboxColumn(
        "ImageNet", help="Whether ImageNet weights were loaded (not just asked for); empty for older runs."),
    "cpu_bf16": st.column_config.CheckboxColumn(
        "bf16 (CPU)", help="Trained under bf16 autocast on the CPU (--cpu-bf16) rather than in fp32."),
    "disk": st.column_config.NumberColumn(format="bytes", help="What the run folder takes on disk."),
    "step": "steps",
    "last_loss": st.column_config.NumberColumn("last loss (raw)", format="%.4f",
                                               help="The total loss of the run's last logged step, as logged."),
    "best_loss": st.column_config.NumberColumn(f"best loss (EMA {smoothing:.2f})", format="%.4f", help=(
        "The lowest point of the smoothed curve above: above the raw last loss when the last steps' batches "
        "happened to be easy.")),
    "val_psnr": st.column_config.NumberColumn("best val PSNR", format="%.2f dB",  # the Sweep page's is the last
                                              help="A sweep trial's best validation PSNR (training data held out)."),
    **{f"{source} best mode": f"{ui.SOURCE[source]} best mode" for source in ("mnist", "cifar") if score},
    **{f"{source} PSNR": st.column_config.NumberColumn(  # the Metrics page's default scores every test pair
        f"{ui.SOURCE[source]} PSNR ({count} pairs)", format="%.2f dB",
        help=f"Mean PSNR of the {ui.SOURCE[source]} estimates over the first {count} test pairs, in the best recovery "
             "mode (next columns); the Metrics page shows every mode.") for source in ("mnist", "cifar") if score}})

delete_box()
