"""plots/accuracy.png: the chance line of the task (posenc.results.write)."""

from __future__ import annotations

import pytest

from posenc import reporting, results, tasks, train
from tests import helpers

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("task,chance", [("reverse_string", 1 / 2), ("bucket_sort", 1 / 5),
                                         ("parity_check", 1 / 2), ("stack_manipulation", 1 / 3)])
def test_chance_is_one_over_the_output_vocabulary(task, chance):
  assert results.chance_level(tasks.get(task, helpers.config("sinusoidal"))) == pytest.approx(chance)


def test_accuracy_plot_draws_a_chance_line(tmp_path, monkeypatch):
  c = helpers.config("sinusoidal", **{"task.name": "bucket_sort", "plots": True})
  c.workdir = str(tmp_path / "run")
  s = train.setup(c)
  tmp_path.joinpath("run").mkdir()
  res = {"per_length": {"1": 1.0, "2": 0.9, "3": 0.4}, "train_range": [1, 2]}
  drawn = {}
  real = reporting.plot_accuracy
  monkeypatch.setattr(reporting, "plot_accuracy",
                      lambda path, per_length, train_range, title, **kw: drawn.update(kw) or real(
                          path, per_length, train_range, title, **kw))
  results.write(s, res, [res])
  assert drawn["chance"] == pytest.approx(0.2) and drawn["extra"] is None
  assert (tmp_path / "run" / "plots" / "accuracy.png").read_bytes().startswith(PNG)
