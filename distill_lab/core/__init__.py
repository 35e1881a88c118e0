"""The harness every method and track stands on: the scale switch, the flow-matching basics, the
training loop and caching, committed checkpoints, the recipe registry, the experiment contracts, the
bench and the plots. Nothing here imports a method or a track."""
