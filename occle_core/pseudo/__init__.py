"""2D foundation-model pseudo labels: the labeller interface, file-backed labels and adapters."""
