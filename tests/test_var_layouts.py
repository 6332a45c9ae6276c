"""Released checkpoint layouts: every key, shape and dtype of var_d16/20/24/30 and the VQVAE, built on meta;
strict loading of real files, the errors users see for the wrong file, and train/eval behaviour."""
from __future__ import annotations

import json

import pytest
import torch

from cca.checkpoint import CheckpointError
from fixture_utils import LAYOUTS
from VAR import VAR, VQVAE, build_tiny_vae_var, build_vae_var, load_vae_weights, load_var_weights
from VAR.build import build_vae
from VAR.var import without_kernel_switches


def layout(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def assert_same_layout(model: torch.nn.Module, spec: dict) -> None:
    ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    theirs = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in spec["state_dict"]}
    assert sorted(set(theirs) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(theirs)) == [], "unexpected keys"
    bad = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert bad == {}
    assert len(ours) == spec["num_state_dict_entries"]
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]


@pytest.mark.parametrize("depth", [16, 20, 24, 30])
def test_var_layout_matches_release(depth):
    spec = layout(f"var_d{depth}")
    args = without_kernel_switches(spec["built_with"]["args"])
    assert args.pop("depth") == depth
    vae, var = build_vae_var(depth=depth, **args)                 # device "meta" comes from the spec
    assert next(var.parameters()).is_meta
    assert_same_layout(var, spec)
    derived = spec["built_with"]["derived"]
    assert (var.C, var.num_heads, var.L, var.first_l) == (derived["embed_dim"], derived["num_heads"],
                                                          derived["L"], derived["first_l"])
    assert var.drop_path_rate == pytest.approx(derived["drop_path_rate"])


def test_vae_layout_matches_release():
    spec = layout("vae_ch160v4096z32")
    a = spec["built_with"]["args"]
    vae = build_vae(V=a["V"], Cvae=a["Cvae"], ch=a["ch"], share_quant_resi=a["share_quant_resi"],
                    patch_nums=a["patch_nums"], device="meta")
    assert_same_layout(vae, spec)
    # which phi convolution each of the 10 scales uses, as documented for the release
    from VAR.quant import phi_index
    assert [phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_shared_aln_variant_builds():
    _, var = build_vae_var(device="meta", depth=16, shared_aln=True)
    keys = var.state_dict().keys()
    assert "shared_ada_lin.1.weight" in keys and "blocks.0.ada_gss" in keys and "blocks.0.ada_lin.1.weight" not in keys


def test_meta_build_loads_saved_checkpoint_by_assignment(tmp_path):
    vae, var = build_tiny_vae_var(seed=3)
    torch.save(var.state_dict(), tmp_path / "var.pth")
    torch.save(vae.state_dict(), tmp_path / "vae.pth")
    with torch.device("meta"):
        vae2 = VQVAE(vocab_size=64, z_channels=8, ch=32, v_patch_nums=(1, 2, 3, 4), ch_mult=(1, 2), num_res_blocks=1)
        var2 = VAR(vae2, num_classes=10, depth=2, embed_dim=64, num_heads=4, attn_l2_norm=True, cond_drop_rate=0.0,
                   patch_nums=(1, 2, 3, 4))
    load_vae_weights(vae2, tmp_path / "vae.pth")
    load_var_weights(var2.eval(), tmp_path / "var.pth")
    assert not any(t.is_meta for t in list(var2.state_dict().values()) + list(vae2.state_dict().values()))
    labels = torch.tensor([1, 4])
    x = vae.quantize.idxBl_to_var_input(vae.img_to_idxBl(torch.rand(2, 3, 8, 8) * 2 - 1))
    torch.testing.assert_close(var2(labels, x), var(labels, x))


def test_wrong_depth_checkpoint_names_the_depth(tmp_path):
    _, var3 = build_tiny_vae_var(depth=3)
    torch.save(var3.state_dict(), tmp_path / "var_d3.pth")
    _, var2 = build_tiny_vae_var(depth=2)
    with pytest.raises(CheckpointError, match=r"looks like depth 3 \(width 64.*; pass --depth 3$"):
        load_var_weights(var2, tmp_path / "var_d3.pth")


def test_vae_checkpoint_that_does_not_fit_names_the_flags(tmp_path):
    vae, _ = build_tiny_vae_var()
    torch.save(vae.state_dict(), tmp_path / "vae.pth")
    other = build_vae(V=128, Cvae=8, ch=32, patch_nums=(1, 2, 3, 4), ch_mult=(1, 2), num_res_blocks=1)
    with pytest.raises(CheckpointError, match=r"--vae_ckpt .*--vae_ch 32 --vae_V 64 --vae_Cvae 8"):
        load_vae_weights(other, tmp_path / "vae.pth")


def test_corrupt_and_missing_checkpoints_are_one_line_errors(tmp_path):
    _, var = build_tiny_vae_var()
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    for path in (tmp_path / "bad.pth", tmp_path / "absent.pth"):
        with pytest.raises(CheckpointError) as err:
            load_var_weights(var, path)
        assert "\n" not in str(err.value) and "--ckpt_path" in str(err.value)


def test_vae_usage_statistics_of_another_scale_count_are_not_an_error(tmp_path):
    vae, _ = build_tiny_vae_var(patch_nums=(1, 2, 4))
    sd = vae.state_dict()
    sd["quantize.ema_vocab_hit_SV"] = torch.ones(10, 64)
    torch.save(sd, tmp_path / "vae.pth")
    fresh = build_vae(V=64, Cvae=8, ch=32, patch_nums=(1, 2, 4), ch_mult=(1, 2), num_res_blocks=1)
    load_vae_weights(fresh, tmp_path / "vae.pth")
    torch.testing.assert_close(fresh.quantize.embedding.weight, vae.quantize.embedding.weight)


def test_label_dropout_only_in_training_mode():
    vae, var = build_tiny_vae_var(seed=2)
    var.cond_drop_rate = 1.0   # drop every label when it applies
    x = vae.quantize.idxBl_to_var_input(vae.img_to_idxBl(torch.rand(2, 3, 8, 8) * 2 - 1))
    labels, null = torch.tensor([1, 4]), torch.tensor([10, 10])
    with torch.no_grad():
        cond, uncond = var.eval()(labels, x), var(null, x)
        assert not torch.allclose(cond, uncond)
        torch.testing.assert_close(var.train()(labels, x), uncond)   # drop_path_rate is 0 in the tiny model
