"""mixsep: separate an MNIST digit and a CIFAR-10 image from their pixel-wise mean."""
from .config import TrainConfig, choose_thread_wait
from .errors import MixsepError

choose_thread_wait()  # before anything imports torch: its OpenMP threads sleep, not spin, while they wait

__version__ = "0.1.0"
__all__ = ["TrainConfig", "MixsepError", "__version__"]
