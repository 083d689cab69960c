from __future__ import annotations

import pytest
import torch
from conftest import needs_hooked, on_device

import steerlens as sl


@pytest.mark.integration
@pytest.mark.slow
@needs_hooked
def test_embedded_hooked_backend_matches_bridge(embedded):
    hooked = sl.load_model(backend="hooked")
    ids = sl.encode_prompts(embedded, ["What is the capital of France?"])[0][None]
    with torch.no_grad():
        ids = on_device(embedded, ids)
        a, b = embedded(ids), hooked(ids)
    assert (a[0, -1].argmax() == b[0, -1].argmax()).item()
    torch.testing.assert_close(a, b, rtol=0, atol=5e-3)
