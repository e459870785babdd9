"""The command line (``python -m ditfa_core`` / ``ditfa``): input checks, progress, files, Ctrl-C.

End-to-end runs use a random-weight DiT of the ``mnist`` preset at 2 steps (seconds on one core) with the
committed classifier, so they test the plumbing, not the reference model's quality.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pytest
import torch

from ditfa_core import cli
from ditfa_core.plan import Cost, Plan
from ditfa_core.reference import DiT, DiTConfig, load_classifier, weights_available
from ditfa_core.reference.images import grid_image, to_uint8
from ditfa_core.reference.quality import EvalSet, sample_set
from ditfa_core.strategies import Strategy

needs_weights = pytest.mark.skipif(not weights_available(), reason="reference weights not in this checkout")

BAD_INPUTS = [
    (["calibrate", "--steps", "0"], "--steps", "[1, 10000]"),
    (["calibrate", "--steps", "-3"], "--steps", "[1, 10000]"),
    (["calibrate", "--steps", "100000"], "--steps", "[1, 10000]"),
    (["calibrate", "--delta", "-1"], "--delta", "(0, 1]"),
    (["calibrate", "--delta", "nan"], "--delta", "(0, 1]"),
    (["calibrate", "--fraction", "0"], "--fraction", "(0, 1]"),
    (["calibrate", "--fraction", "5"], "--fraction", "(0, 1]"),
    (["calibrate", "--calib-samples", "0"], "--calib-samples", "[1, 256]"),
    (["calibrate", "--eval-samples", "-5"], "--eval-samples", "[0, 20000]"),
    (["calibrate", "--cfg", "inf"], "--cfg", "[0, 30]"),
    (["calibrate", "--seed", "x"], "--seed", "integer"),
    (["calibrate", "--out", "plan.png"], "--out", ".json"),
    (["calibrate", "--out", "missing-folder/plan.json"], "--out", "does not exist"),
    (["sample", "--per-class", "0", "--out", "s.npz"], "--per-class", "[1, 1000]"),
    (["sample", "--per-class", "2", "--out", "s.png"], "--out", ".npz"),
    (["sample", "--per-class", "2", "--out", "s.npz", "--plan", "nope.json"], "--plan", "no such file"),
    (["table", "--eval-samples", "1"], "--eval-samples", "[2, 20000]"),
    (["table", "--headwise", "D7"], "--headwise", "D6"),
    (["calibrate", "--eval-samples", "1"], "--eval-samples", "at least 2"),
]


@needs_weights
@pytest.mark.parametrize(("argv", "option", "allowed"), BAD_INPUTS, ids=[" ".join(a) for a, *_ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_option_and_range(argv, option, allowed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_reference", _refuse_work)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert option in err and allowed in err, err
    assert list(tmp_path.iterdir()) == []


@needs_weights
def test_unwritable_out_folder_is_refused_before_work(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "load_reference", _refuse_work)
    target = tmp_path / "taken"
    (target.with_suffix(".png")).mkdir()   # the PNG beside the plan cannot be written
    with pytest.raises(SystemExit) as exit_:
        cli.main(["calibrate", "--out", str(target.with_suffix(".json"))])
    assert exit_.value.code == 2 and "cannot be overwritten" in capsys.readouterr().err


def test_progress_reports_remaining_time_in_quarters_when_not_a_tty():
    stream = io.StringIO()
    progress = cli.Progress(2, 4, "raw samples", total=8, stream=stream)
    for _batch in range(2):
        for step in range(1, 5):
            progress(step, 4)
        progress.batch_done(4)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert [line.split("] ")[-1].split()[0] for line in lines] == ["1/8", "2/8", "4/8", "6/8", "8/8"]
    assert all(line.startswith("[2/4] raw samples") and "left" in line for line in lines)


def test_images_are_mnist_uint8_and_gridded_by_class():
    images = torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1, 1).expand(3, 1, 4, 4)
    pixels = to_uint8(images)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 4, 4)
    assert [int(p[0, 0]) for p in pixels] == [0, 128, 255]   # 0 = background, 255 = ink
    grid = grid_image(pixels, np.array([1, 0, 1]), scale=1)
    assert grid.shape == (2 * (4 + 2), 2 * (4 + 2))         # classes 0 and 1 as rows, 2 columns
    assert grid[0, 0] == 128 and grid[6, 0] == 0 and grid[6, 6] == 255


def random_reference(monkeypatch) -> DiT:
    """A random-weight ``mnist``-preset DiT (attention matters: no zero init) and the committed classifier."""
    torch.manual_seed(0)
    model = DiT(dataclasses.replace(DiTConfig.preset("mnist"), zero_init=False)).eval()
    monkeypatch.setattr(cli, "load_reference", lambda: (model, load_classifier()))
    return model


def test_batches_do_not_change_images():
    model = DiT(dataclasses.replace(DiTConfig.preset("mnist"), depth=1, zero_init=False)).eval()
    evalset = EvalSet(5, steps=2, seed=3)
    whole = sample_set(model, evalset)
    split = sample_set(model, evalset, batch=2)
    torch.testing.assert_close(whole.images, split.images, rtol=1e-5, atol=1e-5)


@needs_weights
def test_calibrate_writes_plan_and_png_with_the_umask_and_prints_the_table(tmp_path, monkeypatch, capsys):
    random_reference(monkeypatch)
    out = tmp_path / "plan.json"
    old = os.umask(0o022)
    try:
        code = cli.main(["calibrate", "--steps", "2", "--calib-samples", "2", "--eval-samples", "3",
                         "--out", str(out)])
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    assert code == 0
    assert Plan.load(out).steps == 2 and out.with_suffix(".png").stat().st_size > 0
    assert {p.name for p in tmp_path.iterdir()} == {"plan.json", "plan.png"}   # no temp files left
    assert out.stat().st_mode & 0o777 == 0o644 == out.with_suffix(".png").stat().st_mode & 0o777
    assert all(f"[{i}/4]" in captured.err for i in range(1, 5))
    assert "| raw | 100.0%" in captured.out and "admits" in captured.out


@needs_weights
def test_table_headwise_twins_are_compared_with_their_layerwise_plans(tmp_path, monkeypatch, capsys):
    random_reference(monkeypatch)
    out = tmp_path / "table.json"
    code = cli.main(["table", "--steps", "2", "--calib-samples", "2", "--eval-samples", "4",
                     "--modes", "fast", "--levels", "D2", "--alone", "0", "--headwise", "D2", "D2",
                     "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert "[4/4]" in captured.err and "[5/" not in captured.err   # raw, D2 search + samples, twin samples
    assert "| config | baseline | attention FLOPs (config / baseline) |" in captured.out
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"][:23] for r in rows] == ["raw", "fast D2 (δ=0.050)", "head-wise at fast D2's "]
    assert rows[2]["versus"]["baseline"] == "fast D2 (δ=0.050)" and rows[1]["versus"] is None
    assert rows[2]["versus"]["baseline_flops"] == rows[1]["flops"]


@needs_weights
def test_sample_is_mnist_style_and_repeatable(tmp_path, monkeypatch, capsys):
    random_reference(monkeypatch)
    runs = []
    for name in ("a.npz", "b.npz"):
        assert cli.main(["sample", "--per-class", "2", "--steps", "2", "--seed", "5",
                         "--out", str(tmp_path / name)]) == 0
        runs.append(np.load(tmp_path / name))
    a, b = runs
    assert a["images"].dtype == np.uint8 and a["images"].shape == (20, 32, 32)
    assert a["labels"].tolist() == list(range(10)) * 2
    np.testing.assert_array_equal(a["images"], b["images"])
    assert (tmp_path / "a.png").exists()


@needs_weights
def test_sample_refuses_a_plan_for_another_model(tmp_path, monkeypatch, capsys):
    random_reference(monkeypatch)   # 6 layers
    other = DiT(dataclasses.replace(DiTConfig.preset("mnist"), depth=1))
    grid = ((Strategy.FULL,), (Strategy.AST,))
    Plan(cli.model_info(other), grid, Cost.estimate(grid, 0.125)).save(tmp_path / "other.json")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["sample", "--per-class", "1", "--out", str(tmp_path / "s.npz"),
                  "--plan", str(tmp_path / "other.json")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--plan" in err and "layers" in err and err.count("\n") == 1


@needs_weights
def test_ctrl_c_exits_130_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    random_reference(monkeypatch)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "calibrate", interrupted)
    assert cli.main(["calibrate", "--out", str(tmp_path / "p.json")]) == cli.EXIT_INTERRUPTED
    assert "interrupted" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def _refuse_work(*args, **kwargs):
    raise AssertionError("work started before the input was checked")


def test_heatmap_states_shares_window_and_cost(tmp_path):
    from PIL import Image

    from ditfa_core import heatmap
    from ditfa_core.plan import Calibration, ModelInfo, WindowSetting

    grid = ((Strategy.FULL, Strategy.FULL), (Strategy.AST, Strategy.WA_RS))
    calibration = Calibration(steps=2, sampler="euler", scheduler="linear", cfg=4.0, delta=0.1,
                              window=WindowSetting("band", 0.125), search="fast", seconds=1.0,
                              generations=2.0, created="2026-01-01T00:00:00+00:00", tool_version="test")
    plan = Plan(ModelInfo("dit", 2, 2, 16, 0, (1, 4, 4)), grid, Cost.estimate(grid, 0.25), calibration)
    shares = heatmap.shares(plan)
    assert shares[Strategy.FULL] == 0.5 and shares[Strategy.AST] == 0.25 and sum(shares.values()) == 1.0
    text = "\n".join(heatmap.caption(plan))
    assert "2.00 model evaluations per sampling step" in text
    assert "window band 0.125 of the tokens; admits 25.0% of query-key pairs" in text
    heatmap.render_png(plan, tmp_path / "plan.png")
    assert Image.open(tmp_path / "plan.png").size[0] >= 440
    assert [p.name for p in tmp_path.iterdir()] == ["plan.png"]   # no temporary file left
