"""Fixtures shared by the test files."""

import pytest

from tcclip_jax.models import ModelConfig


def pytest_addoption(parser):
    parser.addoption(
        "--runslow", action="store_true", help="also run tests marked slow (minutes on 2 cores)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    """A TC-CLIP small enough to compile and run in seconds on a CPU.

    32px frames of 4x4 patches of 8px: N = 17 tokens, n_s = int(16 * 0.3) = 4 seeds per frame,
    4 frames x 4 seeds merged into k = 4 context tokens (two matching steps: 16 -> 8 -> 4).
    Derive variants with `tiny_config.replace(model="vifi_clip", ...)`.
    """
    return ModelConfig(
        vision_layers=2,
        text_layers=2,
        num_frames=4,
        vision_width=64,
        vision_heads=2,
        text_width=32,
        text_heads=2,
        embed_dim=32,
        image_resolution=32,
        vision_patch_size=8,
        context_tokens=4,
    )
