"""Every fixture folder under ../shared/fixtures, ../shared/fixtures_recipe and ../shared/fixtures_t2i (whatever its
sizes and settings) reproduced through the parity runner's own dispatch, compared within the fixture's per-tensor
tolerances. The training-step fixtures run the entry scripts' parsers, configurations and the shared trainer."""
import pytest

from cca.parity import compute_fixture
from fixture_utils import FIXTURES, FIXTURES_RECIPE, SHARED, compare_with_expected, fixture_config

FOLDERS = sorted(p for root in (FIXTURES, FIXTURES_RECIPE, SHARED / "fixtures_t2i") for p in root.iterdir()
                 if (p / "config.json").is_file())


def test_every_fixture_kind_is_present():
    kinds = {fixture_config(p)["fixture"] for p in FOLDERS}
    assert {"cca_loss", "var_vqvae", "var_transformer", "llamagen_vq", "llamagen_gpt", "llamagen_t2i_gpt",
            "cca_step_var", "cca_step_llamagen"} <= kinds


@pytest.mark.parametrize("folder", FOLDERS, ids=[f"{p.parent.name}/{p.name}" for p in FOLDERS])
def test_fixture_parity(folder):
    compare_with_expected(folder, compute_fixture(folder))
