"""Defence layers: input denoising and randomized smoothing (all Keras 3 layers)."""

from keras_secure.layers.denoising import (
    BitDepthReduction,
    GaussianSmoothing,
    JpegCompression,
    LearnedDenoiser,
    MedianSmoothing,
    denoised_classifier,
    train_denoiser,
)
from keras_secure.layers.smoothing import (
    ABSTAIN,
    RandomizedSmoothing,
    certified_accuracy,
    clopper_pearson_lower,
)

__all__ = ["ABSTAIN", "BitDepthReduction", "GaussianSmoothing", "JpegCompression",
           "LearnedDenoiser", "MedianSmoothing", "RandomizedSmoothing", "certified_accuracy",
           "clopper_pearson_lower", "denoised_classifier", "train_denoiser"]
