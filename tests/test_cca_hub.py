"""cca.hub: release names resolve through a pre-filled, offline Hugging Face cache; an uncached name is a one-line
error naming the file and the command that fetches it; sha256 provenance against the published values."""
from __future__ import annotations

import hashlib

import pytest
import torch

import VAR_sample
from cca import hub
from cca.checkpoint import CheckpointError, load_state_dict_file, require_checkpoint
from tiny_hub import FAKE_MAIN_COMMIT, TINY_VAR, cache_file, offline_hub, tiny_hub  # noqa: F401 - fixtures


def test_registry_names_the_released_files():
    assert {f"var_d{d}" for d in (16, 20, 24, 30, 36)} <= set(hub.RELEASES)
    assert {f"c2i_{s}_384" for s in ("B", "L", "XL", "XXL", "3B")} <= set(hub.RELEASES)
    assert hub.TOKENIZERS == {"var": "vae_ch160v4096z32", "llamagen": "vq_ds16_c2i"}
    cca_var = hub.RELEASES["VAR_d24_CCA"]
    assert (cca_var.repo, cca_var.filename) == ("ChenDRAG/CCA_VAR", "CCA_VAR_Guidance_Free/VAR_d24_CCA.pth")
    free, cfg = hub.RELEASES["c2i_XL_384_CCA_0005000"], hub.RELEASES["c2i_XL_384_CCA_0005000_w_CFG"]
    assert free.filename == "CCA_LlamaGen_Guidance_Free/c2i_XL_384_CCA_0005000.pt"
    assert cfg.filename == "CCA_LlamaGen_w_CFG/c2i_XL_384_CCA_0005000.pt"
    for r in hub.RELEASES.values():
        assert r.sha256 is None or (len(r.sha256) == 64 and int(r.sha256, 16) >= 0)
        assert r.pinned == (len(r.revision) == 40)
    assert hub.RELEASES["var_d36"].sampler_args == ("--depth", "36", "--pn", "512", "--saln", "1")


def test_names_resolve_through_the_offline_cache(offline_hub, monkeypatch, tmp_path):
    expected = cache_file(offline_hub["cache"], "var_d16")
    assert hub.resolve("var_d16") == expected
    assert set(load_state_dict_file("var_d16")) == set(torch.load(expected, weights_only=True))
    unpinned = hub.resolve("VAR_d16_CCA")                       # revision "main" through refs/main
    assert unpinned.parts[-3] == FAKE_MAIN_COMMIT and unpinned.name == "VAR_d16_CCA.pth"
    require_checkpoint("var_d16", "--ckpt_path")                  # cached: no error
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var_d16").write_bytes(b"local")                  # an existing local file wins over the name
    assert hub.release_of("var_d16") is None and hub.resolve("var_d16").read_bytes() == b"local"


def test_uncached_name_offline_is_one_line_naming_the_fetch_command(offline_hub):
    with pytest.raises(CheckpointError) as err:
        require_checkpoint("var_d20", "--ckpt_path")
    msg = str(err.value)
    r = hub.RELEASES["var_d20"]
    assert "\n" not in msg and msg.startswith("--ckpt_path var_d20: ")
    assert "python -m cca.hub fetch var_d20" in msg
    assert f"hf download FoundationVision/var var_d20.pth --revision {r.revision}" in msg
    with pytest.raises(CheckpointError, match="python -m cca.hub fetch c2i_L_384"):
        load_state_dict_file("c2i_L_384")
    with pytest.raises(SystemExit) as err:                        # the entry scripts stop before any work
        VAR_sample.main([*TINY_VAR, "--ckpt_path", "var_d20", "--sample_dir", str(offline_hub["cache"].parent)])
    assert "cca.hub fetch var_d20" in str(err.value) and "\n" not in str(err.value)


def test_tokenizer_defaults_are_the_released_names():
    import LLamaGen_sample_ddp
    assert VAR_sample.build_parser().parse_args(["--ckpt_path", "x"]).vae_ckpt == "vae_ch160v4096z32"
    assert LLamaGen_sample_ddp.build_parser().parse_args(["--gpt-ckpt", "g"]).vq_ckpt == "vq_ds16_c2i"


def test_provenance_records_sha256_and_the_published_comparison(offline_hub):
    record = hub.provenance("var_d16")
    data = cache_file(offline_hub["cache"], "var_d16").read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    assert record["published_sha256"] == hub.RELEASES["var_d16"].sha256 and record["matches_published"] is False
    assert "differs from the published" in hub.mismatch_warning(record)
    assert hub.provenance("VAR_d16_CCA")["matches_published"] is None     # nothing published to compare with


def test_cli_path_verify_fetch_and_list(offline_hub, capsys):
    assert hub.main(["path", "var_d16"]) == 0
    assert capsys.readouterr().out.strip() == str(cache_file(offline_hub["cache"], "var_d16"))
    assert hub.main(["verify", "var_d16"]) == 1                  # the tiny file is not the released one
    assert "DIFFERS from the published sha256" in capsys.readouterr().out
    assert hub.main(["verify", "VAR_d16_CCA"]) == 0
    assert "(no published sha256)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        hub.main(["fetch", "var_d24"])                           # offline: nothing to download from
    assert "\n" not in str(err.value) and "var_d24" in str(err.value) and "failed" in str(err.value)
    hub.main(["list"])
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(hub.RELEASES) and any("VAR_d16_CCA" in line and "(unpinned)" in line
                                                    for line in listed)
    with pytest.raises(SystemExit):
        hub.main(["path", "var_d17"])


def test_file_sha256_is_remembered_until_the_file_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    assert hub.file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two!")                                     # new size and mtime: hashed again
    assert hub.file_sha256(path) == hashlib.sha256(b"two!").hexdigest()
