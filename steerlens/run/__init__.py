"""Running the model: generation, activation caching (and its on-disk store), scoring."""
