"""The bottom layer: config helpers, errors and the run directory (paths, checkpoint/weights IO,
atomic writes). It imports nothing else of clozelab; every other layer may import it."""
