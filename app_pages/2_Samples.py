"""Samples: the report's 20-sample grid for a run's checkpoint, shuffled and paged."""
import io

import streamlit as st

import mixsep_ui as ui
from mixsep import MixsepError
from mixsep.grid import grid_image, sample_indices
from ui_settings import whole_number_box

data_root, runs_dir = ui.setup("Samples")
run_dir, run_shown, checkpoint, third = ui.pick_run_and_checkpoint(runs_dir)  # run_shown: STUDY/trial-0001 too
# the settings are kept across pages (persist_state), as the Train page's are
split = third.radio("Split", ["test", "train"], horizontal=True, key="grid_split", persist_state="session")
if checkpoint is None:
    st.stop()

# one row that wraps, each control as wide as its label (columns of fixed shares cut the toggles to "D" at 800 px)
row = st.container(horizontal=True, vertical_alignment="center")
show_direct = row.toggle("Direct CIFAR", value=True, help="Add a row with the CIFAR head's own output.",
                         key="grid_direct", persist_state="session")
show_errors = row.toggle("Error maps", value=False, help="Add rows of |estimate - truth|, brightened 4x.",
                         key="grid_errors", persist_state="session")
shuffle = row.toggle("Shuffle", value=False, key="grid_shuffle", persist_state="session")
seed = whole_number_box("Seed", 0, 10**6, 0, where=row, disabled=not shuffle, key="grid_seed",
                        persist_state="session", width=120)
if shuffle and not isinstance(seed, int):  # a fraction: said under the box (unused, and not said, without Shuffle)
    st.stop()
n = row.slider("Samples", 4, 40, 20, key="grid_n", persist_state="session", width=240)

# the page of samples shown restarts at 0 whenever the selection changes
selection = (str(checkpoint), split, shuffle, seed, n)
if st.session_state.get("grid_selection") != selection:
    st.session_state.update(grid_selection=selection, grid_page=0)
try:
    pairs = ui.pairs(data_root, split)
except MixsepError as e:
    ui.show_error(e)
try:
    model, config, info = ui.model(checkpoint)
except MixsepError as e:
    ui.show_error(e, literal_text=True)  # it quotes the checkpoint's path: the run's name, as text
pages = -(-len(pairs) // n)
page = st.session_state.grid_page = min(st.session_state.grid_page, pages - 1)


def turn(by: int) -> None:  # a callback: the page has turned before the buttons are drawn, so each shows its state
    st.session_state.grid_page += by


nav = st.container(horizontal=True, vertical_alignment="center")
nav.button("Previous", icon=":material/chevron_left:", disabled=page == 0, on_click=turn, args=(-1,))
nav.button("Next", icon=":material/chevron_right:", disabled=page >= pages - 1, on_click=turn, args=(1,))
indices = sample_indices(len(pairs), n, seed if shuffle else None, page)
title = f"{run_shown}  {checkpoint.name}  step {info['step']}  ({split} split, page {page + 1})"
with st.spinner("Separating…"):
    image = grid_image(model, pairs, indices, show_direct=show_direct, show_errors=show_errors, scale=2, title=title)
    # on screen: strips of 10 samples, shown at their own size so labels and pixels stay legible at laptop width
    strips = [grid_image(model, pairs, indices[i:i + 10], show_direct=show_direct, show_errors=show_errors, scale=2)
              for i in range(0, len(indices), 10)]
order = f"shuffled with seed {seed}" if shuffle else "in order"
# the run's training set is the split's first train_size pairs (PairData): the rest are images it never saw
seen = ((f" · the run trained on CIFAR images 0-{config.train_size - 1} only (its training size), each with "
         "digits drawn afresh every epoch (--repair); the others are new to it" if config.repair else
         f" · the run trained on pairs 0-{config.train_size - 1} only (its training size); the others are new to it")
        if split == "train" and 0 < config.train_size < len(pairs) else "")
other = ui.data_root_note(run_dir, config, data_root, f"these {split} pairs")
nav.caption(f"Page {page + 1} of {pages} · {len(pairs)} {split} pairs, {order}{'' if other else seen}")
if other:  # which of them it trained on is not known here (QA: "trained on pairs 0-511" of another folder's)
    st.info(other)
st.caption(ui.literal(title))  # the run's name as typed, never markdown
for strip in strips:
    st.image(strip, output_format="PNG")  # JPEG would blur 32-pixel images
st.caption("Rows: MNIST, CIFAR-10, their mean (the input), the reconstructed digit, CIFAR recovered by subtraction "
           "(2·mean − digit), optionally the CIFAR head's direct output and error maps. The download is one image.")
buffer = io.BytesIO()
image.save(buffer, format="PNG")
st.download_button("Download grid (PNG)", buffer.getvalue(),
                   file_name=f"{run_shown.replace('/', '-')}-{checkpoint.stem}-grid.png",
                   mime="image/png", icon=":material/download:")
