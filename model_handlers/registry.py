"""From config to a ModelHandler: one factory per handler kind."""
from __future__ import annotations

from collections.abc import Callable

from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler

from model_handlers.bundle import ModelBundle
from model_handlers.torch_local import TorchAnomalyHandler

HandlerFactory = Callable[..., ModelHandler]

HANDLERS: dict[str, HandlerFactory] = {
    "torch": lambda bundle, model: TorchAnomalyHandler(
        bundle, device=model.device, min_batch_size=model.min_batch_size, max_batch_size=model.max_batch_size
    ),
}


def keyed_handler(bundle: ModelBundle, model) -> KeyedModelHandler:
    """The handler named by ``model.handler``, keyed by device id."""
    try:
        factory = HANDLERS[model.handler]
    except KeyError:
        raise ValueError(f"model.handler: unknown handler {model.handler!r}; known: {sorted(HANDLERS)}") from None
    return KeyedModelHandler(factory(bundle, model))
