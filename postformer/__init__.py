"""postformer: state-space, linear-recurrent and hybrid sequence models, from kernel to scaling law.

Sub-packages (each a top-level folder of the repository):
    postformer.kernels   ops with reference, chunked PyTorch and Triton implementations
    postformer.arch      mixers, blocks, language models
    postformer.train     Lightning module, data, the ``postformer`` CLI
    postformer.scaling   scaling studies, fits, reports
"""

__version__ = "0.1.0"
