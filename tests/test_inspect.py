"""scripts/inspect_checkpoint.py: the text report, the plots, and its one-line errors."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from posenc import encodings, reporting, train
from scripts import inspect_checkpoint as ic
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
# One evaluation program per run: the tests need checkpoints, not a length sweep.
FAST = {"eval.max_length": 8, "eval.num_buckets": 1}
BIAS_SCHEME = next((s for s in ("alibi", "t5", "kerple") if s in encodings.names()), None)
SCHEMES = ["sinusoidal", "learned"] + ([BIAS_SCHEME] if BIAS_SCHEME else [])
PNG = b"\x89PNG\r\n\x1a\n"


def untrained_run(workdir: str, scheme: str, steps: tuple[int, ...] = (2,)) -> str:
  """A run's folder as its first checkpoints leave it (``config.json`` + checkpoints of the
  initial state), without compiling a training step: enough for the plots."""
  c = helpers.config(scheme, **FAST)
  c.workdir = workdir
  s = train.setup(c)
  state = train.init_state(s, train.root_keys(c.seed)["init"])
  os.makedirs(workdir)
  reporting.atomic_write_json(os.path.join(workdir, "config.json"), c.to_dict())
  mngr = train.checkpoint_manager(s)
  for step in steps:
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
  """A sinusoidal smoke run trained in this process (4 steps, checkpoints at 2 and 4, metrics,
  results), and untrained folders of the other schemes."""
  out = {}
  for scheme in SCHEMES:
    path = tmp_path_factory.mktemp(scheme)
    if scheme == "sinusoidal":
      helpers.run_smoke(path, scheme, **FAST)
      out[scheme] = str(path / f"{scheme}-run")
    else:
      out[scheme] = untrained_run(str(path / f"{scheme}-run"), scheme)
  return out


def _table_rows(out: str) -> dict[str, list[str]]:
  """The parameter table's rows by path: ``[shape, dtype, count, mean, std]``."""
  rows = {}
  for line in out.splitlines():
    m = re.match(r"^  (\S+)\s+(\(.*?\))\s+(\w+)\s+([\d,]+)\s+(\S+)\s+(\S+)$", line)
    if m and m.group(1) != "path":
      rows[m.group(1)] = list(m.groups()[1:])
  return rows


def test_report_lists_every_parameter_with_shape_count_and_statistics(runs, capsys):
  wd = runs["sinusoidal"]
  assert ic.main([wd]) == 0
  out = capsys.readouterr().out
  params, step = train.load_params(wd)
  assert step == 4
  flat = {"/".join(str(k.key) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  rows = _table_rows(out)
  assert set(rows) == set(flat)
  for path, value in flat.items():
    shape, dtype, count, mean, std = rows[path]
    assert shape == str(tuple(value.shape)) and dtype == str(value.dtype), path
    assert int(count.replace(",", "")) == value.size, path
    np.testing.assert_allclose(float(mean), value.mean(), rtol=1e-3, atol=1e-9, err_msg=path)
    np.testing.assert_allclose(float(std), value.std(), rtol=1e-3, atol=1e-9, err_msg=path)
  total = sum(v.size for v in flat.values())
  assert f"total: {total:,} parameters in {len(flat)} arrays" in out
  results = json.loads(open(os.path.join(wd, "results.json")).read())
  assert total == results["num_params"]
  for expected in ("checkpoints: steps 2, 4; showing step 4 (the latest)",
                   "run: sinusoidal on reverse_string (encoder; smoke preset, seed 0)",
                   "model: 1 layers, d_model 16, 2 heads, d_ff 32",
                   "training: 4 steps, batch 4",
                   "metrics: 2 rows logged, steps 2–4; last (step 4): loss ",
                   f"results: in-range score {results['in_range_score']:.3f}"):
    assert expected in out, expected


def test_step_option_reads_that_checkpoint(runs, capsys):
  wd = runs["sinusoidal"]
  report = ic.inspect(wd, step=2)
  assert "showing step 2\n" in capsys.readouterr().out
  saved, _ = train.load_params(wd, 2)
  for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(report["params"]),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)


EXPECTED_PLOTS = {
    "sinusoidal": {"position_similarity.png", "attention_train.png", "attention_long.png"},
    "learned": {"position_similarity.png", "attention_train.png", "attention_long.png"},
    BIAS_SCHEME: {"bias_vs_distance.png", "attention_train.png", "attention_long.png"},
}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_plots_are_written(runs, scheme, tmp_path, capsys):
  out_dir = tmp_path / "plots"
  assert ic.main([runs[scheme], "--plots", "--out", str(out_dir)]) == 0
  printed = capsys.readouterr().out
  written = set(os.listdir(out_dir))
  assert written == EXPECTED_PLOTS[scheme], printed
  for name in written:
    data = (out_dir / name).read_bytes()
    assert data.startswith(PNG) and len(data) > 5000, name
    assert f"plot: {out_dir / name}" in printed
  assert "note:" not in printed  # nothing that applies was skipped


def test_default_plot_folder_is_workdir_inspect(runs, tmp_path, capsys):
  wd = tmp_path / "copy"
  shutil.copytree(runs["sinusoidal"], wd)
  assert ic.main([str(wd), "--plots"]) == 0
  assert "position_similarity.png" in os.listdir(wd / "inspect")


def test_works_without_the_schemes_code_or_config(runs, tmp_path, capsys):
  """A run whose scheme is gone from this checkout, or whose config no longer fits the code."""
  cases = {
      "gone": lambda c: c["encoding"].update(name="gone_scheme"),
      "refit": lambda c: c["model"].update(d_ff=64),
  }
  for name, edit in cases.items():
    wd = tmp_path / name
    shutil.copytree(runs["learned"], wd)
    config = json.loads((wd / "config.json").read_text())
    edit(config)
    (wd / "config.json").write_text(json.dumps(config))
    assert ic.main([str(wd), "--plots"]) == 0
    out = capsys.readouterr().out
    assert len(_table_rows(out)) == 20 and "total: 4,418 parameters" in out
    notes = [l for l in out.splitlines() if l.startswith("note:")]
    reason = ("scheme 'gone_scheme' is not in this checkout" if name == "gone"
              else "the saved parameters do not fit the current code's model (layer0_ff1/bias: "
                   "(32,) saved, (64,) now)")
    assert len(notes) == 2 and reason in notes[-1], notes
    assert "attention_*.png" in notes[-1]
    # The saved table needs no code: its similarity plot is still drawn.
    assert os.listdir(wd / "inspect") == ["position_similarity.png"]
  wd = tmp_path / "no-config"
  shutil.copytree(runs["sinusoidal"], wd)
  (wd / "config.json").unlink()
  assert ic.main([str(wd), "--plots"]) == 0
  out = capsys.readouterr().out
  assert "config: config.json is missing or unreadable" in out and len(_table_rows(out)) == 19
  assert "config.json is missing, so the model cannot be rebuilt" in out


def test_errors_are_one_line_with_status_2(runs, tmp_path):
  wd = runs["sinusoidal"]
  empty = tmp_path / "empty"
  empty.mkdir()
  unfinished = tmp_path / "unfinished"
  (unfinished / "checkpoints" / "2.orbax-checkpoint-tmp").mkdir(parents=True)
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  damaged = tmp_path / "damaged"
  shutil.copytree(wd, damaged)
  for path in glob.glob(str(damaged / "checkpoints" / "4" / "**" / "d" / "*"), recursive=True):
    with open(path, "wb") as f:
      f.write(b"junk")
  cases = {
      "missing": ([str(tmp_path / "nope")], r"'.*nope' does not exist; pass a run's folder"),
      "file": ([str(a_file)], r"is a file, not a run's folder"),
      "empty": ([str(empty)], r"holds no checkpoints \(no finished step in .*\); a run saves"),
      "unfinished": ([str(unfinished)], r"holds no checkpoints .*only unfinished "
                                        r"2\.orbax-checkpoint-tmp: a run killed while saving"),
      "step": ([wd, "--step", "7"], r"^--step 7: no checkpoint at step 7 in .*; available: 2, 4$"),
      "damaged": ([str(damaged)], r"checkpoint at step 4 in .* is damaged or unreadable \(.*\); "
                                  r"other steps: 2 \(pick one with --step\)$"),
      "usage": ([], r"the following arguments are required: workdir; usage: python -m "),
      "bad_flag": ([wd, "--stpe", "2"], r"unrecognized arguments: --stpe 2; usage: "),
  }
  procs = {name: subprocess.Popen([sys.executable, "-m", "scripts.inspect_checkpoint", *args],
                                  cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
           for name, (args, _) in cases.items()}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (name, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert re.search(cases[name][1], lines[0][len("error: "):]), (name, lines[0])
    assert "Traceback" not in out, name
  assert not os.path.exists(damaged / "inspect") and os.listdir(empty) == []


def test_plots_say_where_the_pngs_go(runs, tmp_path, capsys, monkeypatch):
  """A relative WORKDIR: the folder is printed first and every PNG by its absolute path."""
  shutil.copytree(runs["sinusoidal"], tmp_path / "rel-run")
  monkeypatch.chdir(tmp_path)
  assert ic.main(["rel-run", "--plots"]) == 0
  lines = capsys.readouterr().out.splitlines()
  folder = str(tmp_path / "rel-run" / "inspect")
  start = lines.index(f"plots: writing PNGs into {folder}")
  paths = [l[len("plot: "):] for l in lines[start:] if l.startswith("plot: ")]
  assert sorted(paths) == sorted(str(tmp_path / "rel-run" / "inspect" / n)
                                 for n in EXPECTED_PLOTS["sinusoidal"])
  assert all(os.path.isabs(p) and os.path.exists(p) for p in paths)
  assert lines[-1] == f"plots: 3 PNGs in {folder}"


def test_floater_position_similarity_shows_the_solved_trajectory(tmp_path, monkeypatch):
  """Beside the sinusoidal input (the embed hook), the rows p(k·Δt) that the model adds to
  q, k and v at positions 0..N-1: as added and centred."""
  from posenc.encodings import floater
  from posenc.inspect import figures, position_similarity
  from posenc.inspect.context import Context
  wd = untrained_run(str(tmp_path / "floater-run"), "floater")
  params, _ = train.load_params(wd)
  panels = []
  monkeypatch.setattr(figures, "similarity_panel",
                      lambda ax, sim, title, marks=(): panels.append((np.asarray(sim), title)))
  with open(os.path.join(wd, "config.json")) as f:
    config = json.load(f)
  ctx = Context(wd, config, jax.tree_util.tree_map(np.asarray, params), str(tmp_path / "out"), 0)
  path = position_similarity.plot_position_similarity(ctx)
  assert (tmp_path / "out" / "position_similarity.png").read_bytes().startswith(PNG), path
  n = ctx.eval_positions()
  enc = params["encoding"]
  rows = np.asarray(floater.solve({k: enc[f"ode_{k}"] for k in ("w1", "b1", "w2", "b2")},
                                  enc["ode_p0"], n), np.float64).reshape(n, -1)
  titles = [t for _, t in panels]
  assert len(panels) == 3 and titles[0].startswith("embed hook"), titles
  assert titles[1].startswith(f"solved table at positions 0–{n - 1} (3 × 1 × 16 per row), as added")
  np.testing.assert_allclose(panels[1][0], figures.cosine(rows), atol=1e-5)
  assert "centred" in titles[2]
  np.testing.assert_allclose(panels[2][0], figures.cosine(rows - rows.mean(0)), atol=1e-4)
