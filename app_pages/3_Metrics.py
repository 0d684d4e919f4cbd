"""Metrics: honest PSNR/SSIM of every recovery mode for a run, the report's audit beside them."""
import pandas as pd
import streamlit as st

import mixsep_ui as ui
from mixsep import MixsepError
from mixsep.metrics import METRIC_HELP, MODE_HELP
from ui_settings import whole_number_box

data_root, runs_dir = ui.setup("Metrics")
run_dir, run_shown, checkpoint, third = ui.pick_run_and_checkpoint(runs_dir)  # run_shown: STUDY/trial-0001 too
if checkpoint is None:
    st.stop()
try:
    total = len(ui.pairs(data_root, "test"))
except MixsepError as e:
    ui.show_error(e)
count = whole_number_box("Test pairs to score", 1, total, total, where=third, step=100,
                         help=f"Default: the whole test split ({total} pairs). Fewer is faster.")
if not isinstance(count, int):  # a fraction: said under the box
    st.stop()

try:
    ev, config, info = ui.evaluation(checkpoint, data_root, int(count))  # the step it scored, not a newer one
except MixsepError as e:
    ui.show_error(e, literal_text=True)  # it quotes the checkpoint's path: the run's name, as text
st.progress(1.0, text=f"Scored {ev.n} test pairs with {ui.literal(run_shown)} · `{checkpoint.name}` · "
                      f"step {info['step']} · {config.model} (data_range = 1).")
if note := ui.data_root_note(run_dir, config, data_root, "these test pairs"):
    st.info(note)

st.subheader("Every recovery mode, both sources")
st.dataframe(ev.table().assign(source=lambda t: t["source"].map(ui.SOURCE)), hide_index=True, placeholder="",
             column_config={  # no CI of 1 pair: blank, not "None"
    "psnr_mean": st.column_config.NumberColumn("PSNR (dB)", format="%.2f"),
    "psnr_ci95": st.column_config.NumberColumn("± 95% CI", format="%.2f"),
    "ssim_mean": st.column_config.NumberColumn("SSIM", format="%.4f"),
    "ssim_ci95": st.column_config.NumberColumn("± 95% CI ", format="%.4f"),
    "ssim_valid_mean": st.column_config.NumberColumn("SSIM, valid windows", format="%.4f", help=METRIC_HELP["ssim_valid"]),
    "ssim_valid_ci95": st.column_config.NumberColumn("± 95% CI  ", format="%.4f")})
st.caption("  \n".join(f"**{mode}**: {text}" for mode, text in MODE_HELP.items()) +
           f"  \n**SSIM**: {METRIC_HELP['ssim']}. **SSIM, valid windows**: {METRIC_HELP['ssim_valid']}." +
           f"  \nOptimal projection weight: MNIST {ev.weights['mnist']:.3f} (fitted on {ev.weights['fitted_on']}).")

for tab, metric in zip(st.tabs(["PSNR", "SSIM"]), ["psnr", "ssim"]):
    with tab:
        means, spread = ui.metric_figures(ev, metric)
        left, right = st.columns(2)
        left.plotly_chart(means, key=f"{metric}_means")
        right.plotly_chart(spread, key=f"{metric}_spread")

st.subheader("Audit: the report's figures")
direct = {r["source"]: r for r in ev.rows if r["mode"] == "direct"}
st.dataframe(pd.DataFrame([{"source": ui.SOURCE[a["source"]], "honest PSNR (dB)": direct[a["source"]]["psnr_mean"],
                            "report-style PSNR (dB)": a["psnr_data_range_255"],
                            "honest SSIM": direct[a["source"]]["ssim_mean"],
                            "report-style SSIM": a["ssim_data_range_255"]} for a in ev.audit]),
             hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.2f" if "PSNR" in c else "%.4f")
                                             for c in ("honest PSNR (dB)", "report-style PSNR (dB)", "honest SSIM",
                                                       "report-style SSIM")})
st.info("The report scored images in [0, 1] with `data_range=255`, which adds 20·log10(255) = 48.13 dB to every "
        "PSNR and pushes SSIM towards 1; the report-style columns reproduce that error and are not real scores.")

name = f"{run_shown.replace('/', '-')}-{checkpoint.stem}"
dl = st.container(horizontal=True)
dl.download_button("Summary CSV", ev.table().to_csv(index=False), f"{name}-metrics.csv", "text/csv",
                   icon=":material/download:")
dl.download_button("Per-image CSV", ev.per_image.to_csv(index=False), f"{name}-per-image.csv", "text/csv",
                      icon=":material/download:")
