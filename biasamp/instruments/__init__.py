"""The instruments: models that read text (biasamp.instruments.registry says what they serve).
Importing the package registers the built-in measures."""

from biasamp.config import ModelConfig
from biasamp.instruments import quality  # noqa: F401  (registers the quality index, tqi)
from biasamp.instruments.leaning import LeaningModel


def load_classifier(kind: str, name: str, label_map: dict, max_tokens: int, study_model: ModelConfig, key: str):
    """The leaning classifier (`key` classifier) or the quality model (`key` quality) of a config's
    kind: the project's offline one, or a hub sequence classifier (biasamp.instruments.hf)."""
    if kind == "offline":
        return LeaningModel.load(name) if key == "classifier" else quality.QualityProxy.load(name)
    from biasamp.instruments.hf import load_hub  # torch and transformers: only for hub instruments

    return load_hub(kind, name, label_map, max_tokens, study_model, key)
