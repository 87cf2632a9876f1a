"""monl: AVDiT with a Mixture of Noise Levels, in JAX/Flax."""
