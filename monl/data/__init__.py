"""Data layer: the latent dataset format, `prepare`, the Grain pipeline, a TFDS builder and the built-in
synthetic audiovisual datasets (`synthetic`: a bouncing ball; `symbols`: a rule-following symbol
sequence; `builtin`: their registry and shared build machinery), with decoders and ground-truth scores.

Import the submodules directly (`from monl.data import format as fmt`, `from monl.data import pipeline`);
this package imports nothing heavy on its own.
"""
