"""Command lines: --help, --show_config and its table of field meanings, the typo hint, plurals."""

from __future__ import annotations

import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

from experiments import cli, sweeping
from posenc import config_fields, encodings, evaluation
from posenc.sweeps import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ("default", "smoke", "paper")
RUN_FLAGS = ("--config", "--workdir", "--[no]distributed", "--sweep_index", "--[no]show_config")
SWEEP_FLAGS = ("--config", "--root", "--[no]count", "--[no]print_commands", "--[no]list",
               "--shard", "--compilation_cache", "--[no]stop_on_error", "--[no]show_config")


def _cli(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


# ----------------------------------------------------------------------------- --help


@pytest.mark.parametrize("prog,flag_names,example", [
    ("experiments.run", RUN_FLAGS, "configs/rope.py:smoke"),
    ("experiments.sweep", SWEEP_FLAGS, "configs/sweeps/chomsky.py:smoke"),
])
@pytest.mark.parametrize("help_flag", ["--help", "-h"])
def test_help_prints_the_flags_and_how_to_list_the_config_fields(prog, flag_names, example,
                                                                  help_flag):
  r = _cli(prog, help_flag)
  assert r.returncode == 0, r.stderr
  assert r.stderr == ""
  out = r.stdout
  assert out.startswith(f"usage: python -m {prog} --config=FILE[:PRESET]"), out[:200]
  listed = re.findall(r"^  (--\S+?):", out, re.M)
  assert sorted(listed) == sorted(flag_names), listed  # its own flags, each once, no absl ones
  assert f"python -m {prog} --config={example} --show_config" in out
  assert "--config.<field>=<value>" in out


def test_helpfull_adds_absl_flags_and_help_wins_over_other_flags():
  r = _cli("experiments.run", "--config=configs/rope.py:smoke", "--config.train.stpes=1",
           "--helpfull")
  assert r.returncode == 0, r.stderr
  assert "--[no]show_config:" in r.stdout and "--verbosity" in r.stdout


# ----------------------------------------------------------------------------- --show_config


def _rows(out: str) -> dict[str, tuple[str, str]]:
  rows = {}
  for line in out.splitlines()[1:]:
    key, value, meaning = re.match(r"^  (\S+)\s+(\S+)\s+(.*)$", line).groups()
    rows[key] = (value, meaning)
  return rows


def test_show_config_lists_every_field_with_its_value_and_meaning_and_runs_nothing(tmp_path):
  workdir = tmp_path / "never"
  r = _cli("experiments.run", "--config=configs/rope.py:smoke", "--show_config",
           "--config.train.steps=7", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[0].startswith("configs/rope.py:smoke: every field")
  rows = _rows(r.stdout)
  from configs import rope
  assert set(rows) == set(flatten(rope.get_config("smoke")))
  assert rows["train.steps"] == ("7", config_fields.FIELDS["train.steps"])
  assert rows["encoding.scaling"] == ("none", config_fields.ENCODING["rope"]["scaling"])
  assert rows["workdir"][0] == str(workdir)
  assert config_fields.MISSING not in r.stdout
  assert not workdir.exists()


def test_show_config_of_a_sweep_lists_its_block_and_shared_settings():
  r = _cli("experiments.sweep", "--config=configs/sweeps/chomsky.py:smoke", "--show_config",
           "--config.sweep.seeds=3")
  assert r.returncode == 0, r.stderr
  rows = _rows(r.stdout)
  assert rows["sweep.seeds"] == ("3", config_fields.FIELDS["sweep.seeds"])
  shared = [k for k in rows if k.startswith("sweep.shared.")]
  assert shared and all(rows[k][1].startswith("every point: ") for k in shared)
  assert config_fields.MISSING not in r.stdout


def _config_files() -> list[str]:
  paths = glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
  return sorted(os.path.relpath(p, ROOT) for p in paths if not p.endswith("__init__.py"))


def _trees():
  """(file:preset, config) for every config file under configs/ at every preset it has."""
  for path in _config_files():
    module = importlib.import_module(path[:-3].replace(os.sep, "."))
    for preset in PRESETS:
      try:
        config = module.get_config(None if preset == "default" else preset)
      except ValueError as e:  # a file without this preset (the atlas has no paper preset)
        assert "preset" in str(e), (path, preset, e)
        continue
      yield f"{path}:{preset}", config


def test_every_field_of_every_config_and_every_scheme_option_has_a_meaning():
  trees = list(_trees())
  assert len(trees) > 3 * 25
  missing, seen = [], set()
  for where, config in trees:
    scheme = config.encoding.name
    for key, _ in config_fields.flat_items(config):
      seen.add(key)
      if config_fields.description(key, scheme) is None:
        missing.append(f"{where}: {key}")
  for scheme in encodings.names():
    for option in encodings.get(scheme).options():
      if config_fields.description(f"encoding.{option}", scheme) is None:
        missing.append(f"scheme {scheme}: encoding.{option}")
  assert not missing, "fields without a line in posenc/config_fields.py:\n" + "\n".join(missing)
  # ... and no line describes a field that is gone.
  stale = [k for k in config_fields.FIELDS if k not in seen]
  stale += [f"{s}.{o}" for s, opts in config_fields.ENCODING.items() for o in opts
            if s not in encodings.names() or o not in encodings.get(s).options()]
  assert not stale, f"lines in posenc/config_fields.py for fields that no longer exist: {stale}"


def test_a_field_without_a_meaning_is_shown_as_missing_not_dropped():
  import ml_collections
  c = ml_collections.ConfigDict({"seed": 1, "encoding": {"name": "rope", "made_up": 2},
                                 "sweep": {"shared": {"train": {"steps": 3}}}})
  rows = {k: (v, m) for k, v, m in config_fields.table(c)}
  assert rows["encoding.made_up"] == ("2", config_fields.MISSING)
  assert rows["seed"] == ("1", config_fields.FIELDS["seed"])
  assert rows["sweep.shared.train.steps"][1] == "every point: " + config_fields.FIELDS["train.steps"]


# ----------------------------------------------------------------------------- the typo hint


def test_a_misspelt_field_names_the_flag_and_its_likely_spelling_without_stray_quotes():
  r = _cli("experiments.run", "--config=configs/rope.py:smoke", "--config.train.stpes=5")
  assert r.returncode == 2
  assert r.stderr == ("error: --config.train.stpes: no such config field; "
                      "did you mean --config.train.steps?\n")


@pytest.mark.parametrize("exc,argv,line", [
    (AttributeError(KeyError('\'stpes\'\nDid you mean "steps" instead of "stpes"?')),
     ["--config.train.stpes=5"],
     "--config.train.stpes: no such config field; did you mean --config.train.steps?"),
    (KeyError('\'trian\'\nDid you mean "train" instead of "trian"?'), ["--config.trian.steps=5"],
     "--config.trian.steps: no such config field; did you mean --config.train.steps?"),
    (AttributeError(KeyError("'zzzzz'")), ["--config.zzzzz=3"],
     "--config.zzzzz: no such config field"),
    (KeyError("Attribute <class 'int'>.x does not exist and the type does not support indexing. "
              "Attempting to lookup: train.steps.x"), ["--config.train.steps.x=5"],
     "--config.train.steps.x: no such config field (train.steps is a value of type int, not a "
     "block of fields)"),
])
def test_no_such_field_lines(exc, argv, line):
  assert cli._no_such_field(exc, ["prog", "--config=c.py", *argv]) == line


# ----------------------------------------------------------------------------- plurals


def test_counts_say_one_point_not_one_points():
  assert sweeping.count(1, "point") == "1 point"
  assert sweeping.count(0, "point") == "0 points"
  one = sweeping.summary({"ran": [0], "skipped": [], "elsewhere": [], "failed": []}, 1, 1)
  assert one == "sweep: 1 point: 1 run, 0 skipped (finished), 0 failed"
  failed = sweeping.summary({"ran": [], "skipped": [], "elsewhere": [], "failed": [3]}, 2, 8, (1, 4))
  assert failed == "sweep: 2 points (shard 1/4 of 8): 0 run, 0 skipped (finished), 1 failed: index 3"


def test_evaluation_dispatch_line_singular_forms():
  assert evaluation.dispatch_line([7], 8, 1, 4, 0.25) == (
      "eval: length 7 (padded to 8, 1 row per pass) dispatched, 0.2s")
  assert evaluation.dispatch_line([1, 2, 3], 3, 2, 4, 1.0) == (
      "eval: lengths 1–3 (padded to 3, 2 rows per pass) dispatched, 1.0s")
  assert evaluation.dispatch_line([1, 2], 2, 4, 4, 1.0) == "eval: lengths 1–2 (padded to 2) dispatched, 1.0s"


def test_sweep_index_out_of_range_of_a_one_point_sweep_says_one_point():
  r = _cli("experiments.run", "--config=configs/sweeps/chomsky.py:smoke", "--sweep_index=4",
           "--config.sweep.schemes=rope", "--config.sweep.tasks=parity_check", "--show_config")
  assert r.returncode == 2
  assert r.stderr == ("error: --sweep_index: 4 is out of range: this sweep has 1 point, 0..0\n")
