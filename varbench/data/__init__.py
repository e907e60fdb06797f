"""Data layer: the embedded procedural data set, ImageNet-style folders, torchvision sets, VAR's preprocessing, the
token cache, the deterministic batches (`batches.py`) and what a batch teaches each backbone (`teacher_forcing.py`):
below eval and training, which both read them. Every data set yields (img_3HW float in [-1, 1], label int) and has
`num_classes` and `classes`."""

from varbench.data.embedded import EmbeddedShapes
from varbench.data.folders import ImageFolderData
from varbench.data.token_cache import TokenCache, tokenizer_fingerprint, write_token_cache
from varbench.data.torchvision_sets import TorchvisionData
from varbench.data.transforms import var_transform

__all__ = ["EmbeddedShapes", "ImageFolderData", "TokenCache", "TorchvisionData", "tokenizer_fingerprint",
           "var_transform", "write_token_cache"]
