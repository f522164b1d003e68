"""Registry: versioned ONNX models in a BentoML model store, and the stable pointer."""

from mlsd.registry.store import MODEL_FILE, ModelRegistry, ModelVersion, RegistryParams

__all__ = ["MODEL_FILE", "ModelRegistry", "ModelVersion", "RegistryParams"]
