"""Dataset loaders: each dataset config (``conf/dataset/*.yaml``) instantiates one ``ImageDataset``."""

from clip_unlearn.data.base import ImageDataset, LabeledImages

__all__ = ["ImageDataset", "LabeledImages"]
