"""Training: data simulation, dataset loaders and model fitting."""
