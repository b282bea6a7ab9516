"""timm's augmentation policies for training images (``dataset.auto_augment``: RandAugment,
TrivialAugment, AugMix, AutoAugment) and random erasing (``dataset.re_prob``, ``re_mode``,
``re_count``), shared by the image-file datasets and the torchvision sets; presets in
``conf/augment/`` (``augment=randaugment``)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from framework.errors import ConfigError

#: The dataset keys the ``augment=`` presets set (timm's names), ``augment`` (training
#: augmentation on) first.
AUGMENT_KEYS = ("augment", "auto_augment", "re_prob", "re_mode", "re_count")

#: timm's random-erasing fill modes: ``const`` zeros (the mean colour after normalisation),
#: ``rand`` one normal colour per channel, ``pixel`` normal noise per pixel.
RE_MODES = ("const", "rand", "pixel")

#: ``dataset.auto_augment`` examples for the messages (timm's policy strings).
POLICY_EXAMPLES = ("rand-m9-mstd0.5-inc1 (RandAugment), rand-m10-n1-p1-mstd101-inc1 (TrivialAugment), "
                   "augmix-m3-w3 (AugMix), original or v0 (AutoAugment)")


def check_augment(augment: bool, auto_augment: Optional[str], re_prob: float, re_mode: str, re_count: int) -> None:
    """The augmentation keys of a dataset: in range, and only with ``augment`` on.

    Args:
        augment: training augmentation on (``dataset.augment``).
        auto_augment: timm's policy string, or None (no policy).
        re_prob: random-erasing probability per image, in [0, 1] (0 = off).
        re_mode: random-erasing fill, one of :data:`RE_MODES`.
        re_count: most erased rectangles per image (timm draws 1 to ``re_count``), >= 1.

    Raises:
        ConfigError: ``auto_augment`` not a non-empty string; ``re_prob`` outside [0, 1];
            ``re_mode`` not one of :data:`RE_MODES`; ``re_count`` not an integer >= 1; a
            policy or random erasing with ``augment`` off (set ``dataset.augment=true``).
    """
    if auto_augment is not None and (not isinstance(auto_augment, str) or not auto_augment.strip()):
        raise ConfigError(f"dataset.auto_augment={auto_augment}: must be a timm policy string, e.g. "
                          f"{POLICY_EXAMPLES}, or null (none)")
    if isinstance(re_prob, bool) or not isinstance(re_prob, (int, float)) or not 0 <= re_prob <= 1:
        raise ConfigError(f"dataset.re_prob={re_prob}: must be a probability in [0, 1] (0 = no random erasing), "
                          "e.g. 0.25")
    if re_mode not in RE_MODES:
        raise ConfigError(f"dataset.re_mode={re_mode}: use {', '.join(RE_MODES)} (timm's random-erasing fill)")
    if isinstance(re_count, bool) or not isinstance(re_count, int) or re_count < 1:
        raise ConfigError(f"dataset.re_count={re_count}: must be an integer >= 1 (most erased rectangles per image)")
    if not augment and (auto_augment or re_prob > 0):
        key, value = ("auto_augment", auto_augment) if auto_augment else ("re_prob", re_prob)
        raise ConfigError(f"dataset.{key}={value}: is training augmentation, which dataset.augment=false turns off; "
                          f"set dataset.augment=true, or dataset.{key}={'null' if key == 'auto_augment' else 0}")


def built(make: Callable[[], Any], auto_augment: Optional[str]) -> Any:
    """``make()`` (a timm transform factory call), with a policy string timm refuses turned into
    a ConfigError, and its Posterize ops made safe for Pillow >= 13 (:func:`pillow_safe`).

    Args:
        make: builds the transform (``lambda: create_transform(..., auto_augment=...)``).
        auto_augment: the policy string it was given (for the message).

    Returns:
        What ``make()`` returns, its timm policies patched in place.

    Raises:
        ConfigError: ``dataset.auto_augment`` is not a policy timm knows (timm asserts, or
            fails to parse a number); use one of :data:`POLICY_EXAMPLES`.
    """
    try:
        transform = make()
    except (AssertionError, KeyError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"dataset.auto_augment={auto_augment}: not a timm augmentation policy ({reason}); use e.g. "
                          f"{POLICY_EXAMPLES}, or null") from None
    return pillow_safe(transform)


def policy_transform(auto_augment: Optional[str], chans: int, size: int, mean: list[float]) -> Optional[Any]:
    """timm's augmentation policy alone (no crop, flip or normalisation), for images kept as
    tensors (:class:`~framework.data.base.ImageTensorDataset`): PIL image in, PIL image out.

    It is the ``secondary`` stage of ``timm.data.create_transform(is_training=True,
    separate=True)``, so the policy string means what it means for ``dataset=imagefolder``:
    translations up to ``0.45 * size`` pixels, uncovered pixels filled with ``mean``.

    Args:
        auto_augment: timm's policy string; None = no policy (returns None).
        chans: image channels ``C`` (1: PIL mode ``L``, 3: ``RGB``).
        size: the side of the images it is applied to, pixels.
        mean: per-channel mean of the images in [0, 1], ``C`` floats (the fill colour).

    Returns:
        The transform (a ``torchvision.transforms.Compose``), or None.

    Raises:
        ConfigError: a policy string timm refuses (:func:`built`).
    """
    if not auto_augment:
        return None
    from timm.data import create_transform

    def make():
        _, policy, _ = create_transform((chans, size, size), is_training=True, auto_augment=auto_augment,
                                        color_jitter=None, mean=tuple(mean), std=(1.0,) * chans, separate=True)
        return policy

    return built(make, auto_augment)


def random_erasing(re_prob: float, re_mode: str, re_count: int) -> Optional[Any]:
    """timm's ``RandomErasing`` as ``create_transform`` builds it (on CPU), or None for
    ``re_prob == 0``: on a normalised float ``(C, H, W)`` tensor, with probability ``re_prob``
    erases 1 to ``re_count`` rectangles of 2 %-33 % of the area (in place).

    Args:
        re_prob: probability per image, in [0, 1].
        re_mode: fill, one of :data:`RE_MODES`.
        re_count: most rectangles per image, >= 1.

    Source: Zhong et al., "Random Erasing Data Augmentation", AAAI 2020; timm
    ``timm/data/random_erasing.py``.
    """
    if not re_prob:
        return None
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(re_prob, mode=re_mode, max_count=re_count, device="cpu")


def posterize(img, bits_to_keep: int, **_):
    """timm's ``posterize`` op with Pillow < 13's meaning of 0 bits (every pixel 0) that Pillow
    13's ``ImageOps.posterize`` refuses (``ValueError: bits must be between or equal to 1 and 8``).

    timm 1.0.x asks for 0 bits at the top of its magnitude scale (``PosterizeIncreasing`` at
    magnitude 10, which ``rand-m9-mstd0.5`` reaches once its noise is clipped; ``Posterize`` under
    magnitude 2.5), which would end a training run in a loader worker.

    Args:
        img: a PIL image (``L`` or ``RGB``).
        bits_to_keep: most significant bits kept per channel, 0 to 8.

    Returns:
        The posterized PIL image (all zeros for 0 bits).
    """
    from timm.data import auto_augment as aa

    if bits_to_keep < 1:
        return img.point(lambda _: 0)
    return aa.posterize(img, bits_to_keep)


def pillow_safe(transform: Any) -> Any:
    """``transform`` (a Compose, or a timm policy) with the Posterize ops of its timm policies
    (RandAugment, AugMix, AutoAugment) switched to :func:`posterize`; returned for chaining."""
    from timm.data import auto_augment as aa

    for t in getattr(transform, "transforms", [transform]):
        if isinstance(t, (aa.RandAugment, aa.AugMixAugment)):
            ops = t.ops
        elif isinstance(t, aa.AutoAugment):
            ops = [op for sub_policy in t.policy for op in sub_policy]
        else:
            continue
        for op in ops:
            if op.aug_fn is aa.posterize:
                op.aug_fn = posterize
    return transform
