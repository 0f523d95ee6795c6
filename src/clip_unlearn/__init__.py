"""clip-unlearn: make a pretrained CLIP model forget a class, a subgroup or a style, and measure it."""

__version__ = "0.1.0"
