"""Loading official head checkpoints written before the pixel decoder became a submodule."""
import logging

from torch import nn

__all__ = ["LegacyPixelDecoderKeys"]

logger = logging.getLogger(__name__)


class LegacyPixelDecoderKeys(nn.Module):
    """Mixin for heads with a ``pixel_decoder`` submodule: loads checkpoints of the official heads
    from before version 2, whose pixel-decoder parameters sat directly under the head
    (``sem_seg_head.adapter_1.weight`` instead of ``sem_seg_head.pixel_decoder.adapter_1.weight``).

    Unlike the official conversion it does not depend on the version metadata (d2's .pkl
    checkpoints carry none): a key is moved only when it is a pixel-decoder parameter missing its
    ``pixel_decoder.`` prefix, so current checkpoints are untouched.
    """

    _version = 2

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        decoder_keys = set(self.pixel_decoder.state_dict())
        own_keys = set(self.state_dict())
        moved = 0
        for key in [k for k in state_dict if k.startswith(prefix)]:
            name = key[len(prefix):]
            if name in decoder_keys and name not in own_keys:
                state_dict[f"{prefix}pixel_decoder.{name}"] = state_dict.pop(key)
                moved += 1
        if moved:
            logger.warning(
                f"{type(self).__name__}: moved {moved} pre-v2 checkpoint keys under "
                f"'{prefix}pixel_decoder.'; re-save the checkpoint to upgrade it"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
