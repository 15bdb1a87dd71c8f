"""hls4ml handlers of the merge and pooling H-layers.

- ``HAdd``/``HSubtract``/``HMultiply``: one quantizer per input, then hls4ml ``Merge`` layers; more than two
  inputs become a chain of two-input merges (hls4ml's are binary), each typed exactly by the ``bit_exact`` pass.
- ``HConcatenate``: one quantizer per input, then a chain of two-input ``Concatenate`` layers.
- Pooling: the input quantizer, then hls4ml's ``MaxPooling``/``AveragePooling``/``GlobalAveragePooling`` layer
  (and a ``Reshape`` for ``keepdims=True``).

Examples
--------
>>> import keras, hgq
>>> from hgq.layers import HAdd
>>> a, b = keras.Input((4,)), keras.Input((4,))
>>> model = keras.Model([a, b], HAdd()([a, b]))
>>> hls_model = hgq.to_hls(model, 'prj/')  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hls4ml.converters.keras_v3.conv import gen_conv_config

from hgq.convert.handlers import HLayerHandler, IRDict
from hgq.layers.merge import HAdd, HConcatenate, HMerge, HMultiply, HSubtract
from hgq.layers.pooling import (
    HAveragePooling1D,
    HAveragePooling2D,
    HGlobalAveragePooling,
    HGlobalAveragePooling1D,
    HGlobalAveragePooling2D,
    HMaxPooling1D,
    HMaxPooling2D,
    HPooling,
)

if TYPE_CHECKING:
    from keras import KerasTensor

__all__ = ['HMergeHandler', 'HPoolingHandler', 'HGlobalPoolingHandler']


def _chain(layer_name: str, inputs: Sequence[str], output: str, step: dict) -> tuple[IRDict, ...]:
    """Two-input IR layers folding ``inputs`` left to right into ``output``."""
    confs = []
    current = inputs[0]
    for n, name in enumerate(inputs[1:], start=1):
        last = n == len(inputs) - 1
        target = output if last else f'{output}_partial{n}'
        confs.append(
            {
                **step,
                'name': layer_name if last else f'{layer_name}_partial{n}',
                'input_keras_tensor_names': [current, name],
                'output_keras_tensor_names': [target],
            }
        )
        current = target
    return tuple(confs)


class HMergeHandler(HLayerHandler):
    """``HAdd``, ``HSubtract``, ``HMultiply``, ``HConcatenate``: input quantizers, then two-input merges."""

    keras_classes = (HAdd, HSubtract, HMultiply, HConcatenate)

    def handle(
        self, layer: HMerge, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]
    ) -> tuple[IRDict, ...]:
        rank = len(out_tensors[0].shape) - 1
        if isinstance(layer, HConcatenate):
            axis = layer.axis if layer.axis < 0 else layer.axis - rank - 1
            step = {'class_name': 'Concatenate', 'op': f'concatenate{rank}d', 'axis': axis}
        else:
            step = {'class_name': 'Merge', 'op': type(layer).__name__[1:].lower()}
        names = [t.name for t in in_tensors]
        return _chain(layer.name, names, out_tensors[0].name, step)


def _pool_config(layer: HPooling | HGlobalAveragePooling, in_shape: tuple, out_shape: tuple) -> IRDict:
    pool_size = tuple(layer.pool_size) if isinstance(layer, HPooling) else tuple(in_shape[:-1])
    strides = tuple(layer.strides) if isinstance(layer, HPooling) else pool_size
    padding = layer.padding if isinstance(layer, HPooling) else 'valid'
    spatial_out = out_shape if isinstance(layer, HPooling) else (*(1,) * len(pool_size), in_shape[-1])
    config = gen_conv_config(
        in_shape=in_shape,
        out_shape=spatial_out,
        ker_px_shape=pool_size,
        strides=strides,
        padding=padding,
        data_format='channels_last',
        name=layer.name,
    )
    config['pool_width'] = config.pop('filt_width')
    if 'filt_height' in config:
        config['pool_height'] = config.pop('filt_height')
    if len(pool_size) == 1:
        config['n_in'], config['n_out'] = config['in_width'], config['out_width']
    config['data_format'] = 'channels_last'
    return config


class HPoolingHandler(HLayerHandler):
    """Max and average pooling: input quantizer, then hls4ml's ``MaxPooling1D/2D``/``AveragePooling1D/2D``."""

    keras_classes = (HMaxPooling1D, HMaxPooling2D, HAveragePooling1D, HAveragePooling2D)

    def default_class_name(self, layer: HPooling) -> str:
        return type(layer).__name__[1:]

    def handle(self, layer: HPooling, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]) -> IRDict:
        return _pool_config(layer, tuple(in_tensors[0].shape[1:]), tuple(out_tensors[0].shape[1:]))


class HGlobalPoolingHandler(HLayerHandler):
    """Global average pooling: input quantizer, ``GlobalAveragePooling1D/2D`` (and ``Reshape`` if ``keepdims``)."""

    keras_classes = (HGlobalAveragePooling1D, HGlobalAveragePooling2D)

    def handle(
        self, layer: HGlobalAveragePooling, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]
    ) -> tuple[IRDict, ...]:
        in_shape, out_shape = tuple(in_tensors[0].shape[1:]), tuple(out_tensors[0].shape[1:])
        out_name = out_tensors[0].name
        pooled = f'{out_name}_pooled' if layer.keepdims else out_name
        pool = {
            **_pool_config(layer, in_shape, out_shape),
            'name': layer.name,
            'class_name': type(layer).__name__[1:],
            'input_keras_tensor_names': [in_tensors[0].name],
            'output_keras_tensor_names': [pooled],
        }
        if not layer.keepdims:
            return (pool,)
        reshape = {
            'name': f'{layer.name}_keepdims',
            'class_name': 'Reshape',
            'target_shape': list(out_shape),
            'input_keras_tensor_names': [pooled],
            'output_keras_tensor_names': [out_name],
        }
        return pool, reshape
