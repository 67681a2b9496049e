"""postformer.train."""
