"""Train: the report's settings as sliders, Start/Stop, live loss curves of the current run."""
import streamlit as st

import mixsep_ui as ui
from mixsep import MixsepError, TrainConfig
from mixsep.data import data_status, missing_message
from mixsep.model import MODELS
from mixsep.runs import progress, read_metrics
from mixsep.train import list_checkpoints

data_root, runs_dir = ui.setup("Train")
jobs = ui.registry(runs_dir)
LRS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
SIZES = [128, 256, 512, 1024, 2048, 5000, 10000, 20000, 50000, "all"]
d = TrainConfig()  # the report's settings are the defaults


def keep(name: str) -> dict:
    """The settings survive a visit to another page."""
    return {"key": f"train_{name}", "persist_state": "session"}


with st.sidebar:
    st.subheader("Settings")
    model = st.selectbox("Model", list(MODELS), index=list(MODELS).index(d.model), **keep("model"))
    pretrained = st.toggle("ImageNet-pretrained encoder", value=d.pretrained,
                           help="Needs the weights once from the internet (then cached); without them the encoder "
                                "starts from random weights and the page says so.", **keep("pretrained"))
    lr = st.select_slider("Learning rate (log scale)", LRS, value=d.lr, format_func=lambda v: f"{v:.0e}", **keep("lr"))
    beta1 = st.slider("Adam beta1", 0.0, 0.99, d.beta1, 0.01, **keep("beta1"))
    beta2 = st.slider("Adam beta2", 0.9, 0.9999, d.beta2, 0.0001, format="%.4f", **keep("beta2"))
    epochs = st.slider("Epochs", 1, 20, d.epochs, **keep("epochs"))
    batch = st.select_slider("Batch size", [16, 32, 64, 128, 256, 512], value=d.batch_size, **keep("batch"))
    size = st.select_slider("Training pairs per epoch", SIZES, value="all", **keep("size"),
                            help="A subset trains faster; 'all' uses every pair (the shorter of the two sets).")
    seed = st.number_input("Seed", 0, 2**31 - 1, d.seed, **keep("seed"))
    with st.expander("Beyond the report"):
        repair = st.toggle("Fresh MNIST partners every epoch", value=d.repair, **keep("repair"),
                           help="Draws new digits for the CIFAR images each epoch (seeded): more distinct mixtures.")
        schedule = st.selectbox("Learning-rate schedule", ["constant", "onecycle"], **keep("schedule"),
                                help="onecycle: 5% linear warm-up, then cosine decay to zero.")
        loss = st.selectbox("Loss", ["mse", "log_mse"], **keep("loss"),
                            help="mse: the report's summed MSE. log_mse: mean per-image log MSE, what mean PSNR averages.")

config = TrainConfig(data_root=str(data_root), model=model, pretrained=pretrained, lr=lr, beta1=beta1, beta2=beta2,
                     epochs=epochs, batch_size=batch, train_size=0 if size == "all" else size, seed=int(seed),
                     repair=repair, schedule=schedule, loss=loss)
st.session_state["train_config"] = config.to_dict()

left, right, _ = st.columns([1, 1, 4])
if left.button("Start", type="primary", icon=":material/play_arrow:", width="stretch"):
    missing = [r for r in data_status(data_root) if r["split"] == "train" and not r["found"]]
    try:
        if missing:
            raise MixsepError(missing_message(data_root, missing[0]["source"], "train"))
        run = jobs.start(config)
        st.toast(f"Started {run.name}")
    except MixsepError as e:
        st.error(str(e))
if right.button("Stop", icon=":material/stop:", width="stretch"):
    if jobs.stop():
        st.info("Stopping after the current step; a checkpoint will be kept.")
    else:
        st.info("No training is running.")
with st.expander("Config of the next run"):
    st.json(config.to_dict())


@st.fragment(run_every=1.0)
def live():
    job = jobs.poll()
    if job.run_dir is None or not (job.alive or job.run_dir.is_dir()):  # a server restart, a deleted run
        latest = ui.runs_table(runs_dir)
        if not latest:
            st.info("No run yet: choose the settings on the left and press Start.")
            return
        jobs.select(latest[0]["path"])
        job = jobs.poll()
    st.subheader(f"{ui.STATE_ICON.get(job.state, '')} {job.name}")
    if job.state == "failed":
        st.error(job.message)
    elif job.state in ("stopped", "interrupted"):
        st.warning(f"Run {job.state} at step {job.step}: {job.message}")
    elif job.state == "finished":
        st.success(f"Finished: {job.step} steps.")
    elif job.state == "starting":
        st.info("Starting: loading the data and the model…")
    elif job.state == "unknown":
        st.warning(f"This run folder is incomplete ({job.message}); it cannot be shown in full.")
    for w in job.warnings:  # the CLI's advice, in the dashboard's terms
        st.warning(w.replace("Pass --no-pretrained to silence this.",
                             "Switch off 'ImageNet-pretrained encoder' to skip the attempt."))
    m = read_metrics(job.run_dir)
    p = progress(m, job.total_steps)
    sps = f"{p['samples_per_s']:.0f} samples/s" if p["samples_per_s"] else "… samples/s"
    eta = f"ETA {ui.duration(p['eta_s'])}" if job.alive else job.state
    st.progress(min(p["fraction"], 1.0), text=f"step {p['step']}/{p['total_steps'] or '?'} · {sps} · {eta}")
    smoothing = st.slider("EMA smoothing", 0.0, 0.99, 0.9, 0.01, key="ema",
                          help="Weight of the past in the exponential moving average; 0 shows the raw losses.")
    st.plotly_chart(ui.loss_figure(m, smoothing, f"Training loss · {job.name}"), key="live_curves")
    can_resume = not job.alive and job.state in ("stopped", "failed", "interrupted") and job.step < job.total_steps
    if can_resume and list_checkpoints(job.run_dir) and st.button("Resume this run", icon=":material/replay:"):
        try:
            jobs.start(run_dir=job.run_dir)
            st.rerun(scope="fragment")
        except MixsepError as e:
            st.error(str(e))


live()
