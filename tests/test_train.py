"""The training generator, run folders, checkpoints and the errors around them."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings

import pytest
import torch

from mixsep import MixsepError, TrainConfig
from mixsep import run as R
from mixsep import train as T
from mixsep.data import load_pairs, to_float
from mixsep.model import build_model
from mixsep.runs import read_metrics


def test_overfit_one_batch_lowers_the_loss(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, train_size=16, epochs=12, lr=2e-3)
    losses = [r.loss for r in T.train_steps(cfg, tmp_path / "run")]
    assert len(losses) == 12
    assert losses[-1] < 0.7 * losses[0]


def test_step_results_and_run_folder(tiny_config, tmp_path):
    run = tmp_path / "run"
    results = list(T.train_steps(tiny_config, run))  # 96 pairs / 16 = 6 steps
    assert [r.step for r in results] == [1, 2, 3, 4, 5, 6] and results[-1].total_steps == 6
    r = results[0]
    assert r.loss == pytest.approx(r.loss_mnist + r.loss_cifar) and r.lr == 1e-3 and r.samples_per_s > 0
    assert TrainConfig.load(run / "config.json") == tiny_config
    m = read_metrics(run)
    assert m["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert m["loss"].tolist() == pytest.approx([x.loss for x in results])
    assert R.read_status(run)["state"] == "finished"
    assert [p.name for p in R.list_checkpoints(run)] == ["last.pt", "epoch-1.pt"]


def test_seeded_runs_repeat_exactly(tiny_config, tmp_path):
    a = [r.loss for r in T.train_steps(tiny_config, tmp_path / "a")]
    b = [r.loss for r in T.train_steps(tiny_config, tmp_path / "b")]
    c = [r.loss for r in T.train_steps(dataclasses.replace(tiny_config, seed=1), tmp_path / "c")]
    assert a == b and a != c


def test_checkpoint_round_trip_gives_the_same_outputs(tiny_config, tmp_path):
    training = T.Training(tiny_config, tmp_path / "run")
    list(training.steps())
    model, cfg, info = T.load_run_model(tmp_path / "run")
    assert cfg == tiny_config and info["step"] == 6
    training.model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(training.model(x), model(x)):
            assert torch.equal(a, b)


def test_resume_continues_where_it_stopped(tiny_config, tmp_path):
    full = [r.loss for r in T.train_steps(dataclasses.replace(tiny_config, epochs=2), tmp_path / "full")]
    run = tmp_path / "run"
    cfg = dataclasses.replace(tiny_config, epochs=2)
    for r in T.train_steps(cfg, run):
        if r.step == 4:
            R.request_stop(run)  # as the dashboard's Stop button does
    assert R.read_status(run)["state"] == "stopped" and read_metrics(run)["step"].max() == 4
    rest = [r for r in T.train_steps(cfg, run)]
    assert rest[0].step == 5 and rest[-1].step == 12
    # same seed, same order: the resumed run reproduces the uninterrupted one
    assert [r.loss for r in rest] == pytest.approx(full[4:], rel=1e-4)
    assert read_metrics(run)["step"].tolist() == list(range(1, 13))


def test_resume_drops_rows_logged_after_the_checkpoint(tiny_config, tmp_path):
    run = tmp_path / "run"
    cfg = dataclasses.replace(tiny_config, checkpoint_every=4)
    gen = T.train_steps(cfg, run)
    for r in gen:
        if r.step == 5:
            break  # a crash: rows 1-5 logged, last checkpoint at step 4
    gen.close()
    assert read_metrics(run)["step"].max() == 5
    steps = [r.step for r in T.train_steps(cfg, run)]
    assert steps == [5, 6] and read_metrics(run)["step"].tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("read_late", [False, True], ids=["read at once", "read one step late"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch, read_late):
    run = tmp_path / "run"
    real = T.Training.train_step

    def poisoned(self, m, c, lr):
        out = real(self, m, c, lr)
        return out * float("nan") if self.step == 3 else out  # the 4th step blows up
    monkeypatch.setattr(T.Training, "train_step", poisoned)
    training = T.Training(tiny_config, run)
    training.read_late = read_late  # the GPU's way (tests/test_train_late.py): the same contract
    seen = []
    with pytest.raises(MixsepError, match="non-finite at step 4.*Lower the learning rate"):
        for r in training.steps():
            seen.append(r.step)
    assert seen == [1, 2, 3]
    status = R.read_status(run)
    assert status["state"] == "failed" and "last good checkpoint (step 2)" in status["message"]
    assert R.read_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


@pytest.mark.parametrize("field,value,match", [
    ("lr", 0.0, "Learning rate"), ("lr", -1e-3, "Learning rate"), ("beta1", 1.0, "beta1"), ("beta2", -0.1, "beta2"),
    ("epochs", 0, "Epochs"), ("batch_size", 0, "Batch size"), ("model", "nope", "Unknown model"),
    ("train_size", -5, "Training size"),
])
def test_bad_settings_get_one_clear_sentence(tiny_config, field, value, match):
    with pytest.raises(MixsepError, match=match):
        dataclasses.replace(tiny_config, **{field: value}).validate()


def test_batch_larger_than_the_data(tiny_config, tmp_path):
    with pytest.raises(MixsepError, match="larger than the 96 training pairs"):
        T.Training(dataclasses.replace(tiny_config, batch_size=200), tmp_path / "run")


def test_corrupt_checkpoint(tmp_path):
    p = tmp_path / "checkpoints" / "last.pt"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x80\x02garbage")
    with pytest.raises(MixsepError, match="not a readable mixsep checkpoint"):
        T.load_run_model(tmp_path)
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(MixsepError, match="not a mixsep checkpoint"):
        T.load_run_model(tmp_path)


def test_checkpoint_of_another_architecture(tiny_config, tmp_path):
    other = torch.nn.Sequential(torch.nn.Linear(3, 3))
    R.save_checkpoint(tmp_path / "checkpoints" / "last.pt", other, tiny_config, 1, 0)
    with pytest.raises(MixsepError, match=f"does not fit the '{tiny_config.model}' architecture"):
        T.load_run_model(tmp_path)
    state = R.read_checkpoint(tmp_path / "checkpoints" / "last.pt")
    state["config"]["model"] = "from-the-future"
    torch.save(state, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(MixsepError, match="does not know"):
        T.load_run_model(tmp_path)


def test_missing_run_folder_and_empty_run(tmp_path):
    with pytest.raises(MixsepError, match="does not exist"):
        T.load_run_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()  # no config.json: no run (it was told to train it or wait for a checkpoint)
    with pytest.raises(MixsepError, match="is not a mixsep run folder"):
        T.load_run_model(tmp_path / "empty")


def test_time_budget_stops_cleanly(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, epochs=50, max_minutes=1e-6)
    steps = [r.step for r in T.train_steps(cfg, tmp_path / "run")]
    assert steps == [1]
    st = R.read_status(tmp_path / "run")
    assert st["state"] == "finished" and "time budget" in st["message"]
    assert R.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 1


def test_onecycle_schedule_warms_up_and_decays():
    cfg = TrainConfig(schedule="onecycle", lr=1.0)
    lrs = [T.lr_at(cfg, s, 100) for s in range(100)]
    assert lrs[0] < lrs[4] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert T.lr_at(TrainConfig(lr=0.5), 77, 100) == 0.5


def test_model_output_shapes_and_range(data_root):
    model = build_model("faithful", pretrained=False).eval()
    m_u8, c_u8 = next(load_pairs(data_root, "test").eval_batches(5))
    _, _, mean = to_float(m_u8, c_u8)
    mh, ch = model(mean)
    assert mh.shape == ch.shape == (5, 3, 32, 32)
    assert 0 <= mh.min() and mh.max() <= 1  # sigmoid outputs are valid images


def test_pretrained_falls_back_with_one_warning(monkeypatch, tmp_path, capsys):
    import mixsep.model as Mo

    # a real failed download: an empty weights cache and a proxy on a closed local port
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.warns(Mo.PretrainedWeightsUnavailable, match="random initialisation"):
        model = Mo.build_model("faithful", pretrained=True)
    assert model.encoder.pretrained_loaded is False
    out, err = capsys.readouterr()  # torch.hub's "Downloading: ..." goes to stderr: `train` prints only the
    assert out == "" and "Downloading" in err  # run folder on stdout (RUN=$(python -m mixsep train ...))


def test_cpu_bf16_computes_the_convolutions_in_bfloat16_and_still_learns(tiny_config, tmp_path):
    """cpu_bf16 is off by default (fp32, exact); on, the CPU's forward convolutions run under bf16 autocast."""
    seen = {}

    def training_dtypes(cfg, run):
        training = T.Training(cfg, run)
        conv = next(m for m in training.model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda mod, inp, out: seen.setdefault(cfg.cpu_bf16, out.dtype) and None)
        losses = [r.loss for r in training.steps()]
        hook.remove()
        return losses

    assert tiny_config.cpu_bf16 is False
    fp32 = training_dtypes(dataclasses.replace(tiny_config, train_size=16, epochs=12, lr=2e-3), tmp_path / "a")
    bf16 = training_dtypes(dataclasses.replace(tiny_config, train_size=16, epochs=12, lr=2e-3, cpu_bf16=True),
                           tmp_path / "b")
    assert seen == {False: torch.float32, True: torch.bfloat16}
    assert bf16 != fp32 and bf16[-1] < 0.7 * bf16[0]  # other arithmetic, and it still trains
    assert TrainConfig.load(tmp_path / "b" / "config.json").cpu_bf16 is True


def _last_pt_writes(steps, run, pause_s: float = 0.0) -> list[int]:
    """The steps whose last.pt was written: each write is a new file renamed into place, and a step's
    checkpoint is written after the step is yielded, so it is seen at the next one (or at the end)."""
    def inode():
        try:
            return (run / "checkpoints" / "last.pt").stat().st_ino
        except FileNotFoundError:
            return None

    seen, writes, step = None, [], 0
    for r in steps:
        if inode() != seen:
            seen = inode()
            writes.append(step)
        step = r.step
        time.sleep(pause_s)  # the generator waits while its consumer does: the run's clock goes on
    if inode() != seen:
        writes.append(step)
    return writes


def test_checkpoints_come_at_most_once_in_checkpoint_seconds_and_the_end_always_does(tiny_config, tmp_path):
    """On a GPU an epoch can take a second and its checkpoints a quarter of the run: checkpoint_seconds
    rate-limits them (every checkpoint_every steps and each epoch's end), never the run's last one."""
    cfg = dataclasses.replace(tiny_config, train_size=32, epochs=6, checkpoint_every=1, keep_epochs=1)  # 2 steps an epoch
    every = tmp_path / "every"
    assert _last_pt_writes(T.train_steps(cfg, every), every) == list(range(1, 13))
    assert sorted(p.name for p in R.list_checkpoints(every)) == sorted(["last.pt"] + [f"epoch-{e}.pt" for e in range(1, 7)])

    floored = tmp_path / "floored"
    assert _last_pt_writes(T.train_steps(dataclasses.replace(cfg, checkpoint_seconds=3600), floored), floored) == [12]
    assert [p.name for p in R.list_checkpoints(floored)] == ["last.pt", "epoch-6.pt"]  # the epoch its last.pt ended
    assert R.read_checkpoint(floored / "checkpoints" / "last.pt")["step"] == 12
    assert R.read_status(floored)["state"] == "finished"

    # 0.35 s between steps, a floor of 1 s: a write, then none for at least the next two steps
    paced = tmp_path / "paced"
    writes = _last_pt_writes(T.train_steps(dataclasses.replace(cfg, checkpoint_seconds=1.0), paced), paced, 0.35)
    assert writes[-1] == 12 and len(writes) >= 2, writes  # 4 s of steps: some written mid-run
    assert all(b - a >= 3 for a, b in zip(writes[:-1], writes[1:-1])), writes
    # an epoch's end whose last.pt was written has its epoch checkpoint (a resume relies on it); no other has
    ends = sorted(p.name for p in R.list_checkpoints(paced) if p.name != "last.pt")
    assert ends == sorted(f"epoch-{s // 2}.pt" for s in writes if s % 2 == 0), (writes, ends)


def test_a_stop_is_checkpointed_whatever_checkpoint_seconds_says(tiny_config, tmp_path):
    cfg = dataclasses.replace(tiny_config, train_size=32, epochs=6, checkpoint_every=1, checkpoint_seconds=3600)
    run, seen = tmp_path / "run", []
    for r in T.Training(cfg, run, should_stop=lambda: len(seen) >= 5).steps():
        seen.append(r.step)
    assert R.read_status(run)["state"] == "stopped"
    stopped_at = R.read_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert stopped_at == seen[-1] >= 5
    rest = [r.step for r in T.train_steps(cfg, run)]
    assert rest == list(range(stopped_at + 1, 13))


def test_the_time_budget_counts_the_training_before_a_resume(tiny_config, tmp_path):
    """--max-minutes was timed from each process's start, so every resume of a stopped or killed run (a sweep's
    trial above all, whose budget is the same for all trials) had the whole budget again. The checkpoint now
    keeps the seconds trained, and a resume spends only what is left. last.pt's epoch counts the epochs
    completed, as epoch-N.pt's does (it said the 0-based epoch under way)."""
    cfg = dataclasses.replace(tiny_config, train_size=32, epochs=6, checkpoint_every=1)  # 2 steps an epoch
    run, seen = tmp_path / "run", []
    for r in T.Training(cfg, run, should_stop=lambda: len(seen) >= 4).steps():
        seen.append(r.step)
    last = run / "checkpoints" / "last.pt"
    state = R.read_checkpoint(last)
    assert state["step"] == 4 and state["epoch"] == 2  # two epochs done
    assert 0 < state["trained_s"] < 60
    state["trained_s"] = 61.0  # a minute trained before: a one-minute budget is spent
    torch.save(state, last)
    budget = dataclasses.replace(cfg, max_minutes=1.0)
    assert [r.step for r in T.train_steps(budget, run)] == []
    status = R.read_status(run)
    assert (status["state"], status["step"]) == ("finished", 4)  # and why nothing trained, with the way on
    assert status["message"] == ("time budget reached before this resume: it trained 1.02 of its 1 minutes; resume "
                                 "it with a larger time limit (--max-minutes) to train on")
    for odd in (10 ** 400, float("inf"), float("nan"), -5.0, "61", True, None):  # edited by hand: not counted
        state["trained_s"] = odd
        torch.save(state, last)
        training = T.Training(budget, run)
        training.run.close()
        assert training.trained_before == 0.0, odd
    state["trained_s"] = 30.0  # half of it left: it trains, and the checkpoint counts on from 30 s
    torch.save(state, last)
    status["state"] = "stopped"
    (run / "status.json").write_text(json.dumps(status))
    assert [r.step for r in T.train_steps(budget, run)] == list(range(5, 13))
    assert 30.0 < R.read_checkpoint(last)["trained_s"] < 90
    assert R.read_checkpoint(last)["epoch"] == 6 == R.read_checkpoint(run / "checkpoints" / "epoch-6.pt")["epoch"]


def test_every_kth_epoch_that_keep_epochs_asks_for_is_written_whatever_the_floor(tiny_config, tmp_path):
    """--keep-epochs 2 under a floor kept next to nothing: epoch ends fell due by chance, then were pruned."""
    cfg = dataclasses.replace(tiny_config, train_size=32, epochs=7, checkpoint_every=10**6, keep_epochs=2,
                              checkpoint_seconds=3600)
    run = tmp_path / "run"
    list(T.train_steps(cfg, run))
    assert sorted(p.name for p in R.list_checkpoints(run)) == sorted(
        ["last.pt", "epoch-2.pt", "epoch-4.pt", "epoch-6.pt", "epoch-7.pt"])  # every 2nd, and the latest


@pytest.mark.parametrize("floor", [0, 3600])
def test_a_stop_that_lands_on_the_last_step_finishes_the_run_with_its_epoch_checkpoint(tiny_config, tmp_path, floor):
    """All steps done, yet the run read "stopped" and its last epoch checkpoint was never written (a
    plain resume then wrote it: a finished run's files changed)."""
    cfg = dataclasses.replace(tiny_config, train_size=32, epochs=3, checkpoint_every=1, checkpoint_seconds=floor)
    run, seen = tmp_path / "run", []
    for r in T.Training(cfg, run, should_stop=lambda: len(seen) >= 6).steps():
        seen.append(r.step)
    assert seen == [1, 2, 3, 4, 5, 6]
    assert R.read_status(run)["state"] == "finished"
    assert (run / "checkpoints" / "epoch-3.pt").is_file()


@pytest.mark.heavy(25)  # inductor compiles the tiny network from an empty cache (seconds to tens of seconds)
def test_compile_trains_the_same_network_and_its_checkpoints_load_without_it(tiny_config, tmp_path, monkeypatch):
    """``compile`` runs the steps through torch.compile: the same losses as eager to float rounding, a real
    compiled graph, and checkpoints of the plain network (no torch.compile prefix in the keys) that load and
    resume without compiling."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # compiled here, not read back
    from torch._dynamo.utils import counters

    eager = [r.loss for r in T.train_steps(tiny_config, tmp_path / "eager")]
    graphs = counters["stats"]["unique_graphs"]
    compiled = T.Training(dataclasses.replace(tiny_config, compile=True), tmp_path / "compiled")
    losses = [r.loss for r in compiled.steps()]
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo captured the network: it did compile
    assert losses == pytest.approx(eager, rel=1e-4) and len(losses) == 6
    assert R.read_status(tmp_path / "compiled").get("warnings") is None  # nothing fell back
    plain = torch.load(tmp_path / "eager" / "checkpoints" / "last.pt", weights_only=False)["model"]
    saved = torch.load(tmp_path / "compiled" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert list(saved) == list(plain)
    model, cfg, info = T.load_run_model(tmp_path / "compiled")  # the plain network, as evaluate loads it
    assert cfg.compile and info["step"] == 6
    compiled.model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(compiled.model(x), model(x)):
            assert torch.equal(a, b)


@pytest.mark.heavy(8)
def test_compile_without_a_working_compiler_trains_without_it_and_says_so(tiny_config, tmp_path):
    """Where inductor cannot build its kernels (here a C++ compiler that always fails), the first step's
    compile fails: the run trains as without compile, and the terminal and status.json say why."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "MIXSEP_CACHE_DIR": str(tmp_path / "c")}
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "mixsep", "train", "--data-root", tiny_config.data_root, "--run-dir",
                        str(run), "--model", "tiny", "--no-pretrained", "--batch-size", "16", "--device", "cpu",
                        "--compile", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    said = [line for line in p.stderr.splitlines() if line.startswith("warning: ")]
    assert len(said) == 1 and said[0].startswith(
        "warning: torch.compile failed on this machine, so the run trains without it (") and "/bin/false" in said[0]
    assert "Traceback" not in p.stderr and "TORCHDYNAMO_VERBOSE" not in p.stderr and "CUDA" not in p.stderr, p.stderr
    status = R.read_status(run)
    assert status["state"] == "finished" and status["step"] == 6 and status["warnings"] == [said[0][len("warning: "):]]


def test_imagenet_weights_in_torch_hubs_cache_are_read_as_data_only(tmp_path, monkeypatch):
    """torch.hub unpickled its cached resnet18-f37072fd.pth whole (its hash is checked only as it downloads): a
    file copied there from someone else, to train with --pretrained offline, ran its code at every start."""
    from torchvision.models import resnet18

    import mixsep.model as Mo

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"conv1.weight": Payload()}, hub / "resnet18-f37072fd.pth")
    with pytest.warns(Mo.PretrainedWeightsUnavailable):
        _, loaded = Mo.resnet18_backbone(True)
    assert not loaded and not marker.exists()  # refused, and the encoder starts from random weights, as said
    weights = resnet18().state_dict()  # real weights, as torch.hub caches them, still load
    torch.save(weights, hub / "resnet18-f37072fd.pth")
    model, loaded = Mo.resnet18_backbone(True)
    assert loaded and torch.equal(model.state_dict()["conv1.weight"], weights["conv1.weight"])


def test_a_resume_fetches_no_imagenet_weights_and_keeps_what_the_first_start_loaded(tiny_config, tmp_path,
                                                                                   monkeypatch, capsys):
    """Every resume fetched ImageNet's weights again (a minute's wait offline, and a warning that the encoder
    starts from random weights, when it comes from the checkpoint), and wrote what that attempt got into
    status.json: a run that trained from ImageNet's weights read False offline (and one that trained from random
    weights read True once a download worked), in Compare's column."""
    from torchvision.models import resnet18

    import mixsep.model as Mo

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(resnet18().state_dict(), hub / "resnet18-f37072fd.pth")  # the weights as torch.hub caches them
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "run"
    cfg = dataclasses.replace(tiny_config, model="faithful", pretrained=True, epochs=2)
    for r in T.train_steps(cfg, run):
        if r.step == 2:
            R.request_stop(run)
    assert R.read_status(run)["pretrained_loaded"] is True and not R.read_status(run).get("warnings")
    (hub / "resnet18-f37072fd.pth").unlink()  # now offline, with an empty cache: a fetch would fail
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = [r.step for r in T.train_steps(cfg, run)]
    assert steps[0] == 3 and R.read_status(run)["state"] == "finished"
    assert not [w for w in caught if issubclass(w.category, Mo.PretrainedWeightsUnavailable)]
    assert "Downloading" not in capsys.readouterr().err
    assert R.read_status(run)["pretrained_loaded"] is True and not R.read_status(run).get("warnings")
