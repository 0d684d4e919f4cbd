"""Following a live run: MetricsTail reads each appended row once, and the loss chart stays small."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import not_waiting_on

from mixsep.run import METRIC_FIELDS, MetricsLog, MetricsTail, _csv_rows

ROOT = Path(__file__).resolve().parents[1]


def row(step: int, loss: float = 1.0, elapsed: float | None = None) -> dict:
    return dict(step=step, epoch=(step - 1) // 10, loss_mnist=loss / 3, loss_cifar=2 * loss / 3, loss=loss, lr=1e-3,
                samples_per_s=100.0, elapsed_s=step * 0.5 if elapsed is None else elapsed)


def steps(rows) -> list[int]:
    return [r["step"] for r in rows]


def logged(folder: Path, n: int) -> MetricsTail:
    """A finished run of n rows (loss 1.0) written by the trainer's writer, and a tail that has read them all."""
    log = MetricsLog(folder).open(0)
    for s in range(1, n + 1):
        log.write(row(s, loss=1.0))
    log.close()
    tail = MetricsTail(folder)
    assert steps(tail.poll().rows) == list(range(1, n + 1))
    return tail


def test_a_live_writer_in_another_process_is_read_once_row_by_row(tmp_path):
    """The writer flushes each row in two halves: polls land between them as well as between rows."""
    MetricsLog(tmp_path).open(0).close()  # the header, as a trainer starting the run writes it
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import csv, io, sys, time
        from mixsep.run import METRIC_FIELDS
        with open({str(tmp_path / 'metrics.csv')!r}, "a", newline="") as f:
            for step in range(1, 301):
                buf = io.StringIO()
                csv.DictWriter(buf, METRIC_FIELDS, lineterminator="\\n").writerow(dict(
                    step=step, epoch=0, loss_mnist=0.1, loss_cifar=0.2, loss=1 / step, lr=1e-3,
                    samples_per_s=100.0, elapsed_s=step * 0.01))
                line = buf.getvalue()
                f.write(line[:len(line) // 2]); f.flush(); time.sleep(0.001)
                f.write(line[len(line) // 2:]); f.flush()
        """)], cwd=ROOT)
    tail, seen, polls = MetricsTail(tmp_path), [], 0
    while writer.poll() is None:
        new = tail.poll()
        assert not new.restarted
        seen += new.rows
        polls += 1
    assert writer.returncode == 0
    seen += tail.poll().rows
    assert steps(seen) == list(range(1, 301))  # each row exactly once, in order, none cut short
    assert seen == _csv_rows(tmp_path / "metrics.csv")  # the same numbers as a full read
    assert polls > 1 and tail.poll().rows == []


def test_a_cut_off_last_line_waits_for_the_rest(tmp_path):
    log = MetricsLog(tmp_path).open(0)
    log.write(row(1))
    tail = MetricsTail(tmp_path)
    assert steps(tail.poll().rows) == [1]
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("2,0,0.1,0.2")
    assert tail.poll().rows == []
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write(",0.3,0.001,100.0,1.0\n")
    new = tail.poll()
    assert steps(new.rows) == [2] and new.rows[0]["loss"] == pytest.approx(0.3) and not new.restarted
    log.close()


def test_a_resume_rewrites_the_file_and_the_tail_starts_over(tmp_path):
    tail = logged(tmp_path, 10)
    # what a resume from the checkpoint at step 4 does: keep rows 1..4 (atomically), then redo 5..
    log = MetricsLog(tmp_path).open(4)
    for s in range(5, 30):  # longer than before: only the new inode tells
        log.write(row(s, loss=2.0, elapsed=s * 0.7))
    new = tail.poll()
    assert new.restarted and steps(new.rows) == list(range(1, 30))
    assert [r["loss"] for r in new.rows[3:5]] == [1.0, 2.0]
    log.write(row(30, loss=2.0))
    new = tail.poll()
    assert not new.restarted and steps(new.rows) == [30]
    log.close()


def test_a_rewrite_in_place_is_noticed_too(tmp_path):
    """Same inode, not shorter (an inode number reused): the last line read is no longer where it was."""
    tail = logged(tmp_path, 5)
    path = tmp_path / "metrics.csv"
    inode, text = path.stat().st_ino, path.read_text()
    with open(path, "r+") as f:
        f.write(text.replace("1.0,", "3.0,") + "6,0,1,2,3.0,0.001,100.0,3.0\n")
    assert path.stat().st_ino == inode
    new = tail.poll()
    assert new.restarted and steps(new.rows) == list(range(1, 7)) and {r["loss"] for r in new.rows} == {3.0}


def test_a_missing_or_damaged_file(tmp_path):
    tail = MetricsTail(tmp_path)
    assert tail.poll() == ([], False)
    (tmp_path / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n1,0,0.1,0.2,0.3,0.001,100,0.5\n"
                                          "2,0,oops,0.2,0.3,0.001,100,1.0\n3,0,0.1,0.2,0.3,0.001,100,1.5\n")
    assert steps(tail.poll().rows) == [1, 3]  # a damaged row is skipped, as a full read skips it
    os.unlink(tmp_path / "metrics.csv")
    assert tail.poll() == ([], True)
    assert tail.poll() == ([], False)


# --------------------------------------------------------------------------- the chart


def written_run(tmp_path: Path, n: int) -> pd.DataFrame:
    """A run of n steps written by the trainer's own writer and read back through a tail."""
    rng = np.random.default_rng(0)
    log = MetricsLog(tmp_path).open(0)
    for s in range(1, n + 1):
        log.write(row(s, loss=float(0.05 + 1 / s + 0.01 * rng.random())))
    log.close()
    return pd.DataFrame(MetricsTail(tmp_path).poll().rows, columns=METRIC_FIELDS)


def traces(fig) -> list:
    return [(np.asarray(t.x), np.asarray(t.y), t.name) for t in fig.data]


def test_a_15000_step_run_is_drawn_with_at_most_1500_points_a_trace(tmp_path):
    import mixsep_ui as ui

    m = written_run(tmp_path, 15_000)
    fig = ui.loss_figure(m, 0.9, "x")
    ema = m["loss"].ewm(alpha=0.1).mean()
    assert len(fig.data) == 6
    for x, y, name in traces(fig):
        assert 1000 < len(x) <= 1500, name
        assert x[0] == 1 and x[-1] == 15_000 and np.all(np.diff(x) > 0), name  # whole steps, in order
        assert x.dtype.kind == "i"
    raw = next((x, y) for x, y, name in traces(fig) if name == "total (raw)")
    total = next((x, y) for x, y, name in traces(fig) if name == "total")
    assert raw[1][0] == m["loss"].iloc[0] and raw[1][-1] == m["loss"].iloc[-1]
    assert total[1][-1] == pytest.approx(ema.iloc[-1])  # the EMA runs over every row, not the shown ones
    assert np.array_equal(raw[0][-500:], np.arange(14_501, 15_001))  # the latest steps at full resolution
    assert fig.layout.xaxis.tickformat == "d"


def extent(x, y, edges) -> np.ndarray:
    """What each pixel column [edges[i], edges[i+1]) of a line chart covers: the y-range of the line through (x, y)
    there (its points inside, and where it crosses the column's edges)."""
    at_edges = np.interp(edges, x, y)
    return np.array([np.ptp(np.concatenate([y[(x >= a) & (x < b)], [ya, yb]]))
                     for a, b, ya, yb in zip(edges[:-1], edges[1:], at_edges[:-1], at_edges[1:])])


@pytest.mark.parametrize("n", [15_000, 64_000])
def test_the_raw_trace_of_a_long_run_covers_what_every_row_would_where_it_is_thinned(n):
    """Bucket means, then a bucket's middle row, drew the faint raw trace calm before the last 500 steps (a fifth to
    a third of the range every row spans in a pixel's column) and the last 500, all drawn, as a burst of noise at the
    end, as if training had turned unstable there (QA, a 64,000-step run). Each bucket's lowest and highest rows
    cover what every row would, in a chart 700 pixels wide."""
    import mixsep_ui as ui

    rng = np.random.default_rng(0)
    loss = 0.05 + 0.01 * rng.standard_normal(n)  # a flat, noisy run
    m = pd.DataFrame(dict(step=np.arange(1, n + 1), epoch=0, loss_mnist=loss / 2, loss_cifar=loss / 2, loss=loss,
                          lr=1e-3, samples_per_s=100.0, elapsed_s=np.arange(n) * 0.5))
    x, y = next((x, y) for x, y, name in traces(ui.loss_figure(m, 0.9)) if name == "total (raw)")
    assert len(x) <= 1500 and np.array_equal(y, loss[x - 1])  # every shown point is the file's row at its step
    edges = np.linspace(1, n, 701)
    covered = extent(x.astype(float), y, edges) / extent(np.arange(1, n + 1, dtype=float), loss, edges)
    thinned, whole = edges[1:] <= n - 500, edges[:-1] >= n - 499  # the last 500 rows: steps n - 499 to n
    assert np.median(covered[thinned]) > 0.9 and np.allclose(covered[whole], 1.0)


def test_a_short_run_keeps_every_point_and_whole_step_ticks(tmp_path):
    import mixsep_ui as ui

    m = written_run(tmp_path, 8)
    fig = ui.loss_figure(m, 0.0)
    for x, y, name in traces(fig):
        assert x.tolist() == list(range(1, 9)), name
    raw = next(y for x, y, name in traces(fig) if name == "total (raw)")
    assert raw.tolist() == m["loss"].tolist()
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1
    assert ui.loss_figure(m.iloc[:0], 0.9).data == ()  # no rows yet: an empty chart, no error
    assert [t.line.dash for t in fig.data if t.showlegend is not False] == [None, None, None]  # heads differ


def test_equal_heads_draw_the_cifar_curve_dashed_over_the_mnist_one(tmp_path):
    """An interval model's two losses are equal at every step: the CIFAR curve was hidden under the MNIST one."""
    import mixsep_ui as ui

    m = written_run(tmp_path, 8)
    m["loss_cifar"] = m["loss_mnist"] * (1 + 2e-7)  # a real run's two float32 sums differ in the last bits
    shown = [t for t in ui.loss_figure(m, 0.5).data if t.showlegend is not False]
    assert [t.name for t in shown] == ["MNIST head", "CIFAR head (= MNIST head: 2·mixture − digit)", "total"]
    assert [t.line.dash for t in shown] == [None, "dash", None]
    assert np.allclose(shown[0].y, shown[1].y)


def test_last_logged_step_reads_the_tail_and_skips_a_cut_off_line(tmp_path):
    from mixsep.run import METRIC_FIELDS, last_logged_step

    assert last_logged_step(tmp_path) == 0  # no file
    rows = "".join(f"{i},0,0.1,0.2,0.3,0.001,10,{i}\n" for i in range(1, 2001))  # far more than the 4 KB tail
    (tmp_path / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n" + rows + "2001,0,0.1")
    assert last_logged_step(tmp_path) == 2000


def test_the_run_list_reads_only_the_end_of_a_long_metrics_csv(tmp_path):
    """The run list, asked of every run on every page, read each metrics.csv whole for its last row: a file of
    a gigabyte (sparse: a damaged or hostile one) took seconds and gigabytes of the server's memory per page."""
    import subprocess
    import sys

    from mixsep.config import TrainConfig
    from mixsep.run import last_metric_row
    from mixsep.runs import read_metrics, run_summary

    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(model="tiny").save(run / "config.json")
    rows = "".join(f"{i},0,0.1,0.2,{1 / i},0.001,10,{i}\n" for i in range(1, 3001))  # 3,000 rows: beyond 4 KB
    (run / "metrics.csv").write_text(",".join(METRIC_FIELDS) + "\n" + rows + "3001,0,0.1")  # the last cut off
    assert last_metric_row(run) == read_metrics(run).iloc[-1].to_dict() | {"step": 3000, "epoch": 0}
    summary = run_summary(run)
    assert (summary["step"], summary["last_loss"]) == (3000, 1 / 3000)
    # not parsed again while the file is unchanged, and read anew as soon as it changes: the cut-off row ends
    last_metric_row(run)["step"] = -1  # a caller's change reaches no other caller
    with open(run / "metrics.csv", "a") as f:
        f.write(",0.2,0.5,0.001,10,3001\n")
    assert last_metric_row(run)["step"] == 3001 and run_summary(run)["last_loss"] == 0.5
    # rewritten in place to the same size with its old mtime put back (cp -p, rsync -a --inplace): read anew
    st = (run / "metrics.csv").stat()
    (run / "metrics.csv").write_bytes((run / "metrics.csv").read_bytes().replace(b",0.5,", b",0.7,"))
    os.utime(run / "metrics.csv", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert last_metric_row(run)["loss"] == 0.7
    with open(run / "metrics.csv", "ab") as f:  # then 8 MB of damage after the last row: no row in the end
        f.write(b"\n" + b"x" * (8 << 20) + b"\n")
    assert last_metric_row(run) is None and run_summary(run)["last_loss"] is None
    assert "metrics.csv's last 4 MB hold no readable row" in run_summary(run)["message"]  # not "no row" at all
    head = ",".join(METRIC_FIELDS) + "," + ",".join(f"note{i}" for i in range(1000)) + "\n"  # a header of 9 KB
    (run / "metrics.csv").write_text(head + "".join(f"{i},0,0.1,0.2,{1 / i},0.001,10,{i}" + ",0" * 1000 + "\n"
                                                    for i in range(1, 2501)))  # 5 MB: its end only is read
    assert last_metric_row(run)["step"] == 2500 == read_metrics(run)["step"].iloc[-1]
    big = tmp_path / "big"
    big.mkdir()
    TrainConfig(model="tiny").save(big / "config.json")
    with open(big / "metrics.csv", "wb") as f:  # a gigabyte of zeros (sparse: no disk used), its rows at the end
        f.write((",".join(METRIC_FIELDS) + "\n").encode())
        f.truncate(1 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"\n" + rows.encode())
    code = ("import re, sys; from mixsep.runs import run_summary; s = run_summary(sys.argv[1]); print(s['step'], "
            "s['last_loss'], re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1])")  # this process's peak
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, check=True).stdout
    step, loss, peak_kb = out.split()
    assert (int(step), float(loss)) == (3000, 1 / 3000)
    assert int(peak_kb) < 400_000, out  # the whole file read took 3.9 GB; the imports alone take about 110 MB


def test_damaged_lines_and_non_finite_losses_are_skipped_by_both_readers(tmp_path):
    """A line with a stray carriage return (random bytes) raised csv.Error in the Train page's tail;
    a hand-edited inf loss blanked the whole chart."""
    from mixsep.runs import read_metrics

    header = ",".join(METRIC_FIELDS) + "\n"
    good = [",".join(str(v) for v in row(s).values()) + "\n" for s in (1, 2, 4)]
    bad = ["3,0,0.1,0.2,inf,0.001,100,1.5\n", '5,0,"0.1\r,0.2\n', "\x00\xff\r\x1b,,\n"]
    (tmp_path / "metrics.csv").write_bytes((header + good[0] + good[1] + bad[0] + good[2] + bad[1] + bad[2])
                                           .encode("latin-1"))
    assert steps(MetricsTail(tmp_path).poll().rows) == [1, 2, 4]
    assert read_metrics(tmp_path)["step"].tolist() == [1, 2, 4]
    (tmp_path / "metrics.csv").write_bytes(os.urandom(3000))  # not text at all
    assert MetricsTail(tmp_path).poll().rows == [] and read_metrics(tmp_path).empty


def test_a_fifo_for_metrics_csv_is_listed_as_unread_not_waited_on(tmp_path):
    """A metrics.csv that is a FIFO hung every page listing runs, for good: the run list read it to its end."""
    from mixsep.config import TrainConfig
    from mixsep.runs import list_runs, read_metrics, run_summary

    run = tmp_path / "runs" / "piped"
    run.mkdir(parents=True)
    TrainConfig(model="tiny").save(run / "config.json")
    os.mkfifo(run / "metrics.csv")
    got = not_waiting_on(run / "metrics.csv", lambda: dict(frame=read_metrics(run), summary=run_summary(run),
                                                             runs=list_runs(tmp_path / "runs")))
    assert got["frame"].empty and list(got["frame"].columns) == METRIC_FIELDS
    assert [r["run"] for r in got["runs"]] == ["piped"] and got["summary"]["last_loss"] is None
    assert "metrics.csv is not a regular file (a FIFO, say), so its rows are not read" in got["summary"]["message"]


def test_every_reader_skips_the_same_rows_that_cannot_be_steps(tmp_path):
    """A step of 1e30 became step -9223372036854775808 on Compare's curve (int64 overflow) and a step of 10**30
    on the Train page; a loss of -5 (an MSE is never negative) was shown as the last loss; a row with a field
    more than the header was skipped by the run list and taken by the Train page's tail (and, as the first row,
    made the run list read every column one place off)."""
    from mixsep.run import last_logged_step
    from mixsep.runs import read_metrics

    def line(step, epoch=0, mnist=0.1, cifar=0.2, loss=0.3, lr=0.001, speed=100, elapsed=1.0, more=()):
        return ",".join(str(v) for v in (step, epoch, mnist, cifar, loss, lr, speed, elapsed, *more)) + "\n"

    junk = [line(1, more=(9,)), line("1e30"), line(2.5), line(-1), line(0), line("99999999999999999999"),
            line(1, epoch=-1), line(1, epoch=0.5), line(1, loss=-5), line(1, mnist=-0.1), line(1, cifar="inf"),
            line(1, lr="inf"), line(1, speed="nan"), line(1, elapsed="-inf"), line(1, loss="nan"),
            line(1, elapsed=""), line(1, more=("",)), "1,0,0.1,0.2,0.3\n", line("١"), line("1_0"), line('"1"')]
    good = [line(s, loss=s / 10, elapsed=s / 2) for s in (1, 2, 3)]
    path = tmp_path / "metrics.csv"
    path.write_text(",".join(METRIC_FIELDS) + "\n" + junk[0] + good[0] + "".join(junk[1:]) + good[1] + good[2]
                    + line("1e30") + line(4, loss=-5))
    frame, tail = read_metrics(tmp_path), MetricsTail(tmp_path).poll().rows
    assert frame["step"].tolist() == steps(tail) == steps(_csv_rows(path)) == [1, 2, 3]
    assert frame.to_dict("records") == tail == _csv_rows(path)  # the same numbers too
    assert frame["loss"].tolist() == [0.1, 0.2, 0.3] and frame["step"].dtype == np.int64
    assert {type(r[k]) for r in tail for k in METRIC_FIELDS} == {int, float}  # ints: step and epoch only
    assert {type(r["samples_per_s"]) for r in tail} == {float}  # written "100": a float as the trainer's are
    assert last_logged_step(tmp_path) == 3
    # polled line by line, the tail takes the same rows as a full read
    tail, polled = MetricsTail(tmp_path), []
    text = path.read_text()
    path.write_text("")
    for part in text.splitlines(keepends=True):
        with open(path, "a") as f:
            f.write(part)
        polled += tail.poll().rows
    assert polled == frame.to_dict("records")


def test_a_fast_runs_speed_and_eta_are_read_over_its_last_seconds_not_its_last_20_rows():
    """A small model logs a row every 8 ms: its last 20 rows were 0.15 s, and one slow moment of the machine read as
    a third of the speed and three times the ETA until the next refresh (QA). A run of a step a second, and the rows
    since a resume (elapsed_s starts again), read as before."""
    from mixsep.runs import progress

    def run(seconds_a_step, samples_per_s, first_step=1):
        return pd.DataFrame(dict(step=np.arange(first_step, first_step + len(seconds_a_step)),
                                 elapsed_s=np.cumsum(seconds_a_step), samples_per_s=samples_per_s))

    fast = run(np.r_[np.full(2000, 0.008), np.full(20, 0.025)], np.r_[np.full(2000, 2000.0), np.full(20, 640.0)])
    p = progress(fast, 10_000)
    assert p["samples_per_s"] == 2000.0 and p["eta_s"] == pytest.approx(7980 * 0.008)
    slow = run(np.r_[np.full(80, 1.0), np.full(20, 2.0)], np.r_[np.full(80, 128.0), np.full(20, 64.0)])
    assert (progress(slow, 1000)["samples_per_s"], progress(slow, 1000)["eta_s"]) == (64.0, 900 * 2.0)
    faster = run(np.r_[np.full(8000, 0.002), np.full(1200, 0.005)], np.r_[np.full(8000, 8000.0), np.full(1200, 3200.0)])
    assert progress(faster, 20_000)["samples_per_s"] == 8000.0  # 10 s of 2 ms rows: 3,200 rows, 2,000 of them fast
    resumed = pd.concat([fast, run(np.full(30, 0.02), np.full(30, 800.0), first_step=2021)], ignore_index=True)
    assert progress(resumed, 10_000)["samples_per_s"] == 800.0 and progress(resumed, 10_000)["step"] == 2050
