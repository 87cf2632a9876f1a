"""The default recipe on the second built-in dataset, symbols (`monl.data.symbols`): only the data and
the latent layout differ from `configs/default.py`; model, schedule and training are its settings.

Each 2.5 s clip shows and sounds one of 10 symbols in each of N = 5 segments, changing by a rule
(s_n = s_1 + (n-1) d mod 10, d in {1, 2, 3}); evaluation scores `cell_error` (generated cells with the
wrong symbol) and `cross_modal_agreement`.

Usage: `python -m monl.main train --config configs/symbols.py --workdir runs/symbols`
Variants: `configs/symbols.py:strategy=pm` (as for default.py, see `common.STRATEGY_PRESETS`).
"""
from configs import default


def get_config(arg: str | None = None):
  config = default.get_config(arg)

  # Data: the built-in symbols dataset, built on first use under its own directory.
  config.data.dir = ""
  config.data.builtin = "symbols"
  config.data.builtin_dir = "~/.cache/monl/symbols_v1"

  # The layout comes from the data: video [20, 16, 16, 3] (5 segments x 4 frames), audio [80, 16]
  # (5 segments x 16 frames); N = 5 segments of 0.5 s each. The patches are the default config's
  # (video (2, 0, 0): two whole frames per token; audio 4 frames).
  return config
