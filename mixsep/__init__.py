"""mixsep: separate an MNIST digit and a CIFAR-10 image from their pixel-wise mean."""
from .config import TrainConfig
from .errors import MixsepError

__version__ = "0.1.0"
__all__ = ["TrainConfig", "MixsepError", "__version__"]
