"""Pretraining of small CLIP models on local labelled images (``clip-unlearn-pretrain``) and the retrain oracle."""
