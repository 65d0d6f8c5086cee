"""Code that runs inside vLLM's worker processes (``worker_extension_cls``): reloading a reasoner in place.

On a GPU this is vLLM's own in-place reload (``reload_weights``). On a CPU that reload does not work in
vLLM 0.32: the CPU build packs every linear layer's weight into a kernel handle after loading (oneDNN or
AMX), leaves an empty tensor in its place, and the reload writes the new weights beside the handle, so the
engine goes on computing with a mixture (seen here: a reloaded engine wrote other text than a new engine on
the same checkpoint). :meth:`ReasonerReload.reload_reasoner` therefore does it itself on a CPU: it gives each
linear layer a weight of its full shape again (with the layer's own loader), loads the checkpoint through the
model's ``load_weights`` (which knows the fused q/k/v and gate/up layouts and skips a tied output head),
then packs every linear layer and embedding again as a fresh load would.

vLLM imports this module by name in each worker; nothing in sapo imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ReasonerReload"]


def _checkpoint_tensors(checkpoint: str) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint} holds no .safetensors file")
    for file in files:
        with safe_open(str(file), framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, tensors.get_tensor(name)


class ReasonerReload:
    """Methods vLLM adds to its workers; the engine calls them by name (``collective_rpc``)."""

    model_runner: Any  # set by the vLLM worker this class is mixed into

    def reload_reasoner(self, checkpoint: str) -> None:
        """Load the weights of ``checkpoint`` (the same architecture) into the running model."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            self.model_runner.reload_weights(weights_path=checkpoint)
            return
        from vllm.model_executor.layers.linear import WEIGHT_LOADER_V2_SUPPORTED, LinearBase
        from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

        model = self.model_runner.get_model()
        linears = [m for m in model.modules() if isinstance(m, LinearBase)]
        for layer in linears:  # a weight of full shape again, where the packing left an empty one
            method = layer.quant_method
            loader = (
                layer.weight_loader_v2
                if type(method).__name__ in WEIGHT_LOADER_V2_SUPPORTED and hasattr(layer, "weight_loader_v2")
                else layer.weight_loader
            )
            del layer.weight
            method.create_weights(
                layer=layer,
                input_size_per_partition=getattr(layer, "input_size_per_partition", layer.input_size),
                output_partition_sizes=layer.output_partition_sizes,
                input_size=layer.input_size,
                output_size=layer.output_size,
                params_dtype=layer.params_dtype,
                weight_loader=loader,
            )
        model.load_weights(_checkpoint_tensors(checkpoint))
        for module in model.modules():  # pack again, as after a fresh load
            if isinstance(module, (LinearBase, VocabParallelEmbedding)):
                module.quant_method.process_weights_after_loading(module)
