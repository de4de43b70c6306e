"""Gatehouse's machine-learning core: recurrent language models in pure PyTorch (no HTTP)."""
