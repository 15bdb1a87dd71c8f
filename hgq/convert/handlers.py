"""hls4ml (Keras v3) handlers of the H-layers, and the helpers that other handlers build on.

Every H-layer quantizes its inputs, so its handler emits, in order:

1. one quantizer IR dict (a subclass of hls4ml's ``FixedPointQuantizer``) per input tensor
   (:func:`quantizer_config`), which turns on hls4ml's ``bit_exact`` pass: hls4ml then derives every type from
   these masks and the real weight values;
2. the IR dict(s) of the layer itself, with weights already quantized (``qkernel``, ``qbias``);
3. an ``Activation`` IR dict when the layer applies ``relu`` inside.

A handler lists the Keras classes it converts in ``keras_classes``; :func:`hgq.convert.register` registers every
handler of :data:`hgq.convert.registry.HANDLERS`, and :func:`register_handler` registers one of your own.

Examples
--------
A handler for a layer that is an element-wise identity on its quantized input:

>>> from hgq.convert.handlers import HLayerHandler, register_handler
>>> class MyIdentityHandler(HLayerHandler):  # doctest: +SKIP
...     keras_classes = (MyIdentity,)
...     def handle(self, layer, in_tensors, out_tensors):
...         return {'class_name': 'Activation', 'activation': 'linear'}
>>> register_handler(MyIdentityHandler)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import TYPE_CHECKING, Any

import numpy as np
from hls4ml.converters.keras_v3 import layer_handlers
from hls4ml.converters.keras_v3._base import KerasV3LayerHandler

from hgq.convert.hls_backend import IR_CLASS, MASK_ATTR
from hgq.layers.base import HLayer
from hgq.layers.quantize import HQuantize
from hgq.quantizer import ActivationQuantizer

if TYPE_CHECKING:
    import keras
    from keras import KerasTensor

__all__ = [
    'HLayerHandler',
    'HQuantizeHandler',
    'handler_key',
    'kbi_masks',
    'quantizer_config',
    'quantized_name',
    'activation_config',
    'register_handler',
]

IRDict = dict[str, Any]


def handler_key(cls: type) -> str:
    """The key under which hls4ml looks up the handler of a Keras layer class: ``'<module>.<Class>'``.

    Examples
    --------
    >>> from hgq.layers import HDense
    >>> handler_key(HDense)
    'hgq.layers.dense.HDense'
    """
    return f'{cls.__module__}.{cls.__name__}'


def kbi_masks(quantizer: ActivationQuantizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``mask_kbi = (k, B, I)`` arrays of an activation quantizer, shape ``(1, *tensor_shape)``.

    ``B = k + i + f`` is the width and ``I = k + i`` the integer bits including the sign. Per-channel and
    per-tensor formats are broadcast to the tensor shape (hls4ml's passes index the masks per element). Elements
    of width ``<= 0`` (pruned: always exactly 0) get ``k = B = I = 0``.

    Parameters
    ----------
    quantizer : ActivationQuantizer
        A built quantizer; its integer bits are those of the last calibration (WRAP mode) or the learned ones.

    Examples
    --------
    >>> q = ActivationQuantizer(f_init=2, overflow_mode='SAT', i_init=1)
    >>> q.build((None, 3))
    >>> [m.tolist() for m in kbi_masks(q)]
    [[[1, 1, 1]], [[4, 4, 4]], [[2, 2, 2]]]
    """
    if quantizer.shape is None:
        raise ValueError(f'{quantizer.name}: the quantizer is not built; build or call the model first')
    k, i, f = quantizer.kif()
    width = k + i + f
    zero = width <= 0
    k = np.where(zero, 0, k)
    big_b = np.where(zero, 0, width)
    big_i = np.where(zero, 0, k + i)
    return tuple(a.astype(np.int16)[None] for a in (k, big_b, big_i))


def quantized_name(tensor_name: str, layer_name: str) -> str:
    """Name of the IR tensor holding ``tensor_name`` after the input quantizer of layer ``layer_name``."""
    return f'{tensor_name}_q_{layer_name}'


def quantizer_config(
    quantizer: ActivationQuantizer,
    input_name: str,
    output_name: str,
    name: str | None = None,
) -> IRDict:
    """The IR dict of an activation quantizer: an ``HGQFixedPointQuantizer`` (hls4ml's ``FixedPointQuantizer``).

    Parameters
    ----------
    quantizer : ActivationQuantizer
        A built quantizer.
    input_name, output_name : str
        Keras tensor names the IR layer reads and writes (see :func:`quantized_name`).
    name : str, optional
        IR layer name; defaults to the quantizer's name.

    Returns
    -------
    dict
        ``class_name='HGQFixedPointQuantizer'``, ``mask_kbi``, ``SAT`` (overflow mode), ``RND`` (rounding mode),
        ``fusible``, ``overrides``, the tensor wiring, and ``hgq_mask_kbi`` (a copy of the masks that marks the
        quantizer as ours for :mod:`hgq.convert.hls_backend`). A quantizer whose every element has zero width
        outputs 0 whatever its modes; it is given ``WRAP``/``TRN`` so that it requests no bits from its input.

    Examples
    --------
    >>> q = ActivationQuantizer(name='iq')
    >>> q.build((None, 4))
    >>> conf = quantizer_config(q, 'x', 'x_q')
    >>> conf['class_name'], conf['SAT'], conf['RND'], conf['mask_kbi'][1].shape
    ('HGQFixedPointQuantizer', 'WRAP', 'RND', (1, 4))
    """
    masks = kbi_masks(quantizer)
    all_zero = not np.any(masks[1])
    return {
        'name': name or quantizer.name,
        'class_name': IR_CLASS,
        'mask_kbi': masks,
        MASK_ATTR: tuple(m.copy() for m in masks),
        'SAT': 'WRAP' if all_zero else quantizer.overflow_mode,
        'RND': 'TRN' if all_zero else quantizer.round_mode,
        'fusible': None,
        'overrides': {},
        'input_keras_tensor_names': [input_name],
        'output_keras_tensor_names': [output_name],
    }


def activation_config(name: str, activation: str, input_name: str, output_name: str, n_in: int) -> IRDict:
    """IR dict of an element-wise ``linear`` or ``relu`` activation (exact in fixed point)."""
    return {
        'name': name,
        'class_name': 'Activation',
        'activation': activation,
        'n_in': n_in,
        'input_keras_tensor_names': [input_name],
        'output_keras_tensor_names': [output_name],
    }


def _rewire(confs: Sequence[IRDict], renames: dict[str, str]) -> None:
    for conf in confs:
        conf['input_keras_tensor_names'] = [renames.get(n, n) for n in conf['input_keras_tensor_names']]


class HLayerHandler(KerasV3LayerHandler):
    """Base of the handlers of H-layers: input quantizers first, then the layer, then its internal ``relu``.

    Subclasses set ``keras_classes`` (the H-layer classes they convert) and implement ``handle`` (like any
    hls4ml Keras v3 handler) returning the layer's IR dict(s) as if its inputs were the quantized tensors; weights
    read with :meth:`load_weight` are the quantized ones. Set ``ir_class_name`` to the hls4ml IR class
    (``'Dense'``, ``'Conv2D'``...).
    """

    keras_classes: tuple[type, ...] = ()
    ir_class_name: str | None = None

    def __call__(
        self,
        layer: keras.Layer,
        in_tensors: Sequence[KerasTensor],
        out_tensors: Sequence[KerasTensor],
    ) -> tuple[IRDict, ...]:
        quantizers = layer.activation_quantizers
        if len(quantizers) != len(in_tensors):
            raise ValueError(
                f'{layer.name} ({type(layer).__name__}): {len(quantizers)} input quantizers '
                f'for {len(in_tensors)} input tensors'
            )
        renames = {t.name: quantized_name(t.name, layer.name) for t in in_tensors}
        iq_confs = tuple(
            quantizer_config(q, t.name, renames[t.name]) for q, t in zip(quantizers, in_tensors, strict=True)
        )
        confs = super().__call__(layer, in_tensors, out_tensors)
        _rewire(confs, renames)
        return (*iq_confs, *confs)

    def default_class_name(self, layer: keras.Layer) -> str:
        return self.ir_class_name or type(layer).__name__

    def maybe_get_activation_config(
        self, layer: keras.Layer, out_tensors: Sequence[KerasTensor]
    ) -> tuple[IRDict | None, str | None]:
        activation = getattr(layer, 'activation', 'linear')
        if activation in ('linear', None):
            return None, None
        if activation != 'relu':
            layer_id = f'{layer.name} ({type(layer).__name__})'
            raise ValueError(f'{layer_id}: cannot convert internal activation {activation!r}')
        out_name = out_tensors[0].name
        pre_name = f'{out_name}_pre_relu'
        n_in = prod(out_tensors[0].shape[1:])
        return activation_config(f'{layer.name}_relu', 'relu', pre_name, out_name, n_in), pre_name

    def load_weight(self, layer: HLayer, key: str) -> np.ndarray:
        """The weight ``key`` as exported to hardware, from :meth:`HLayer.quantized_weights`."""
        weights = layer.quantized_weights()
        if key not in weights:
            layer_id = f'{layer.name} ({type(layer).__name__})'
            raise ValueError(f'{layer_id}: no quantized weight {key!r} (has {list(weights)})')
        return weights[key][0]


class HQuantizeHandler(KerasV3LayerHandler):
    """``HQuantize`` becomes one quantizer IR layer."""

    keras_classes = (HQuantize,)

    def __call__(
        self,
        layer: HQuantize,
        in_tensors: Sequence[KerasTensor],
        out_tensors: Sequence[KerasTensor],
    ) -> tuple[IRDict, ...]:
        return (quantizer_config(layer.input_quantizer, in_tensors[0].name, out_tensors[0].name, name=layer.name),)


def register_handler(handler: type[HLayerHandler] | type[HQuantizeHandler]) -> None:
    """Make hls4ml convert the ``keras_classes`` of ``handler`` with it (hls4ml looks handlers up by class key)."""
    for cls in handler.keras_classes:
        layer_handlers[handler_key(cls)] = handler()
