"""Neural-network building blocks and the component factory (config ``type:`` -> ``nn.Module``).

Every block registers itself in :data:`envactor.registry.COMPONENT_REGISTRY` under its ``type``
name; third-party blocks join with ``@COMPONENT_REGISTRY.register("name")`` or an
``envactor.components`` entry point.
"""

from envactor.registry import COMPONENT_REGISTRY

from .blocks import (
    MLP,
    ChunkTransformer,
    ConvImageEncoder,
    FlowVelocityMLP,
    ObservationEncoder,
    SinusoidalTimeEmbedding,
    TransformerEncoder,
)
from .factory import (
    ComponentError,
    build_component,
    build_components,
    describe_component,
    known_block_types,
)

__all__ = [
    "COMPONENT_REGISTRY",
    "MLP",
    "ChunkTransformer",
    "ComponentError",
    "ConvImageEncoder",
    "FlowVelocityMLP",
    "ObservationEncoder",
    "SinusoidalTimeEmbedding",
    "TransformerEncoder",
    "build_component",
    "build_components",
    "describe_component",
    "known_block_types",
]
