"""End-to-end smoke runs of the foundation schemes in both model modes."""

import pytest

from tests import helpers


@pytest.mark.parametrize("scheme,causal", [("sinusoidal", False), ("sinusoidal", True),
                                           ("learned", False), ("learned", True), ("none", True)])
def test_smoke_run(tmp_path, scheme, causal):
  results = helpers.run_smoke(tmp_path, scheme, **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
