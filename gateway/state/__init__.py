"""Site state kept across a restart: the model, sealing, the stores and the keeper."""
