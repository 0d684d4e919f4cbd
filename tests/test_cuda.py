"""On a GPU only (skipped elsewhere; bench/gpu.sh runs them first on a CUDA machine): the CUDA graph of the
training step (TrainConfig.cuda_graphs) trains as the eager step does, resumes, and falls back when a model's
step cannot be recorded."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_data_root
from mixsep import TrainConfig
from mixsep.train import GRAPH_WARMUP, Training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU that PyTorch sees")

MODELS = ["faithful", "unet", "unet_hf_silu", "unet_digit_rich"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("cuda") / "data", n_train=512)  # 8 steps an epoch at batch 64


def config(root, model: str, graphs: bool, epochs: int = 2) -> TrainConfig:
    return TrainConfig(data_root=str(root), model=model, pretrained=False, batch_size=64, epochs=epochs,
                       device="cuda", seed=0, cuda_graphs=graphs, checkpoint_seconds=0, schedule="onecycle")


def train(cfg: TrainConfig, run_dir, stop_at: int = 0) -> tuple[Training, list[tuple[float, float]]]:
    t = Training(cfg, run_dir, should_stop=lambda: 0 < stop_at <= t.step)  # a stop checkpoints the step it is at
    return t, [(r.loss_mnist, r.loss_cifar) for r in t.steps()]


def gap(a, b) -> float:
    """The largest relative difference between two runs' losses, step by step."""
    return max(abs(x - y) / max(abs(x), 1e-12) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb))


def weights_gap(a: Training, b: Training) -> float:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return max(((sa[k].float() - sb[k].float()).norm() / sa[k].float().norm().clamp_min(1e-12)).item()
               for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("model", MODELS)
def test_the_graphed_step_trains_as_the_eager_step(root, tmp_path, model):
    eager, a = train(config(root, model, False), tmp_path / "eager")
    again, b = train(config(root, model, False), tmp_path / "again")  # the noise between two eager runs
    graphed, g = train(config(root, model, True), tmp_path / "graphed")
    assert eager._graph is None and graphed._graph is not None, "the graphed run recorded its step"
    assert graphed.run.warnings == [], graphed.run.warnings
    assert len(g) == 16 > GRAPH_WARMUP + 1 and all(math.isfinite(x) for p in g for x in p)
    assert g[:GRAPH_WARMUP] == a[:GRAPH_WARMUP] or gap(g[:GRAPH_WARMUP], a[:GRAPH_WARMUP]) <= 2 * gap(a, b) + 1e-6
    # the replayed steps are the same arithmetic: no further from the eager run than a second eager run is
    # (cuDNN's backward kernels add in no fixed order), with room for rounding
    assert gap(g, a) <= 4 * gap(a, b) + 1e-4, (gap(g, a), gap(a, b))
    assert weights_gap(graphed, eager) <= 4 * weights_gap(again, eager) + 1e-4
    assert g[-1][0] + g[-1][1] < g[0][0] + g[0][1], "it learns"


def test_a_graphed_run_resumes_as_it_would_have_gone_on(root, tmp_path):
    whole, w = train(config(root, "unet_hf_silu", True), tmp_path / "whole")
    first, f = train(config(root, "unet_hf_silu", True), tmp_path / "split", stop_at=8)
    second, s = train(config(root, "unet_hf_silu", True), tmp_path / "split")  # three eager steps, then a new graph
    assert len(f) == 8 and len(s) == 8 and second._graph is not None
    eager_whole, e = train(config(root, "unet_hf_silu", False), tmp_path / "eager")
    assert gap(f + s, w) <= 4 * gap(w, e) + 1e-4


def test_a_step_that_cannot_be_recorded_trains_without_the_graph_and_says_so(root, tmp_path):
    t = Training(config(root, "unet", True), tmp_path / "run")
    model = t._forward

    def syncing(x):  # a host read of a device value: CUDA cannot record it into a graph
        if x.sum().item() < -1:
            raise AssertionError
        return model(x)
    t._forward = syncing
    rows = list(t.steps())
    assert len(rows) == 16 and all(math.isfinite(r.loss) for r in rows)
    assert t._graph is None and not t._graphs
    assert len(t.run.warnings) == 1 and t.run.warnings[0].startswith(
        "CUDA graphs could not record this model's step, so the run trains without them"), t.run.warnings
    # and it trains on as before: the same losses as a run with the graph turned off
    _, eager = train(config(root, "unet", False), tmp_path / "eager")
    _, again = train(config(root, "unet", False), tmp_path / "again")
    assert gap([(r.loss_mnist, r.loss_cifar) for r in rows], eager) <= 4 * gap(eager, again) + 1e-4
