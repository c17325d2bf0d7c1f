"""What every run and command needs around the model: errors and the command-line frame,
distributed start-up, device meshes and shardings, disk space, run metrics, malloc settings."""
