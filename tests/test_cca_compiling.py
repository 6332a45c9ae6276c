"""torch.compile of blocks: skipped with one warning where it cannot work, eager fallback on compile errors."""
import logging

import torch
from torch import nn

from cca import compiling


def test_skipped_with_a_warning_when_the_backend_is_missing(monkeypatch, caplog):
    monkeypatch.setattr(compiling, "compile_unavailable_reason", lambda device: "Triton is not installed")
    blocks = [nn.Linear(3, 3), nn.Linear(3, 3)]
    with caplog.at_level(logging.WARNING, logger="cca"):
        assert compiling.compile_blocks(blocks, torch.device("cuda")) is False
    assert "torch.compile skipped (Triton is not installed)" in caplog.text
    assert all(b._compiled_call_impl is None for b in blocks)


def test_compiled_blocks_keep_their_keys_and_outputs():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    keys = list(block.state_dict())
    x = torch.randn(2, 4)
    expected = block(x)
    assert compiling.compile_blocks([block], torch.device("cpu")) is True
    assert list(block.state_dict()) == keys
    torch.testing.assert_close(block(x), expected)


def test_reason_on_cpu_is_none_and_cuda_needs_triton(monkeypatch):
    assert compiling.compile_unavailable_reason(torch.device("cpu")) is None
    import torch.utils._triton as triton_probe
    monkeypatch.setattr(triton_probe, "has_triton", lambda: False)
    assert compiling.compile_unavailable_reason(torch.device("cuda")) == "Triton is not installed"


def test_compiling_leaves_the_process_wide_dynamo_switch_to_the_caller(monkeypatch):
    import torch._dynamo as dynamo
    monkeypatch.setattr(dynamo.config, "suppress_errors", False)
    assert compiling.compile_blocks([nn.Linear(2, 2)], torch.device("cpu")) is True
    assert dynamo.config.suppress_errors is False
    compiling.eager_fallback_on_errors()
    assert dynamo.config.suppress_errors is True
