"""Publishing Clinical ModernBERT: a guarded Hub push and downstream export formats.

- :mod:`publish.push` checks that a folder holds only model artifacts (an allow-list; corpus files, training
  state, pickles and anything that looks like clinical note text are refused) and uploads exactly those files.
- :mod:`publish.sentence_transformers` writes a sentence-transformers folder (mean pooling) and a reference
  ``encode`` that uses transformers only.
- :mod:`publish.onnx` exports the encoder to ONNX and checks parity with onnxruntime.

Run ``python -m publish --help`` for the command line. Heavy dependencies (torch, transformers, onnx) are
imported inside the submodules that need them, so ``publish.push`` stays light.
"""

from publish.push import ArtifactCheck, PushRefused, check_model_folder, push_to_hub

__all__ = ["ArtifactCheck", "PushRefused", "check_model_folder", "push_to_hub"]
