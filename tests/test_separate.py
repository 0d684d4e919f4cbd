"""`python -m mixsep separate`: a user's own mixture images in, a digit and an image out for each."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import warnings
import zipfile
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, mixture_pngs, tmpfs, tree

from mixsep.cli import main
from mixsep.metrics import recover
from mixsep.train import load_run_model

TINY = ["--batch-size", "16", "--no-pretrained", "--quiet", "--checkpoint-seconds", "0"]


def _train(capsys, data_root, runs, model="tiny") -> Path:
    assert main(["train", "--data-root", str(data_root), "--runs-dir", str(runs), "--model", model, *TINY,
                 "--epochs", "1"]) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def test_separate_writes_a_grey_digit_and_an_image_per_mixture_that_average_back_to_it(capsys, data_root, tmp_path):
    run = _train(capsys, data_root, tmp_path / "runs", "unet_digit")
    inputs, mixed = mixture_pngs(data_root, tmp_path / "in", 3)
    out = tmp_path / "out"
    # a cold process, as a user's: torchmetrics (with torchvision's models, torch._dynamo and scipy.signal, seconds
    # of imports) is not loaded, as nothing is scored
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "mixsep", "separate", str(run), *map(str, inputs),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "mixsep.separate" in imported and not {"torchmetrics", "scipy.signal", "torch._dynamo"} & imported
    printed = done.stdout.split()
    assert printed == [str(out / f"mix{i}.{s}.png") for i in range(3) for s in ("mnist", "cifar")]
    model, _, _ = load_run_model(run)
    for i, px in enumerate(mixed):
        digit, image = Image.open(out / f"mix{i}.mnist.png"), Image.open(out / f"mix{i}.cifar.png")
        assert (digit.mode, digit.size, image.mode, image.size) == ("L", (32, 32), "RGB", (32, 32))
        d, c = np.asarray(digit).astype(int), np.asarray(image).astype(int)
        # an interval model's two estimates average to the mixture: here to within the PNGs' rounding
        assert np.abs((d[..., None] + c) - 2 * px.astype(int)).max() <= 1
        # and they are the model's own estimates of this mixture, the right way round
        mean = torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            m, _ = recover(mean, *[t.float() for t in model.eval()(mean)], "projection_uniform")
        assert np.abs(d - (m[0, 0] * 255).round().numpy()).max() <= 1
        assert 0 < d.mean() < 255 and c.std() > 0  # neither output is blank


def test_each_mode_and_overwrite(capsys, data_root, tmp_path):
    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, mixed = mixture_pngs(data_root, tmp_path / "in", 1)
    out = tmp_path / "out"
    model, _, _ = load_run_model(run)
    mean = torch.from_numpy(mixed).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        heads = [t.float() for t in model.eval()(mean)]
    written = {}
    for mode in ("direct", "subtraction", "projection_uniform"):
        assert main(["separate", str(run), str(inputs[0]), "--out", str(out), "--mode", mode, "--overwrite"]) == 0
        c = np.asarray(Image.open(out / "mix0.cifar.png")).astype(int)
        _, want = recover(mean, *heads, mode)
        assert np.abs(c - (want[0].permute(1, 2, 0) * 255).round().numpy()).max() <= 1, mode
        written[mode] = c
    assert not np.array_equal(written["direct"], written["subtraction"])  # the tiny model's heads disagree
    capsys.readouterr()


@pytest.mark.parametrize("case,message", [
    ("not_an_image", "is not an image file of a format mixsep reads"),
    # a name holding a newline ran the sentence over two lines, and its ESC recoloured the terminal
    ("control_characters", "in/bad\\nname\\x1b[31m.png is not an image file of a format mixsep reads"),
    ("wrong_size", "is 64x48 pixels; a mixture must be 32x32"),
    ("bomb", "claims a size far beyond 32x32 pixels"),
    ("sixteen_bit", "has I;16 pixels; save it with 8 bits per channel"),
    ("missing", "gone.png does not exist."),
    ("a_folder", "dir.png is a folder, not an image file."),  # it said "does not exist or is not a file"
    ("a_fifo", "fifo.png is not a regular file (a FIFO or a device, say), so it is not read as an image."),
    ("truncated", "could not be read as an image"),
    ("animated", "holds 2 frames"),
    ("same_name", "would both write mix0.*.png"),
    ("output_exists", "exists already; pass --overwrite"),
    ("output_is_a_folder", "exists and is not a file; move it away"),
    ("out_is_a_file", "is a file, not a folder"),
    ("out_parent_missing", "does not exist; create it or choose another --out"),
    ("output_is_an_input", "mix0.mnist.png would be written over one of the images being separated"),
    ("out_in_checkpoints", "is in a run's checkpoints folder, which only training writes; choose another --out"),
    ("transparent", "has transparent pixels, which a mixture never has"),
    ("transparent_palette", "has transparent pixels, which a mixture never has"),
    ("bad_mode", "invalid choice"),
    # Pillow reads EPS (by content, whatever the name) by running Ghostscript on it: never here
    ("postscript", "ps.png is not an image file of a format mixsep reads (PNG, JPEG, BMP, GIF, TIFF, WEBP, PPM, ICO)"),
    ("sixteen_bit_rgb", "has 16 bits per channel; save it with 8 bits per channel"),  # it was read as its high bytes
    ("out_in_checkpoints_config_lost", "is in a run's checkpoints folder"),  # this run's, its config.json lost
    ("over_the_checkpoint", "mix0.mnist.png would be written over the checkpoint that separates them"),
    ("out_loops", "selfdir is a link that leads back to itself"),  # a traceback, exit 1
    # its directory says 32x32; Pillow decoded the 2000x2000 PNG inside while opening it (13000x13000: 646 MB)
    ("icon_holding_a_large_png", "big.ico is an icon holding a 2000x2000 image; a mixture must be 32x32"),
])
def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(capsys, data_root, tmp_path, monkeypatch, case, message):
    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 2)
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "not_an_image":
        (tmp_path / "in" / "notes.png").write_text("a note, not an image")
        inputs.append(tmp_path / "in" / "notes.png")
    elif case == "control_characters":
        (tmp_path / "in" / "bad\nname\x1b[31m.png").write_text("a note, not an image")
        inputs.append(tmp_path / "in" / "bad\nname\x1b[31m.png")
    elif case == "wrong_size":
        Image.new("RGB", (64, 48)).save(tmp_path / "in" / "big.png")
        inputs.append(tmp_path / "in" / "big.png")
    elif case == "bomb":  # a PNG whose header claims 100,000 x 100,000 pixels, in 150 bytes
        inputs.append(tmp_path / "in" / "bomb.png")
        inputs[-1].write_bytes(_png_header_only(100_000, 100_000))
    elif case == "sixteen_bit":
        Image.fromarray(np.full((32, 32), 40_000, np.uint16)).save(tmp_path / "in" / "deep.png")
        inputs.append(tmp_path / "in" / "deep.png")
    elif case == "transparent":  # an RGBA file whose alpha hides some pixels
        rgba = np.asarray(Image.open(inputs[0]).convert("RGBA")).copy()
        rgba[:4, :, 3] = 0
        Image.fromarray(rgba).save(tmp_path / "in" / "see-through.png")
        inputs.append(tmp_path / "in" / "see-through.png")
    elif case == "transparent_palette":  # a palette file with a transparent colour in use
        Image.open(inputs[0]).quantize(16).save(tmp_path / "in" / "keyed.png", transparency=0)
        inputs.append(tmp_path / "in" / "keyed.png")
    elif case == "missing":
        inputs.append(tmp_path / "in" / "gone.png")
    elif case == "a_folder":
        inputs.append(tmp_path / "in" / "dir.png")
        inputs[-1].mkdir()
    elif case == "a_fifo":
        inputs.append(tmp_path / "in" / "fifo.png")
        os.mkfifo(inputs[-1])
    elif case == "truncated":
        data = inputs[1].read_bytes()
        inputs[1].write_bytes(data[: len(data) // 2])
    elif case == "animated":
        frames = [Image.new("RGB", (32, 32), (i * 90, 0, 0)) for i in range(2)]
        frames[0].save(tmp_path / "in" / "anim.gif", save_all=True, append_images=frames[1:])
        inputs.append(tmp_path / "in" / "anim.gif")
    elif case == "same_name":
        (tmp_path / "other").mkdir()
        inputs.append(tmp_path / "other" / "mix0.png")
        inputs[-1].write_bytes(inputs[0].read_bytes())
    elif case == "output_exists":
        out.mkdir()
        (out / "mix1.cifar.png").write_bytes(b"the user's own file")
    elif case == "output_is_a_folder":  # --overwrite replaces files only: this one once failed halfway
        (out / "mix1.cifar.png").mkdir(parents=True)
        (out / "mix0.mnist.png").write_bytes(b"the user's own file")
        extra = ["--overwrite"]
    elif case == "output_is_an_input":  # `separate *.png --out . --overwrite` run twice: a.mnist.png is an input
        out = tmp_path / "in"
        inputs.append(out / "mix0.mnist.png")
        inputs[-1].write_bytes(inputs[1].read_bytes())
        extra = ["--overwrite"]
    elif case == "out_in_checkpoints":
        out = run / "checkpoints" / "pngs"
    elif case == "out_is_a_file":
        out.write_text("a file")
    elif case == "out_parent_missing":
        out = tmp_path / "nope" / "out"
    elif case == "bad_mode":
        extra = ["--mode", "projection_optimal"]  # needs training pairs: not offered here
    elif case == "postscript":
        inputs.append(tmp_path / "in" / "ps.png")
        inputs[-1].write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n0 0 32 32 rectfill\nshowpage\n")
        gs = tmp_path / "bin" / "gs"  # a Ghostscript that leaves a mark when it is run
        gs.parent.mkdir()
        gs.write_text(f"#!/bin/sh\ntouch {tmp_path / 'gs-ran'}\nexit 1\n")
        gs.chmod(0o755)
        monkeypatch.setenv("PATH", f"{gs.parent}:{os.environ['PATH']}")
    elif case == "icon_holding_a_large_png":
        import struct

        png = io.BytesIO()
        Image.new("RGB", (2000, 2000), (10, 20, 30)).save(png, "PNG")
        inputs.append(tmp_path / "in" / "big.ico")
        inputs[-1].write_bytes(struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 32, 32, 0, 0, 1, 32,
                                                                            len(png.getvalue()), 22) + png.getvalue())
    elif case == "sixteen_bit_rgb":
        inputs.append(tmp_path / "in" / "deep-rgb.png")
        inputs[-1].write_bytes(_png16_rgb(np.full((32, 32, 3), 65280)))
    elif case == "out_in_checkpoints_config_lost":
        (run / "config.json").unlink()
        out = run / "checkpoints"
    elif case == "over_the_checkpoint":
        out.mkdir()
        (out / "mix0.mnist.png").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
        extra = ["--checkpoint", str(out / "mix0.mnist.png"), "--overwrite"]
    elif case == "out_loops":
        out = tmp_path / "selfdir"
        out.symlink_to(out)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "runs" not in p.parts}
    with pytest.raises(SystemExit) if case == "bad_mode" else contextlib.nullcontext():
        rc = main(["separate", str(run), *map(str, inputs), "--out", str(out), *extra])
        assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if case != "bad_mode":
        assert err.startswith("error: ") and err.count("\n") == 1
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "runs" not in p.parts}
    assert after == before  # nothing written, nothing replaced
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-1.pt", "last.pt"]


def _png16_rgb(pixels: np.ndarray) -> bytes:
    """A PNG of 16 bits per channel, RGB (Pillow writes none itself)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", *pixels.shape[1::-1], 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_opaque_alpha_is_accepted_and_exif_orientation_is_applied(data_root, tmp_path):
    """An RGBA file with every pixel opaque holds a mixture; a JPEG turned by its EXIF orientation
    is read as it is shown."""
    from mixsep.separate import read_mixture

    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 1)
    rgb = read_mixture(inputs[0])
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "opaque.png")
    assert (read_mixture(tmp_path / "opaque.png") == rgb).all()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown turned 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "turned.jpg", quality=100, exif=exif)
    shown = read_mixture(tmp_path / "turned.jpg").astype(int)
    assert np.abs(shown - np.rot90(rgb, k=-1)).mean() < np.abs(shown - rgb).mean() / 2


def _bmp565(words: np.ndarray) -> bytes:
    """A 16-bit BMP of RGB565 words (H, W), top row first: BITMAPINFOHEADER, BI_BITFIELDS masks F800/07E0/001F."""
    import struct

    h, w = words.shape
    rows = b"".join(row.astype("<u2").tobytes() for row in words[::-1])  # bottom-up; 32 px of 2 bytes: 4-aligned
    info = (struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(rows), 2835, 2835, 0, 0)
            + struct.pack("<III", 0xF800, 0x07E0, 0x001F))
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(rows), 0, 0, 14 + len(info)) + info + rows


def test_a_16_bit_rgb565_bmp_is_separated_as_its_8_bit_colours(capsys, data_root, tmp_path):
    """A 16-bit BMP packs 5, 6 and 5 bits a channel into each pixel; it was refused as '16 bits per channel'
    (its twin RGB555 was read)."""
    from mixsep.separate import read_mixture

    run = _train(capsys, data_root, tmp_path / "runs")
    rng = np.random.default_rng(0)
    r, g, b = rng.integers(0, 32, (32, 32)), rng.integers(0, 64, (32, 32)), rng.integers(0, 32, (32, 32))
    r[0, :3], g[0, :3], b[0, :3] = (31, 0, 0), (0, 63, 0), (0, 0, 31)  # pure red, green, blue
    (tmp_path / "in").mkdir()
    bmp = tmp_path / "in" / "rgb565.bmp"
    bmp.write_bytes(_bmp565((r << 11 | g << 5 | b).astype(np.uint16)))
    pixels = read_mixture(bmp)
    exact = np.stack([r * 255 / 31, g * 255 / 63, b * 255 / 31], axis=-1)
    assert np.abs(pixels - exact).max() < 1  # each channel scaled to 8 bits, not its high byte
    assert pixels[0, :3].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    Image.fromarray(pixels).save(tmp_path / "in" / "same.png")
    out = tmp_path / "out"
    assert main(["separate", str(run), str(bmp), str(tmp_path / "in" / "same.png"), "--out", str(out)]) == 0
    for s in ("mnist", "cifar"):
        assert (out / f"rgb565.{s}.png").read_bytes() == (out / f"same.{s}.png").read_bytes()
    # 16 bits a channel is still refused (the same pixels, each channel its 16-bit value)
    (tmp_path / "in" / "deep.png").write_bytes(_png16_rgb(pixels.astype(np.uint16) * 257))
    assert main(["separate", str(run), str(tmp_path / "in" / "deep.png"), "--out", str(tmp_path / "out2")]) == 2
    assert "has 16 bits per channel" in capsys.readouterr().err


def test_a_palette_png_with_a_transparency_chunk_separates_without_a_warning(capsys, data_root, tmp_path):
    """A palette PNG with a tRNS chunk (as pngquant and optipng write them), every pixel opaque: `separate` printed
    Pillow's two-line 'Palette images with Transparency expressed in bytes should be converted to RGBA images'."""
    import warnings

    from mixsep.separate import read_mixture

    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 1)
    pal = tmp_path / "in" / "pal.png"
    Image.open(inputs[0]).convert("P").save(pal, transparency=255)  # a tRNS of an alpha per entry, 255 unused
    assert isinstance(Image.open(pal).info["transparency"], bytes)
    shown = np.asarray(Image.open(pal).convert("RGBA"))
    assert (shown[..., 3] == 255).all()
    Image.fromarray(shown[..., :3]).save(tmp_path / "in" / "same.png")  # the same pixels, no palette
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:  # what a process would print on stderr
        warnings.simplefilter("always")
        assert main(["separate", str(run), str(pal), str(tmp_path / "in" / "same.png"), "--out", str(out)]) == 0
    said = capsys.readouterr().err.splitlines()  # only separate's own line
    assert not caught and len(said) == 1, ([str(w.message) for w in caught], said)
    assert said[0].endswith("mode projection_uniform: 2 mixture(s) separated"), said
    for s in ("mnist", "cifar"):
        assert (out / f"pal.{s}.png").read_bytes() == (out / f"same.{s}.png").read_bytes()
    with warnings.catch_warnings():  # the Separate page reads an upload's bytes by the same code
        warnings.simplefilter("error")
        pixels = read_mixture(pal.read_bytes(), "pal.png")
    assert (pixels == shown[..., :3]).all()


def test_a_bad_image_is_refused_before_the_run_is_loaded(capsys, tmp_path):
    Image.new("RGB", (31, 32)).save(tmp_path / "m.png")
    (tmp_path / "not-a-run").mkdir()  # it exists (checked first, cheaply); loading it would fail
    assert main(["separate", str(tmp_path / "not-a-run"), str(tmp_path / "m.png")]) == 2
    assert "31x32 pixels" in capsys.readouterr().err


def test_a_missing_run_is_named_before_the_outputs_it_would_have_written(capsys, tmp_path, monkeypatch):
    """`separate nope img.png` with last time's outputs still there said the outputs exist already."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "m.png")
    (tmp_path / "separated").mkdir()
    for name in ("m.mnist.png", "m.cifar.png"):
        (tmp_path / "separated" / name).write_bytes(b"last time's")
    assert main(["separate", "nope", "m.png"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: Run folder nope does not exist")
    # evaluate and grid said "grid.png exists already; pass --overwrite", and only --overwrite showed the typo (QA)
    (tmp_path / "grid.png").write_bytes(b"last time's")
    (tmp_path / "eval.json").write_text("{}")
    for argv in (["grid", "nope"], ["evaluate", "nope", "--json", "eval.json"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().startswith("error: Run folder nope does not exist"), argv
    assert (tmp_path / "grid.png").read_bytes() == b"last time's" and (tmp_path / "eval.json").read_text() == "{}"
    (tmp_path / "run").mkdir()  # a --checkpoint mistyped too (regression pass)
    for argv in (["grid", "run", "--checkpoint", "nosuch.pt"], ["evaluate", "run", "--checkpoint", "nosuch.pt",
                 "--json", "eval.json"], ["separate", "run", "m.png", "--checkpoint", "nosuch.pt"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == "error: Checkpoint nosuch.pt does not exist.", argv


def test_a_full_disk_halfway_writes_none_of_the_outputs(capsys, data_root, tmp_path):
    """20 mixtures, 40 outputs, a disk with room for a few: every output is written under a
    temporary name first and renamed only once all are whole (10 of 40 were left before)."""
    import os

    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 20)
    with tmpfs(tmp_path / "out", "512k") as out:
        filler = out / "filler"
        free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
        filler.write_bytes(b"\0" * (free - 16 * 1024))  # room for a few 32x32 PNGs, not for 40
        assert main(["separate", str(run), *map(str, inputs), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "full" in err and "nothing was written" in err
        assert sorted(p.name for p in out.iterdir()) == ["filler"]  # no output, no temporary file
        filler.unlink()
        assert main(["separate", str(run), *map(str, inputs), "--out", str(out)]) == 0
        assert len(list(out.glob("*.png"))) == 40


def _one_error_line(err: str, *parts: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


@pytest.mark.parametrize("into", ["mount", "folder", "new folder"])
def test_a_read_only_disk_is_one_sentence_and_nothing_is_written(capsys, data_root, tmp_path, into):
    """--out on a read-only filesystem, the mount itself, a folder on it that exists or one to be made there: the
    temporary file cannot be made, and its clean-up (which meets EROFS too) once raised over the message. Found
    before the model is loaded (a new folder was found only when the outputs were written, after the separation,
    with no next step): here the checkpoint is not even readable, and the read-only disk is what is said."""
    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 2)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with tmpfs(tmp_path / "ro", "200k") as disk:
        (disk / "exist").mkdir()
        (disk / "exist" / "keep.txt").write_text("the user's own file")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        out = {"mount": disk, "folder": disk / "exist", "new folder": disk / "new"}[into]
        before = tree(tmp_path)
        assert main(["separate", str(run), *map(str, inputs), "--out", str(out),
                     "--checkpoint", str(tmp_path / "bad.pt")]) == 2
        _one_error_line(capsys.readouterr().err, f"Folder {out if out.exists() else out.parent} cannot be written "
                        "(its disk is mounted read-only); choose another --out.")
        assert tree(tmp_path) == before


def test_the_same_input_named_twice_is_separated_once(capsys, data_root, tmp_path):
    """`separate RUN a.png a.png` (or a.png and a link to it): one file, one pair of outputs; it once
    shared one temporary name, failed the second rename and said only the first outputs were written."""
    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 2)
    (tmp_path / "in" / "link.png").symlink_to(inputs[0])
    out = tmp_path / "out"
    named = [inputs[0], inputs[1], inputs[0], tmp_path / "in" / ".." / "in" / "mix0.png", tmp_path / "in" / "link.png"]
    assert main(["separate", str(run), *map(str, named), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f"mix{i}.{s}.png") for i in range(2) for s in ("mnist", "cifar")]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(p).name for p in printed)  # no temporary file


def test_an_empty_out_is_refused(capsys, data_root, tmp_path, monkeypatch):
    """--out "" once wrote into the current folder, silently: Path("") is Path(".")."""
    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 1)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    for out in ("", "  "):
        assert main(["separate", str(run), *map(str, inputs), "--out", out]) == 2
        _one_error_line(capsys.readouterr().err, "--out is empty; name the folder")
    assert tree(tmp_path) == before


def test_a_full_disk_removes_the_out_folder_separate_made(capsys, data_root, tmp_path):
    """"nothing was written" holds for the folder too: --out made for this call is removed again
    (only it, only empty); a folder that was there already stays."""
    import os

    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 2)
    with tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "there").mkdir()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * free)  # no room for one PNG; a folder still fits
        for out in (disk / "new", disk / "there"):
            assert main(["separate", str(run), *map(str, inputs), "--out", str(out)]) == 2
            _one_error_line(capsys.readouterr().err, "full", "mix0.mnist.png", "nothing was written")
        assert sorted(p.name for p in disk.rglob("*")) == ["filler", "there"]


@pytest.mark.heavy(12)
@pytest.mark.parametrize("sig,phase", [("SIGINT", "renames"), ("SIGTERM", "temps")])
def test_a_signal_while_separate_writes_leaves_every_output_or_none(capsys, data_root, tmp_path, sig, phase):
    """A Ctrl-C while the outputs were renamed into place left thousands of hidden temp files and some of
    the outputs; a SIGTERM while they were written killed the process with its temp files and --out left."""
    import signal

    from conftest import ROOT, WarmProcess, frozen_when

    run = _train(capsys, data_root, tmp_path / "runs")
    first, _ = mixture_pngs(data_root, tmp_path / "in", 1)
    inputs = [first[0]] + [tmp_path / "in" / f"copy{i}.png" for i in range(1, 500)]
    for p in inputs[1:]:
        os.link(first[0], p)
    out = tmp_path / "out"
    proc = WarmProcess(["separate", str(run), *map(str, inputs), "--out", str(out)], ROOT)  # a real process

    def shown() -> tuple[int, int]:
        names = [n for n in os.listdir(out)] if out.is_dir() else []
        return sum(n.startswith(".") for n in names), sum(not n.startswith(".") for n in names)

    if phase == "renames":  # some outputs in place, others still temp files
        frozen_when(proc, lambda: 0 < shown()[1] < 2 * len(inputs), what="the renames", slice_s=0.001)
    else:
        frozen_when(proc, lambda: shown()[0] > 10 and shown()[1] == 0, what="the temp files")
    # what the process was when the signal was sent (stopped? SIGINT ignored by what started the suite?)
    seen = shown(), [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                     if line.startswith(("State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))]
    proc.send_signal(getattr(signal, sig))
    proc.send_signal(signal.SIGCONT)
    err = proc.communicate(timeout=120)[1]  # (forked warm: it skips only the imports)
    assert proc.returncode == 130 and "Traceback" not in err, f"{seen} {err[-600:]}"
    assert err.strip().splitlines()[-1] == f"error: separate interrupted by {'Ctrl-C' if sig == 'SIGINT' else sig}."
    if phase == "renames":  # the signal waits for the last rename: all written
        assert shown() == (0, 2 * len(inputs))
    else:  # none written, and the --out folder it made is gone
        assert not out.exists()


@pytest.mark.filterwarnings("ignore")  # Pillow warns of some damage (a truncated TIFF tag, say) before it refuses
def test_a_damaged_file_of_every_format_read_is_one_sentence():
    """Pillow's GIF and TIFF decoders met damaged files with IndexError and TypeError: a traceback on the CLI,
    and on the Separate page one bad upload hid every good one. Seeded damage to one file of each format."""
    import io
    import random

    from mixsep.errors import MixsepError
    from mixsep.separate import FORMATS, read_mixture

    rng = random.Random(2)
    px = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    escaped = {}
    for fmt in FORMATS:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        whole = buf.getvalue()
        assert read_mixture(whole, fmt).shape == (32, 32, 3)
        for _ in range(300):
            data = bytearray(whole)
            if rng.random() < 0.3:
                data = data[:rng.randrange(len(data))]
            else:
                for _ in range(rng.randint(1, 6)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                assert read_mixture(bytes(data), "f").shape == (32, 32, 3)
            except MixsepError as e:
                assert str(e).startswith("f ") and "\n" not in str(e)
            except Exception as e:  # noqa: BLE001 (what escapes is the finding)
                escaped.setdefault(f"{fmt}: {e.__class__.__name__}", repr(e))
    assert not escaped, escaped


def test_an_image_name_too_long_for_its_outputs_is_refused_before_any_work(capsys, data_root, tmp_path):
    """A 240-character stem: `<stem>.mnist.png` fits in 255 bytes, its hidden temporary name does not. It was
    found only when the first output was written, after the whole batch had been separated."""
    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 2)
    long = inputs[1].with_name("a" * 240 + ".png")
    inputs[1].rename(long)
    out = tmp_path / "out"
    before = tree(tmp_path)
    assert main(["separate", str(run), str(inputs[0]), str(long), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "a" * 240 + ".mnist.png is too long a name here", "shorter name")
    assert tree(tmp_path) == before


def test_outputs_written_meanwhile_by_another_command_are_not_replaced_without_overwrite(tmp_path):
    """The outputs are checked before any work; a file that appears between that check and the renames (another
    command with the same outputs) was replaced, and both commands said they wrote it. Now none is written."""
    from mixsep.errors import MixsepError
    from mixsep.run import write_all

    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"theirs")
    with pytest.raises(MixsepError) as e:
        write_all([(out / "a.png", b"ours a"), (out / "b.png", b"ours b"), (out / "c.png", b"ours c")], overwrite=False)
    assert str(e.value) == (f"{out / 'b.png'} exists already: something wrote it while this command ran, so nothing "
                            "was written; pass --overwrite to replace it, or choose another output.")
    assert tree(out) == {"b.png": b"theirs"}  # theirs kept; ours (a.png, put before b.png) taken back, no temp file
    write_all([(out / "b.png", b"ours b")], overwrite=True)  # --overwrite replaces, as before
    assert (out / "b.png").read_bytes() == b"ours b"


@pytest.mark.heavy(12)
def test_two_separates_at_once_with_the_same_outputs_leave_one_commands_files(capsys, data_root, tmp_path):
    """Two real commands started together: both passed the check before any work, and the later one's renames
    replaced the earlier one's files while both exited 0 saying they wrote them (QA: of 6,000 outputs, 0 from
    the first). Now exactly one writes, every output is that one's, and the other says why, exit 2."""
    runs = [_train(capsys, data_root, tmp_path / "runs"), None]
    assert main(["train", "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"), "--model", "tiny",
                 *TINY, "--epochs", "1", "--seed", "7"]) == 0
    runs[1] = Path(capsys.readouterr().out.strip().splitlines()[-1])
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 40)
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "mixsep", "separate", str(run), *map(str, inputs), "--out",
                               str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run in runs]
    done = [(p.wait(300), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in done) == [0, 2], done
    winner = runs[[code for code, _, _ in done].index(0)]
    loser_err = next(err for code, _, err in done if code == 2)
    assert loser_err.count("\n") == 1 and "exists already" in loser_err and "--overwrite" in loser_err, loser_err
    again = tmp_path / "again"  # the winner's outputs, written alone
    assert main(["separate", str(winner), *map(str, inputs), "--out", str(again)]) == 0
    capsys.readouterr()
    assert tree(out) == tree(again) and len(tree(out)) == 80


def test_the_python_api_refuses_what_it_cannot_separate_in_one_sentence(capsys, data_root, tmp_path):
    """separate() divided whatever it was given by 255: floats in [0, 1] (torch's convention) came out as other
    images, values up to 1020 and 64x64 arrays were separated, all without a word; other misuse of the API (a
    tensor, one image, no image, a flipped view, a count or batch size out of range, a split or grid index that is
    not there) ended deep inside torch, pandas or numpy."""
    from mixsep.data import load_pairs
    from mixsep.errors import MixsepError
    from mixsep.grid import grid_image
    from mixsep.metrics import evaluate
    from mixsep.separate import read_mixture, separate

    model, _, _ = load_run_model(_train(capsys, data_root, tmp_path / "runs"))
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for bad, said in ((x.astype(np.float32) / 255, "(got float32)"), (x.astype(np.int64) * 4, "(got int64)"),
                      (np.zeros((2, 64, 64, 3), np.uint8), "(got shape (2, 64, 64, 3))"), (torch.from_numpy(x), "(got Tensor)"),
                      ([x[0]], "(got list)"), (x[0], "(got shape (32, 32, 3))"), (x[:0], "(got shape (0, 32, 32, 3))"),
                      (x.transpose(0, 3, 1, 2).copy(), "(got shape (4, 3, 32, 32))")):
        with pytest.raises(MixsepError, match=re.escape(said)) as e:
            separate(model, bad)
        assert str(e.value).startswith("Mixtures must be") and "\n" not in str(e.value)
    with pytest.raises(MixsepError, match="batch_size must be a whole number of at least 1"):
        separate(model, x, batch_size=0)
    for a, b in zip(separate(model, x[:, ::-1]), separate(model, x[:, ::-1].copy())):  # a view with negative strides
        assert np.array_equal(a, b)
    Image.fromarray(x[0]).save(tmp_path / "one.png")
    assert np.array_equal(read_mixture(memoryview((tmp_path / "one.png").read_bytes())), x[0])

    pairs = load_pairs(data_root, "test")
    for call, said in ((lambda: evaluate(model, pairs, count=-5), "count must be a whole number of at least 0"),
                       (lambda: evaluate(model, pairs, count=10, batch_size=0), "batch_size must be a whole number"),
                       (lambda: load_pairs(data_root, "val"), "Unknown split 'val'; choose one of: train, test."),
                       (lambda: load_pairs(data_root, "test", size=-3), "size must be a whole number of at least 0"),
                       (lambda: load_pairs(data_root, "test", size=1.5), "(got 1.5)"),
                       (lambda: grid_image(model, pairs, [len(pairs)]), f"indices from 0 to {len(pairs) - 1} (got [48])"),
                       (lambda: grid_image(model, pairs, []), "one or more pair indices")):
        with pytest.raises(MixsepError, match=re.escape(said)):
            call()
    assert grid_image(model, pairs, [np.int64(1), 2]).size[0] > 0  # numpy's integers are indices too
    assert grid_image(model, pairs, torch.tensor([1, 2])).size == grid_image(model, pairs, (i for i in (1, 2))).size
    assert evaluate(model, pairs, count=np.int64(4), batch_size=np.int64(2)).per_image["index"].max() == 3  # counts too
    assert separate(model, x, batch_size=np.int64(3))[0].shape == (4, 32, 32)


def test_a_checkpoint_whose_weights_or_format_cannot_be_used_is_one_sentence_and_nothing_is_written(
        capsys, data_root, tmp_path):
    """NaN weights (a diverged run's) separated into black images, exit 0; complex weights lost their imaginary
    part with torch's warning, integer ones were cast without one; a checkpoint of a newer mixsep (its version) was
    read as this one's, and one of a newer PyTorch (its file format) was called corrupt, to be retrained."""
    run = _train(capsys, data_root, tmp_path / "runs")
    inputs, _ = mixture_pngs(data_root, tmp_path / "in", 1)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)

    def saved(name: str, weights=None, **change) -> Path:
        model = state["model"] if weights is None else {k: weights(v) if v.is_floating_point() else v
                                                        for k, v in state["model"].items()}
        torch.save({**state, "model": model, **change}, tmp_path / f"{name}.pt")
        return tmp_path / f"{name}.pt"

    torch.save(state["model"], tmp_path / "state_dict.pt")
    newer = tmp_path / "newer.pt"  # torch's own archive, its format record raised to 99
    with zipfile.ZipFile(run / "checkpoints" / "last.pt") as src, zipfile.ZipFile(newer, "w") as dst:
        for item in src.infolist():
            dst.writestr(item.filename, b"99\n" if item.filename.endswith("/version") else src.read(item))
    cases = [(saved("nan", lambda v: v * float("nan")), "holds weights that are not finite (body.0.weight has NaN"),
             (saved("infinite", lambda v: v / 0), "holds weights that are not finite"),
             (saved("complex", lambda v: v.to(torch.complex64)), "not real floating-point numbers (body.0.weight is "
                                                                  "complex64); pick another checkpoint or retrain."),
             (saved("integers", lambda v: v.to(torch.int64)), "not real floating-point numbers (body.0.weight is int64)"),
             (saved("version", version=99), "was written by a newer mixsep (checkpoint format 99; this one reads "
                                            "format 1); upgrade mixsep to read it."),
             (saved("version_text", version="2.0-beta"), "its format version is '2.0-beta', not a whole number"),
             (tmp_path / "state_dict.pt", "(no model and config inside); name a checkpoint from a run's checkpoints "
                                          "folder (a plain state_dict is not one)."),
             (newer, "was written by a newer PyTorch (file format 99; this torch")]
    for checkpoint, said in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["separate", str(run), str(inputs[0]), "--out", str(tmp_path / "out"),
                         "--checkpoint", str(checkpoint)]) == 2, checkpoint
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1 and err.startswith("error: "), (checkpoint, err)
        assert not (tmp_path / "out").exists() and not [w for w in caught if "Casting complex" in str(w.message)]
    # the run cannot resume from NaN weights either: refused before anything is written, its files as they were
    shutil.copy(cases[0][0], run / "checkpoints" / "last.pt")
    before = tree(run)
    assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
    assert "holds weights that are not finite" in capsys.readouterr().err
    assert tree(run) == before
    # nor from a newer mixsep's or torch's last.pt, a good file: upgrade, never "copy an older checkpoint over it"
    for newer_file, upgrade in ((cases[4][0], "mixsep"), (newer, "torch")):
        shutil.copy(newer_file, run / "checkpoints" / "last.pt")
        before = tree(run)
        assert main(["train", "--run-dir", str(run), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.rstrip().endswith(f", so the run cannot resume here and is left as it was; upgrade {upgrade} to "
                                     "resume it.") and "copying" not in err and err.count("\n") == 1, err
        assert tree(run) == before


def test_a_damaged_exif_block_gives_no_library_warning(capsys, data_root, tmp_path):
    """Pillow warned in two lines naming its own source file ("Corrupt EXIF data"), before the outputs or an
    error line; the image itself reads (its orientation, which the damage hides, is not applied)."""
    from mixsep.separate import read_mixture

    px = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(px).save(tmp_path / "bad_exif.png", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12"
                                                            b"\x01\x03\x00\x01\x00\x00\x00\x06\x00")
    with warnings.catch_warnings():  # pytest puts its own filters before mixsep's in each test: not what users run
        warnings.simplefilter("ignore")
        assert np.array_equal(read_mixture(tmp_path / "bad_exif.png"), px)
    # as a user's command meets it: a process of its own, Python's default warning filters, mixsep's on import
    shown = subprocess.run([sys.executable, "-c", "import sys; from mixsep.separate import read_mixture; "
                            "read_mixture(sys.argv[1])", str(tmp_path / "bad_exif.png")],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
