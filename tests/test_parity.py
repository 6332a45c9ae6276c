"""Every fixture folder under ../shared/fixtures and ../shared/fixtures_t2i (whatever its sizes and settings)
reproduced through the parity runner's own dispatch, compared within the fixture's per-tensor tolerances."""
import pytest

from cca.parity import compute_fixture
from fixture_utils import FIXTURES, SHARED, compare_with_expected

FOLDERS = sorted(p for root in (FIXTURES, SHARED / "fixtures_t2i") for p in root.iterdir()
                 if (p / "config.json").is_file())


def test_every_fixture_kind_is_present():
    from fixture_utils import fixture_config
    kinds = {fixture_config(p)["fixture"] for p in FOLDERS}
    assert {"cca_loss", "var_vqvae", "var_transformer", "llamagen_vq", "llamagen_gpt", "llamagen_t2i_gpt"} <= kinds


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_fixture_parity(folder):
    compare_with_expected(folder, compute_fixture(folder))
