"""Export: a compressed model stripped to an inference model, written as a SavedModel or an OpenVINO IR.

- `strip`: `strip_model` (quantizers kept, masks folded in, pruned filters removed);
- `openvino`: `convert_saved_model` (SavedModel -> IR in a separate converter process, atomic);
- `atomic`: staging folders, targets checked before any work, files replaced as a group;
- `exporter`: `export`, what `kc.export` is.
"""

from keras_compress.export.exporter import export
from keras_compress.export.openvino import ConverterCrashed, convert_saved_model
from keras_compress.export.strip import strip_model

__all__ = ["ConverterCrashed", "convert_saved_model", "export", "strip_model"]
