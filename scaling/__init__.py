"""postformer.scaling: scaling studies, fits and reports (to come)."""
