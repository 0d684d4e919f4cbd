"""Separate: your own 32x32 mixture images through a run's checkpoint, each shown and downloadable.

Uploads are read as pixels (their size checked from the header first) and kept in memory: the
server writes no file. The ML is mixsep.separate's, the one `python -m mixsep separate` runs.
"""
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

import mixsep_ui as ui
from mixsep import MixsepError
from mixsep.config import SEPARATE_MODES
from mixsep.separate import FORMATS, png_bytes, read_mixture, separate

SHOWN = 128  # pixels on screen for a 32x32 image: 4x, each pixel a block
# declared in .streamlit/config.toml (a 32x32 image is a few KB in any format): the browser refuses a bigger
# file before sending it, and the server refuses it too
MAX_UPLOAD_MB = st.get_option("server.maxUploadSize")

data_root, runs_dir = ui.setup("Separate")
run_dir, run_shown, checkpoint, third = ui.pick_run_and_checkpoint(runs_dir)  # run_shown: STUDY/trial-0001 too
mode = third.selectbox("Recovery mode", SEPARATE_MODES,
                       help="projection_uniform: what the heads leave over is split evenly, so the digit and the image "
                            "average back to the mixture up to the clip to [0, 1] and the grey digit. "
                            "For the interval models (unet, unet_digit, ...) every mode gives the same images.")
if checkpoint is None:
    st.stop()
try:  # before any upload: a checkpoint that cannot separate says so at once
    model, config, info = ui.model(checkpoint)
except MixsepError as e:
    ui.show_error(e, literal_text=True)  # it quotes the checkpoint's path: the run's name, as text
# any name: a file is read by its content, as the command line reads it (a .jfif or a name without an extension was
# refused by the uploader with a red mark and no sentence); read_mixture opens only FORMATS and says why it will not
files = st.file_uploader(f"Mixture images: 32x32, each the mean of a grey digit and a colour image, as "
                         f"{', '.join(FORMATS)} (up to {MAX_UPLOAD_MB} MB each)", accept_multiple_files=True)
if not files:
    st.caption(f"Upload one or more images to separate them with this checkpoint; a file over {MAX_UPLOAD_MB} MB is "
               "refused by the uploader itself (its red mark says why). The command line does the same for files "
               "on disk: `python -m mixsep separate RUN IMAGE...`.")
    st.stop()

good = []
for f in files:
    try:
        good.append((f.name, read_mixture(f.getvalue(), f.name)))
    except MixsepError as e:
        st.error(ui.literal(e), icon=":material/image_not_supported:")  # it quotes the file's name
if not good:
    st.stop()
digits, images = separate(model, np.stack([px for _, px in good]), mode)
st.caption(f"{ui.literal(run_shown)} · {ui.literal(checkpoint.name)} · step {info['step']} · {config.model} · "
           f"mode {mode} · {len(good)} image(s)")


def shown(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels).resize((SHOWN, SHOWN), Image.NEAREST)  # sharp pixels, not a blur


for i, ((name, px), digit, image) in enumerate(zip(good, digits, images)):
    stem = Path(name).stem
    row = st.columns([1, 1, 1, 2], vertical_alignment="top")  # the images in line, whatever their captions' lengths
    # PNG: Streamlit sends an RGB image as JPEG by default, which would blur the enlarged pixels
    row[0].image(shown(px), caption=ui.literal(name), width=SHOWN, output_format="PNG")
    row[1].image(shown(digit), caption="digit", width=SHOWN, output_format="PNG")
    row[2].image(shown(image), caption="image", width=SHOWN, output_format="PNG")
    with row[3]:
        st.download_button("Digit (PNG)", png_bytes(digit), file_name=f"{stem}.mnist.png", mime="image/png",
                           key=f"mnist-{i}", on_click="ignore", icon=":material/download:")
        st.download_button("Image (PNG)", png_bytes(image), file_name=f"{stem}.cifar.png", mime="image/png",
                           key=f"cifar-{i}", on_click="ignore", icon=":material/download:")
