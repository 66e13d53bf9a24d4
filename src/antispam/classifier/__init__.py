"""The token classifier: tokenizer, model, training, online learning, the engine check, evaluation.

Importing this package does not import scikit-learn; only :mod:`.train` does.
"""

from .check import Classification, Classifier, ClassifierCheck, classifier_check, default_model, bayes_hit
from .model import Model, load_model
from .tokenizer import TOKENIZER_VERSION, TokenizerSpec

__all__ = ["Classification", "Classifier", "ClassifierCheck", "classifier_check", "default_model", "bayes_hit",
           "Model", "load_model", "TOKENIZER_VERSION", "TokenizerSpec"]
