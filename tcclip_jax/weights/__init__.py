"""Weights in and out: foreign formats (PyTorch today) read into our parameter tree by a
rename-and-transpose table (`pytorch`), and the self-describing checkpoint directory
(`checkpoint`) that every tool reads and writes."""
