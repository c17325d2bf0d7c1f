"""Training: the loop (`loop.train_and_evaluate`), the pure jitted step and its state (`step`),
checkpoints of runs (`checkpoints`), the optimiser and schedule (`optim`) and the losses with
mixup / cutmix (`losses`). `python -m tcclip_jax.train` runs `__main__`.

Nothing is imported here: the command line must start the distributed runtime before anything
touches a device.
"""
