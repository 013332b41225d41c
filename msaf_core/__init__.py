"""msaf_core: the MSAF video segmentation model, its streaming segmenter and checkpoints.

Pure PyTorch; imports no ROS package.
"""
from .config import MSAFConfig, VARIANTS, BACKBONES, CAMVID_CLASSES, CAMVID_PALETTE
from .model import MSAF, msaf_loss

__all__ = ["MSAFConfig", "MSAF", "msaf_loss", "VARIANTS", "BACKBONES", "CAMVID_CLASSES",
           "CAMVID_PALETTE"]
from .checkpoint import default_checkpoint, load_checkpoint, save_checkpoint, read_checkpoint
from .errors import (MSAFError, CheckpointError, CheckpointNotFoundError, CheckpointCorruptError,
                     CheckpointFormatError, CheckpointMismatchError, InputError)
from .segmenter import Segmenter

__all__ += ["default_checkpoint", "load_checkpoint", "save_checkpoint", "read_checkpoint",
            "MSAFError", "CheckpointError", "CheckpointNotFoundError", "CheckpointCorruptError",
            "CheckpointFormatError", "CheckpointMismatchError", "InputError", "Segmenter"]
