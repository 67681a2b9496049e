"""postformer.arch."""
