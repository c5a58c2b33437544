"""Reading datasets, preparing images and feeding them to models."""
