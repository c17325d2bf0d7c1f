"""Run configs: the base every protocol config starts from (`base`), and resolving and checking
a config before a run (`resolve`), shared by training and evaluation."""
