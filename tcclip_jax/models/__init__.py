"""CLIP, ViFi-CLIP and TC-CLIP as Flax linen modules."""

from tcclip_jax.models.config import ARCH_NAMES, ModelConfig, arch_config
from tcclip_jax.models.video_clip import VideoCLIP

__all__ = ["ARCH_NAMES", "ModelConfig", "VideoCLIP", "arch_config"]
