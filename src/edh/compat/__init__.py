"""Converters between edh models and other libraries' weights (torchvision detection...)."""
