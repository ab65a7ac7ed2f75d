"""Model-side stages (train, evaluate, export) and the library around them (models, freezing)."""
