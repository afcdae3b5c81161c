"""End-to-end smoke runs of the foundation schemes in both model modes."""

import pytest

from tests import helpers


@pytest.mark.parametrize("scheme,causal", [("sinusoidal", False), ("sinusoidal", True),
                                           ("learned", False), ("learned", True), ("none", True)])
def test_smoke_run(tmp_path, scheme, causal):
  results = helpers.run_smoke(tmp_path, scheme, **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
  # the smoke preset draws no plots (config.plots); everything else is written
  wd = tmp_path / f"{scheme}-run"
  assert (wd / "DONE").exists() and not (wd / "plots").exists()


def test_plots_do_not_change_the_config_hash():
  from posenc import setup
  on, off = helpers.config("sinusoidal", plots=True), helpers.config("sinusoidal", plots=False)
  assert setup.config_hash(on) == setup.config_hash(off)
  assert setup._config_diff(on.to_dict(), off.to_dict()) == []  # a run may resume with either
