"""evaluations/inception.py: architecture parity with pytorch-fid, TF1 resize, weight loading and its errors."""
import math
from unittest import mock

import numpy as np
import pytest
import torch

from evaluations import inception
from evaluations.inception import InceptionV3, randomize_, tf1_resize_bilinear

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def nets():
    """Our random-weight network and pytorch-fid's FID Inception, built from the same state dict (strict load
    inside pytorch-fid) with its weight download replaced by that dict."""
    import pytorch_fid.inception as pfi

    ours = randomize_(InceptionV3(resolution=299), seed=0)
    state = ours.state_dict()
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: dict(state)):
        theirs = pfi.fid_inception_v3().eval()  # torchvision Inception3 with the FID blocks, 1008-way fc
    return ours, theirs


def run_theirs(theirs, x):
    """pytorch-fid's network on normalised (B, 3, H, W) input -> pool_3, Mixed_6d 1x1 branch, biased logits."""
    captured = {}
    hooks = [theirs.avgpool.register_forward_hook(lambda m, i, o: captured.update(pool=o.flatten(1))),
             theirs.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.update(branch=o))]
    with torch.no_grad():
        logits = theirs(x)  # (B, 1008)
    for hook in hooks:
        hook.remove()
    return captured["pool"], captured["branch"], logits


def test_pool_spatial_and_logits_match_pytorch_fid_at_small_resolution(nets):
    ours, theirs = nets
    x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        got = ours.forward_normalized(x)
    pool, branch, biased_logits = run_theirs(theirs, x)
    assert pool.shape == (2, 2048) and pool.abs().mean() > 1e-2  # the random weights keep activations alive
    torch.testing.assert_close(got["pool"], pool, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["logits"] + ours.fc.bias, biased_logits, atol=1e-4, rtol=1e-4)
    spatial = branch[:, :7].permute(0, 2, 3, 1).flatten(1)  # TF's HWC order
    torch.testing.assert_close(got["spatial"], spatial, atol=1e-4, rtol=1e-4)


def test_uint8_path_at_299_matches_pytorch_fid_preprocessing(nets):
    ours, theirs = nets
    images = torch.randint(0, 256, (1, 299, 299, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = ours(images)
    # pytorch-fid feeds x in [0, 1] as 2x - 1; with x = u / 256 that equals the TF graph's (u - 128) / 128,
    # and at 299 px both resizes are the identity
    pool, branch, _ = run_theirs(theirs, 2 * (images.permute(0, 3, 1, 2).float() / 256.0) - 1)
    assert got["pool"].shape == (1, 2048) and got["spatial"].shape == (1, 7 * 17 * 17)
    assert got["logits"].shape == (1, 1008)
    torch.testing.assert_close(got["pool"], pool, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["spatial"], branch[:, :7].permute(0, 2, 3, 1).flatten(1), atol=1e-4, rtol=1e-4)


def reference_tf1_resize(img, out_h, out_w):
    """Per-pixel float64 TF1 ResizeBilinear (align_corners=False, no half-pixel centres)."""
    in_h, in_w = img.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = i * in_h / out_h
        y0, dy = math.floor(y), y - math.floor(y)
        y1 = min(y0 + 1, in_h - 1)
        for j in range(out_w):
            x = j * in_w / out_w
            x0, dx = math.floor(x), x - math.floor(x)
            x1 = min(x0 + 1, in_w - 1)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


def test_tf1_resize_matches_per_pixel_reference_up_and_down():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (2, 3, 9, 13))
    for size in ((17, 11), (5, 6), (9, 13)):
        got = tf1_resize_bilinear(torch.from_numpy(img).float(), size).double().numpy()
        for b in range(2):
            for c in range(3):
                np.testing.assert_allclose(got[b, c], reference_tf1_resize(img[b, c], *size), atol=1e-3)


def test_tf1_resize_is_asymmetric_not_half_pixel():
    row = torch.tensor([[[[10.0, 20.0]]]])  # (1, 1, 1, 2)
    got = tf1_resize_bilinear(row, (1, 4)).flatten().tolist()
    assert got == [10.0, 15.0, 20.0, 20.0]  # torch's half-pixel bilinear would give 10, 12.5, 17.5, 20


def test_grey_images_are_replicated_to_rgb():
    net = InceptionV3(resolution=75)
    grey = torch.randint(0, 256, (1, 20, 20, 1), dtype=torch.uint8)
    torch.testing.assert_close(net.preprocess(grey), net.preprocess(grey.expand(-1, -1, -1, 3)))
    with pytest.raises(ValueError, match="uint8"):
        net(grey.float())


def test_load_inception_strict_with_and_without_num_batches_tracked(tmp_path, nets):
    ours = nets[0]
    state = {k: v for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / inception.WEIGHTS_FILENAME
    torch.save(state, path)
    loaded = inception.load_inception(path, resolution=75)
    torch.testing.assert_close(loaded.Mixed_6d.branch1x1.conv.weight, ours.Mixed_6d.branch1x1.conv.weight)
    assert loaded.weights_sha256 == inception.file_sha256(path) and len(loaded.weights_sha256) == 64
    assert not loaded.weights_sha256.startswith(inception.WEIGHTS_SHA256_PREFIX)  # random, not the release
    del state["fc.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad\.pth: not pytorch-fid's FID Inception weights .*fc\.bias"):
        inception.load_inception(bad)


def test_missing_weights_give_one_line_error_naming_the_file_and_its_url(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError) as err:
        inception.find_inception_weights(None)
    message = str(err.value)
    assert "\n" not in message and inception.WEIGHTS_FILENAME in message and inception.WEIGHTS_URL in message
    assert not (tmp_path / "torch_home").exists()  # nothing was downloaded
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="CCA_INCEPTION_WEIGHTS"):
        inception.find_inception_weights(None)
    with pytest.raises(FileNotFoundError, match="--inception-weights"):
        inception.find_inception_weights(tmp_path / "missing.pth")


def test_weights_found_via_env_then_torch_hub_cache(tmp_path, monkeypatch):
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / inception.WEIGHTS_FILENAME).write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    assert inception.find_inception_weights(None) == hub / inception.WEIGHTS_FILENAME
    other = tmp_path / "mine.pth"
    other.write_bytes(b"y")
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(other))
    assert inception.find_inception_weights(None) == other


def test_folded_batchnorm_cache_follows_weight_updates_and_train_mode():
    x = torch.rand(1, 3, 75, 75, generator=torch.Generator().manual_seed(3)) * 2 - 1
    net, fresh = randomize_(InceptionV3(resolution=75, width=1 / 16), 0), randomize_(InceptionV3(75, 1 / 16), 1)
    with torch.no_grad():
        before = net.forward_normalized(x)["pool"]
        randomize_(net, 1)  # in-place updates: the folded weights must be rebuilt
        after, expected = net.forward_normalized(x)["pool"], fresh.forward_normalized(x)["pool"]
        net.train()  # unfolded BatchNorm path (batch statistics), no stale cache involved
        trained = net.forward_normalized(x.repeat(2, 1, 1, 1))["pool"]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
    assert trained.shape == (2, 128)
