"""Turn a trained float Keras model into the equivalent H-model (same weights, quantizers in front of every layer).

:func:`from_keras` maps a chain of plain Keras layers (a ``Sequential`` model, or a functional model without
branches) layer by layer:

=====================================================  ==========================================================
float layer                                            H-model
=====================================================  ==========================================================
``Input``                                              ``Input`` followed by :class:`~hgq.layers.HQuantize`
``Dense`` / ``Conv1D`` / ``Conv2D``                    :class:`~hgq.layers.HDense` / ``HConv1D`` / ``HConv2D``
the same followed by ``BatchNormalization``            one H-layer; the normalization folded into kernel and bias
``BatchNormalization`` (elsewhere)                     :class:`~hgq.layers.HBatchNormalization`
activation ``relu`` (argument, ``Activation``,         ``activation='relu'`` of the preceding H-layer where it has
``ReLU()``)                                            none, else ``HActivation('relu')``
``softmax``                                            :class:`~hgq.layers.HSoftmax`
other activations (``tanh``, ``sigmoid``, ...)         :class:`~hgq.layers.HActivation` (a lookup table)
``MaxPooling``, ``AveragePooling``,                    the H-pooling layer with the same arguments
``GlobalAveragePooling`` (1D/2D)
``Flatten``, ``Reshape``                               kept as they are
``Dropout``                                            dropped (inference)
=====================================================  ==========================================================

Folding a batch normalization uses its moving statistics, which is exactly what the float model computes at
inference; the H-model has no normalization left to train. With wide formats (many fractional bits) the H-model
predicts what the float model predicts up to the rounding of those formats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from hgq import layers as hl

__all__ = ['from_keras']

_KERNEL_LAYERS = {'Dense': hl.HDense, 'Conv1D': hl.HConv1D, 'Conv2D': hl.HConv2D}
_POOLING_LAYERS = {
    'MaxPooling1D': hl.HMaxPooling1D,
    'MaxPooling2D': hl.HMaxPooling2D,
    'AveragePooling1D': hl.HAveragePooling1D,
    'AveragePooling2D': hl.HAveragePooling2D,
    'GlobalAveragePooling1D': hl.HGlobalAveragePooling1D,
    'GlobalAveragePooling2D': hl.HGlobalAveragePooling2D,
}
_KEPT_LAYERS = ('Flatten', 'Reshape')
_CONV_ARGS = ('filters', 'kernel_size', 'strides', 'padding')


def _chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of a model whose layers form one chain from its single input to its single output."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f'model {model.name!r}: from_keras handles one input and one output, got '
            f'{len(model.inputs)} and {len(model.outputs)}'
        )
    chain = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):
        return chain
    previous = model.inputs[0]
    for layer in chain:
        try:
            ok = layer.input is previous
        except (AttributeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f'layer {layer.name!r} of model {model.name!r} does not take the output of the layer before it: '
                'from_keras handles chains of layers (Sequential models or functional models without branches)'
            )
        previous = layer.output
    return chain


def _activation_name(layer: keras.layers.Layer) -> str:
    """Name of the activation a Dense/Conv/Activation/ReLU layer applies ('linear' for none)."""
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        if config.get('max_value') is not None or config.get('negative_slope') or config.get('threshold'):
            raise ValueError(f'layer {layer.name!r}: only a plain ReLU (no max_value, slope or threshold) is supported')
        return 'relu'
    activation = layer.get_config().get('activation', 'linear')
    if not isinstance(activation, str):
        raise ValueError(f'layer {layer.name!r}: activation must be given by name, got {activation!r}')
    return activation


def _fold_batchnorm(kernel: np.ndarray, bias: np.ndarray, bn: keras.layers.BatchNormalization):
    """Kernel and bias of ``bn(x @ kernel + bias)`` at inference (moving statistics)."""
    config = bn.get_config()
    axis = config['axis'] if isinstance(config['axis'], int) else config['axis'][0]
    if axis not in (-1, len(bn.input.shape) - 1):
        raise ValueError(f'layer {bn.name!r}: only a normalization over the last axis can be folded, got axis={axis}')
    mean, variance = (np.asarray(v, dtype=np.float64) for v in (bn.moving_mean, bn.moving_variance))
    factor = 1.0 / np.sqrt(variance + config['epsilon'])
    if config['scale']:
        factor = factor * np.asarray(bn.gamma, dtype=np.float64)
    shift = -mean * factor
    if config['center']:
        shift = shift + np.asarray(bn.beta, dtype=np.float64)
    return kernel * factor, bias * factor + shift


def _kernel_layer(layer: keras.layers.Layer, bn: keras.layers.Layer | None, specs: dict[str, Any]):
    """The H-layer of a Dense/Conv layer (and the batch normalization folded into it) and its weight setter."""
    config = layer.get_config()
    cls = _KERNEL_LAYERS[type(layer).__name__]
    if cls is hl.HDense:
        args = {'units': config['units']}
    else:
        if config.get('data_format') not in (None, 'channels_last'):
            raise ValueError(f"layer {layer.name!r}: only data_format='channels_last' is supported")
        if config.get('groups', 1) != 1:
            raise ValueError(f'layer {layer.name!r}: grouped convolutions are not supported')
        args = {key: config[key] for key in _CONV_ARGS}
        args['dilation_rate'] = config.get('dilation_rate', 1)
    kernel = np.asarray(layer.kernel, dtype=np.float64)
    bias = np.asarray(layer.bias, dtype=np.float64) if config['use_bias'] else np.zeros(kernel.shape[-1])
    if bn is not None:
        kernel, bias = _fold_batchnorm(kernel, bias, bn)
    use_bias = bool(config['use_bias'] or bn is not None)
    h_layer = cls(name=layer.name, use_bias=use_bias, **args, **specs)

    def set_weights() -> None:
        h_layer.kernel.assign(kernel.astype(h_layer.kernel.dtype))
        if use_bias:
            h_layer.bias.assign(bias.astype(h_layer.bias.dtype))
        h_layer.kernel_quantizer.fit_initial_bits(h_layer.kernel)

    return h_layer, set_weights


def _batchnorm_layer(bn: keras.layers.BatchNormalization, specs: dict[str, Any]):
    config = bn.get_config()
    axis = config['axis'] if isinstance(config['axis'], int) else config['axis'][0]
    h_layer = hl.HBatchNormalization(
        name=bn.name,
        axis=-1 if axis == len(bn.input.shape) - 1 else axis,
        momentum=config['momentum'],
        epsilon=config['epsilon'],
        center=config['center'],
        scale=config['scale'],
        input_quantizer=specs.get('input_quantizer'),
        scale_quantizer=specs.get('kernel_quantizer'),
        offset_quantizer=specs.get('bias_quantizer'),
    )

    def set_weights() -> None:
        if config['scale']:
            h_layer.gamma.assign(bn.gamma)
        if config['center']:
            h_layer.offset.assign(bn.beta)
        h_layer.moving_mean.assign(bn.moving_mean)
        h_layer.moving_variance.assign(bn.moving_variance)
        h_layer.scale_quantizer.fit_initial_bits(h_layer.normalization()[0])

    return h_layer, set_weights


def _activation_layer(name: str, activation: str) -> keras.layers.Layer:
    if activation == 'softmax':
        return hl.HSoftmax(name=name)
    return hl.HActivation(activation, name=name)


def _spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if spec is None else dict(spec)


def from_keras(
    model: keras.Model,
    input_quantizer: dict[str, Any] | None = None,
    kernel_quantizer: dict[str, Any] | None = None,
    bias_quantizer: dict[str, Any] | None = None,
    name: str | None = None,
) -> keras.Sequential:
    """The H-model equivalent of a float Keras model, with the float model's weights.

    See the module docstring for the layer mapping. The float model is not changed. Calibrate the result
    (:func:`hgq.calibrate`) before predicting with it: input quantizers start with the range ``+-16``.

    Parameters
    ----------
    model : keras.Model
        A built ``Sequential`` model, or a functional model whose layers form one chain.
    input_quantizer, kernel_quantizer, bias_quantizer : dict, optional
        Arguments of the input (:class:`~hgq.quantizer.ActivationQuantizer`), kernel and bias
        (:class:`~hgq.quantizer.WeightQuantizer`) quantizers of every Dense/Conv/pooling/batch-norm H-layer, e.g.
        ``{'f_init': 12}`` for wide formats; the defaults of the H-layers otherwise. The kernel and bias settings
        also serve the scale and offset of standalone batch normalizations. ``HQuantize`` takes ``input_quantizer``.
    name : str, optional
        Name of the H-model (default: the float model's name with ``_hgq``).

    Returns
    -------
    keras.Sequential
        The H-model, built, with uncalibrated activation ranges.

    Examples
    --------
    >>> import keras, numpy as np, hgq
    >>> float_model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation='relu'),
    ...                                 keras.layers.Dense(2)])
    >>> h_model = hgq.from_keras(float_model, input_quantizer={'f_init': 12}, kernel_quantizer={'f_init': 12})
    >>> [type(layer).__name__ for layer in h_model.layers]
    ['HQuantize', 'HDense', 'HDense']
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f'from_keras expects a built keras.Model, got {model!r}')
    for layer in model.layers:
        if isinstance(layer, hl.HLayer):
            raise ValueError(
                f'model {model.name!r} already has H-layers ({layer.name!r}); from_keras takes float models'
            )
    chain = _chain(model)
    specs = {
        key: _spec(value)
        for key, value in (
            ('input_quantizer', input_quantizer),
            ('kernel_quantizer', kernel_quantizer),
            ('bias_quantizer', bias_quantizer),
        )
        if value is not None
    }
    input_specs = {'input_quantizer': _spec(input_quantizer)} if input_quantizer is not None else {}

    h_layers: list[keras.layers.Layer] = [hl.HQuantize(name=f'{model.name}_input_quantize', **input_specs)]
    setters: list[Callable[[], None]] = []
    n = 0
    while n < len(chain):
        layer, kind = chain[n], type(chain[n]).__name__
        following = chain[n + 1] if n + 1 < len(chain) else None
        if kind in _KERNEL_LAYERS:
            activation = _activation_name(layer)
            folds = isinstance(following, keras.layers.BatchNormalization) and activation == 'linear'
            bn = following if folds else None
            inside = 'relu' if activation == 'relu' else None
            h_layer, setter = _kernel_layer(layer, bn, {**specs, 'activation': inside})
            h_layers.append(h_layer)
            setters.append(setter)
            n += 2 if bn is not None else 1
            if activation not in ('relu', 'linear'):
                h_layers.append(_activation_layer(f'{layer.name}_activation', activation))
            continue
        if kind == 'BatchNormalization':
            h_layer, setter = _batchnorm_layer(layer, specs)
            h_layers.append(h_layer)
            setters.append(setter)
        elif kind in ('Activation', 'ReLU'):
            activation = _activation_name(layer)
            last = h_layers[-1]
            if activation == 'relu' and isinstance(last, hl.HKernelLayer) and last.activation == 'linear':
                last.activation = 'relu'
            elif activation != 'linear':
                h_layers.append(_activation_layer(layer.name, activation))
        elif kind == 'Softmax':
            h_layers.append(hl.HSoftmax(name=layer.name))
        elif kind in _POOLING_LAYERS:
            config = {k: v for k, v in layer.get_config().items() if k not in ('name', 'trainable', 'dtype')}
            h_layers.append(_POOLING_LAYERS[kind](name=layer.name, **config, **input_specs))
        elif kind in _KEPT_LAYERS:
            h_layers.append(type(layer).from_config(layer.get_config()))
        elif kind != 'Dropout':
            raise ValueError(
                f'layer {layer.name!r} of class {kind} has no H-layer equivalent; from_keras handles Dense, Conv1D, '
                'Conv2D, BatchNormalization, activations, pooling, Flatten, Reshape and Dropout'
            )
        n += 1

    shape = tuple(model.inputs[0].shape[1:])
    h_model = keras.Sequential([keras.Input(shape), *h_layers], name=name or f'{model.name}_hgq')
    for setter in setters:
        setter()
    return h_model
