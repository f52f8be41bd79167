"""Past one machine: generate and rank on a Ray cluster (`--engine ray`); the driver keeps the run directory."""
