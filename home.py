"""Home: what mixsep does, the data, the device and the recent runs (dashboard.py routes here)."""
import shlex
from pathlib import Path

import pandas as pd
import streamlit as st

import mixsep_ui as ui
from mixsep.data import DOWNLOAD_MB, SOURCE_NAMES, SOURCES, data_status, download, root_is_a_file
from mixsep.errors import MixsepError
from mixsep.run import NAME_CHARS, NAME_MAX, State, shown_name, unlisted_runs

data_root, runs_dir = ui.setup("mixsep: un-mixing MNIST and CIFAR-10")

st.markdown(
    "Each input is the pixel-wise **mean of an MNIST digit and a CIFAR-10 image**. A network learns to give "
    "both back: the report's ResNet-18 encoder with two decoders (`faithful`), or a U-Net that places the digit "
    "inside what the mixture allows (`unet_hf_silu` separates best in a CPU budget). **Train** a separator with live loss curves, browse "
    "**Samples** of what it recovers, **Separate** your own mixture images, score it honestly on the "
    "**Metrics** page (PSNR and SSIM with `data_range=1`), and **Compare** runs.")
cols = st.columns(len(ui.PAGES) - 1)
for col, (page, title, icon) in zip(cols, ui.PAGES[1:]):
    col.page_link(page, label=title, icon=icon)

st.header("Data")
st.markdown(f"Data root: {ui.code_span(data_root.resolve())}",
            help="Folder with MNIST/ and cifar-10-batches-py/ (or cifar10/*.npz). It is fixed when the server "
                 "starts (`streamlit run dashboard.py -- --data-root DIR`, or MIXSEP_DATA_ROOT; default ./data), "
                 "so a visitor cannot make the server write anywhere else.")
rows = data_status(data_root)
table = pd.DataFrame([{"source": SOURCE_NAMES[r["source"]], "split": r["split"],
                       "found": "yes" if r["found"] else "missing",
                       "where": ", ".join(Path(f).name for f in r["files"]) if r["found"] else r["expected"]}
                      for r in rows])
st.dataframe(table, hide_index=True)
missing = [r for r in rows if not r["found"]]
if missing:
    # one sentence for what is missing (the table says where each set goes), not one per set, each repeating it
    names = [f"{SOURCE_NAMES[r['source']]} {r['split']}" for r in missing]
    # the path and the command as code spans of their own: through sentence(), a backtick in the path cut the
    # command short, and a copied command downloaded into another folder (QA)
    command = f"python -m mixsep download --data-root {shlex.quote(str(data_root))}"
    a_file = root_is_a_file(data_root)
    st.warning(ui.sentence(a_file) if a_file else (
        f"{', '.join(names[:-1]) + ' and ' + names[-1] if len(names) > 1 else names[0]} "
        f"{'are' if len(names) > 1 else 'is'} missing under {ui.code_span(data_root)} (the table says where each "
        f"goes): the button below downloads them, as does {ui.code_span(command)} where the internet is reachable; "
        "or copy the files there."))
    fetched = sorted({r["source"] for r in missing}, key=SOURCES.index)  # a whole source, either split: its size
    label = (f"Download {' and '.join(SOURCE_NAMES[s] for s in fetched)} "
             f"(about {sum(DOWNLOAD_MB[s] for s in fetched):,} MB)")  # (it named both when MNIST was there: QA)
    if a_file is None and st.button(label, icon=":material/download:"):
        bar = st.progress(0.0, text="Downloading…")
        try:
            splits = sorted({r["split"] for r in missing})
            for i, split in enumerate(splits):
                bar.progress(i / len(splits), text=f"Downloading the {split} split ({i + 1} of {len(splits)})…")
                download(data_root, splits=(split,))
            bar.progress(1.0, text="Done.")
            st.rerun()
        except MixsepError as e:
            bar.empty()
            st.error(ui.sentence(e))  # a URL in it is text, not a link
else:
    st.success(f"All four source/split sets found under {ui.code_span(data_root.resolve())}.")

st.header("Device")
device = st.empty()  # filled last: which device takes torch, seconds of imports the rest of the page need not wait on
device.caption("Looking for a GPU…")


def progress_text(row: dict) -> str:
    """Steps logged of the total (a damaged status.json: no total); a run that ended before its end also says where
    a resume starts, when that is before its last logged step: a kill or a failure loses the steps after the last
    checkpoint, and 180/300 read as if a resume went on from 180 (QA)."""
    text = f"{row['step']}/{row['total_steps'] or '?'}"
    saved = row.get("saved_step")
    if row["state"] in (State.STOPPED, State.FAILED, State.INTERRUPTED) and saved is not None and saved < row["step"]:
        text += f", resumes at step {saved}"
    return text


st.header("Recent runs")
runs = ui.runs_table(runs_dir)
if not runs:
    st.info(f"No runs yet in {ui.code_span(runs_dir.resolve())}: start one on the Train page.")
else:
    df = pd.DataFrame(runs[:10])
    df["progress"] = [progress_text(r) for r in runs[:10]]
    st.dataframe(df[["run", "state", "progress", "model", "lr", "batch_size", "epochs", "last_loss", "message"]],
                 hide_index=True, placeholder="", column_config={
                     "lr": ui.lr_column(), "batch_size": "batch",
                     # wide enough for "545/7680, resumes at step 512" (it read "545/7680, re…": QA)
                     "progress": st.column_config.TextColumn("progress", width="medium", help=(
                         "Steps logged of the run's total; where a resume starts, when that is before its last "
                         "logged step (the steps after its last checkpoint are trained again).")),
                     "last_loss": st.column_config.NumberColumn("last loss", format="%.4f"),
                     "message": st.column_config.TextColumn("message", width="large")})
    if len(runs) > 10:
        ui.page_link("Compare", f"The 10 newest of {len(runs)} runs; Compare lists them all")
unlisted = unlisted_runs(runs_dir)  # made by hand or by another tool: say why they are missing, not leave them out unseen
for found, why, mend in (
        # the whole rule (QA: "-dash" and a 200-character name were told to use characters they had used)
        ([shown_name(n, 40) for n in unlisted.names], "whose name the pages cannot use",
         f"rename {{}} with {NAME_CHARS}, starting with a letter or digit, {NAME_MAX} characters at most"),
        (unlisted.outside, "behind a link that leads out of the runs folder",
         "the pages open runs inside it only: move or copy {} in"),
        (unlisted.deep, "more than one group folder deep",
         "the pages list RUN and GROUP/RUN in the runs folder: move {} up to GROUP/RUN")):
    if found:
        st.caption(f"Not listed: {len(found)} run folder{'s' * (len(found) > 1)} {why} ("
                   f"{ui.literal(', '.join(found[:5]))}{', …' if len(found) > 5 else ''}); "
                   f"{mend.format('them' if len(found) > 1 else 'it')}.")

import torch  # noqa: E402  (see `device` above)

if torch.cuda.is_available():
    device.write(f"GPU: **{torch.cuda.get_device_name(0)}** (training uses CUDA with bfloat16 autocast).")
else:
    device.write(f"CPU only ({torch.get_num_threads()} threads): training works but is slow; "
                 "a few hundred steps at batch 128 take minutes.")
