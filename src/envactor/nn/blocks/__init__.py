"""Built-in blocks; importing this package registers every one in ``COMPONENT_REGISTRY``."""

from ._common import Activation, make_activation
from .conv import ConvImageEncoder
from .flow import FlowVelocityMLP
from .mlp import MLP
from .observation import ObservationEncoder
from .time_embedding import SinusoidalTimeEmbedding
from .transformer import ChunkTransformer, TransformerEncoder

__all__ = [
    "Activation",
    "ChunkTransformer",
    "ConvImageEncoder",
    "FlowVelocityMLP",
    "MLP",
    "ObservationEncoder",
    "SinusoidalTimeEmbedding",
    "TransformerEncoder",
    "make_activation",
]
