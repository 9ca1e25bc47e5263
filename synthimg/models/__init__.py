"""Learners: open_clip models with the zero-shot head (``clip``) and timm ViTs (``vit``)."""
