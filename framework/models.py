"""Models: any timm architecture, adapted to the dataset (classes, channels, image size), or the
user's own callable (``model=custom model._target_=mypkg.nets.build_net``), which receives the
runtime inputs its signature takes (``num_classes``, ``in_chans``, ``img_size``)."""
from __future__ import annotations

from typing import Any

import torch

from framework.errors import ConfigError
from framework.errors import suggest


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a timm architecture (``timm.list_models()``)."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"model.name={name}: not a timm architecture{suggest(name, timm.list_models())}; "
            "list them with python -c \"import timm; print(timm.list_models('resnet*'))\""
        )


def check_module(model: Any, target: str) -> None:
    """What a model's ``_target_`` returned must be a ``torch.nn.Module`` with parameters to train.

    Args:
        model: the object the callable returned.
        target: its ``_target_`` path, for the message.

    Raises:
        ConfigError: not an ``nn.Module`` (return the network itself), or one without trainable
            parameters.
    """
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model._target_={target}: returned a {type(model).__name__}, not a torch.nn.Module; "
                          "make it return the network (a class deriving from nn.Module, or a function returning one)")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model._target_={target}: the {type(model).__name__} it returned has no trainable "
                          "parameters; give it some (or unfreeze them)")


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    pretrained: bool = False,
    drop_rate: float = 0.0,
    **kwargs: Any,
) -> torch.nn.Module:
    """``timm.create_model`` with the head and stem sized for the dataset.

    ``img_size`` is passed only to architectures whose constructor takes it (ViT, Swin, ...);
    convolutional nets adapt to any size by global pooling. With ``pretrained=True`` timm
    downloads the weights (needs the network or a filled Hugging Face cache), adapts the first
    conv to ``in_chans`` and drops the classifier when ``num_classes`` differs.

    Args:
        name: timm architecture, e.g. ``resnet18`` or ``vit_tiny_patch16_224``.
        num_classes: classifier outputs (runtime, from the dataset).
        in_chans: input channels ``C`` (runtime, from the dataset).
        img_size: input side in pixels (runtime, from the dataset).
        pretrained: load pretrained weights.
        drop_rate: dropout probability before the classifier.
        **kwargs: passed to the timm model constructor (e.g. ``drop_path_rate``).

    Returns:
        A model mapping ``(B, in_chans, img_size, img_size)`` to logits ``(B, num_classes)``.

    Raises:
        ConfigError: unknown architecture, ``drop_rate`` outside [0, 1), a constructor argument
            it does not take, or weights that cannot be downloaded (offline, set
            ``HF_HUB_OFFLINE=1`` to fail at once instead of retrying).
    """
    import timm

    check_model_name(name)
    if not 0 <= drop_rate < 1:
        raise ConfigError(f"model.drop_rate={drop_rate}: a dropout probability must be in [0, 1)")
    common = dict(pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    try:
        try:
            return timm.create_model(name, img_size=img_size, **common, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            return timm.create_model(name, **common, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model: {name} rejected an argument ({exc}); remove it from the model config")
    except (OSError, RuntimeError, ValueError) as exc:  # hub/network errors
        if not pretrained:
            raise
        raise ConfigError(
            f"model.pretrained=true: weights for {name} could not be loaded "
            f"({type(exc).__name__}); connect to the hub, fill its cache, or set model.pretrained=false"
        )


def check_batch_norm_batches(model: torch.nn.Module, loader: Any) -> None:
    """Batch norm cannot train on one value per channel (its variance is undefined): a training
    batch of 1 sample through a batch-norm layer whose input is ``1 x 1`` pixels, e.g. after
    global pooling or at the last stage of a CNN on small images.

    Only when some batch of an epoch holds one sample (``batch_size=1`` or one sample per
    epoch; the loaders drop a last batch of 1): one sample of the loader's dataset goes through
    the model in eval mode (no statistics change) while hooks note each batch-norm input's shape.

    Args:
        model: the network, on the CPU, in train mode (left in train mode).
        loader: the training loader (``batch_size``, ``drop_last``, ``dataset[0]`` = ``(x, y)``,
            ``x`` of shape ``(C, H, W)``).

    Raises:
        ConfigError: such a batch would reach such a layer; use ``batch_size`` >= 2 (and a
            ``dataset.train_size`` of at least 2 samples per process).
    """
    from framework.trainer.steps import loader_group_sizes

    batches = loader_group_sizes(loader, 1)  # samples of each batch of an epoch (one batch per group)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not batches or min(batches) != 1 or not norms:
        return
    single: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda m, inputs: single.append(type(m).__name__)
                                         if inputs[0][0].numel() == inputs[0].shape[1] else None) for m in norms]
    model.eval()
    try:
        with torch.no_grad():
            first = next(model.parameters())  # (a device-resident dataset may sit elsewhere)
            model(loader.dataset[0][0][None].to(first.device, first.dtype))
    finally:
        model.train()
        for hook in hooks:
            hook.remove()
    if single:
        key, fix = (("dataset.train_size=1", "use at least 2 training samples") if sum(batches) == 1 else
                    (f"batch_size={loader.batch_size}", "use batch_size >= 2"))
        raise ConfigError(f"{key}: a training batch of 1 sample reaches a {single[0]} layer as one value per channel "
                          f"(its input there is 1x1 pixels), which batch norm cannot train on; {fix}")


def check_outputs(model: torch.nn.Module, data: Any, task: Any, target: str) -> None:
    """One training sample through the model and the task's loss, before training: the model
    takes the data's input, gives ``num_classes`` outputs, and the task's loss accepts them with
    the sample's label (for class labels: an index in ``[0, num_classes)``).

    The sample ``(x (C, H, W), y)`` goes through in eval mode, without gradients (no weight or
    statistic changes); the model is left in train mode.

    Args:
        model: the network, on the CPU, as built; data: the :class:`~framework.data.DataBundle`;
        task: the built task; target: ``model._target_``, for the messages.

    Raises:
        ConfigError: the forward fails (an input the model does not take), the outputs are not
            ``(1, num_classes)``, or the loss fails (e.g. a class label out of range).
    """
    from framework.errors import first_line

    x, y = data.train[0]
    x, y = torch.as_tensor(x)[None], torch.as_tensor(y)[None]
    model.eval()
    try:
        with torch.no_grad():
            try:
                first = next(model.parameters())
                outputs = model(x.to(first.device, first.dtype))
            except Exception as exc:
                raise ConfigError(f"model._target_={target}: a training sample of shape {tuple(x.shape[1:])} does not "
                                  f"go through it ({type(exc).__name__}: {first_line(exc)[:160]}); make the model take "
                                  "the dataset's input (in_chans, img_size)")
            K = data.num_classes
            if tuple(outputs.shape) not in ((1, K),) + (((1,),) if K == 1 else ()):
                raise ConfigError(f"model._target_={target}: gives outputs of shape {tuple(outputs.shape)} for one "
                                  f"sample; the task needs (1, {K}) (num_classes = {K}, from the dataset); size its "
                                  "last layer by num_classes")
            try:
                task.loss(outputs.float(), y.to(outputs.device))
            except Exception as exc:
                raise ConfigError(f"task._target_={type(task).__module__}.{type(task).__qualname__}: its loss fails on "
                                  f"the first training sample (label {y[0].tolist()}; {type(exc).__name__}: "
                                  f"{first_line(exc)[:160]}); check the dataset's labels (class indices in [0, {K}))")
    finally:
        model.train()
