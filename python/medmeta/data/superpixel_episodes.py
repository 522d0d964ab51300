"""Self-supervised few-shot segmentation episodes from superpixel pseudo-labels (SSL-ALPNet).

Ouyang, Biffi, Chen, Kart, Qiu and Rueckert, "Self-supervision with Superpixels: Training
Few-shot Medical Image Segmentation without Annotation", ECCV 2020. No annotation is used:
each slice is over-segmented into Felzenszwalb superpixels (Felzenszwalb and Huttenlocher,
IJCV 2004), an episode picks one superpixel (N with ``ways=N``) of one slice as the
pseudo-class, and the support and the query are *different random augmentations of that same
slice*, the label map transformed with the image. A model trained on these episodes learns to
find a region again after a geometric and intensity change, which transfers to organs.

The episodes are :class:`~medmeta.data.segmentation_episodes.SegmentationEpisodeBatch`, the
batch type of the supervised :class:`~medmeta.data.SegmentationEpisodeSampler`, so PANet /
ALPNet learners train on either without change.

Superpixels are computed lazily, the first time a slice is drawn, and kept in a memory-bounded
cache (``uint16`` maps, least recently used evicted past ``cache_bytes``). The computation is
deterministic, so the cache never changes the episode stream: every random choice comes from
``self.generator`` and :meth:`state_dict` / :meth:`load_state_dict` resume exactly.

scikit-image is imported lazily (``pip install "medmeta[seg]"``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import dataset_origin
from .episodes import SeededSampler
from .errors import DataError, check_count
from .segmentation_episodes import SegmentationEpisodeBatch, _image_tensor

__all__ = ["SuperpixelEpisodeSampler"]

logger = logging.getLogger(__name__)

#: Smallest accepted image side (pixels): Felzenszwalb superpixels of ``min_size`` pixels and
#: random affine warps make no sense on smaller images.
MIN_SIDE = 16
#: Random slice draws per episode before the sampler scans every slice for eligible ones.
SLICE_DRAWS = 32
#: SSL-ALPNet's Felzenszwalb ``min_size`` (pixels) at their 256 x 256 resolution; the default
#: ``min_size`` scales it by the image area (100 pixels at 128 x 128).
_REF_MIN_SIZE, _REF_AREA = 400, 256 * 256

_SEG_EXTRA = (
    "SuperpixelEpisodeSampler needs scikit-image (and scipy) for Felzenszwalb superpixels; "
    'install the segmentation extra: pip install "medmeta[seg]"'
)


def _superpixel_backend() -> tuple[Any, Any, Any]:
    """``(felzenszwalb, threshold_otsu, scipy.ndimage)``, imported lazily."""
    try:
        from scipy import ndimage
        from skimage.filters import threshold_otsu
        from skimage.segmentation import felzenszwalb
    except ImportError as error:
        raise ImportError(_SEG_EXTRA) from error
    return felzenszwalb, threshold_otsu, ndimage


def _check_float(
    name: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False
) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    if not (v > low if open_low else v >= low) or not v <= high:
        bounds = f"{'(' if open_low else '['}{low}, {high}]"
        raise DataError(f"{name} must be a number in {bounds}, got {value!r}", name)
    return v


def _check_range(name: str, value: Any) -> tuple[float, float]:
    """A ``(low, high)`` pair with ``0 < low <= high``."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not 0.0 < lo <= hi < math.inf:
        raise DataError(
            f"{name} must be a pair (low, high) with 0 < low <= high, got {value!r}", name
        )
    return lo, hi


class SuperpixelEpisodeSampler(SeededSampler):
    """Samples meta-batches of self-supervised superpixel episodes (SSL-ALPNet, ECCV 2020).

    Per episode: a slice with at least ``ways`` candidate superpixels is drawn, then ``ways``
    distinct candidates (episode classes 1..N). The support is ``N * K`` random augmentations
    of the slice (class-major, each with a binary mask of its class); the query is ``Q``
    further augmentations labelled ``0..N`` (0 = every other pixel, air included). Each
    augmentation warps image and label map together: a random affine (rotation, shear,
    isotropic zoom, shift; ``affine_grid`` / ``grid_sample``, bilinear for the image, nearest
    for labels, zeros outside) plus a smooth random displacement ("elastic-lite"), then, on
    the image only, gamma, contrast, brightness and Gaussian noise. A support image that lost
    every pixel of its class is re-drawn (``max_retries`` times) and finally left unwarped.

    Superpixels and body mask (per slice, on the slice min-max rescaled to [0, 1], so the
    parameters mean the same for uint8, uint16 and float input; colour images are segmented
    in colour, thresholded on their channel mean):

    * Felzenszwalb superpixels with ``scale``, ``sigma`` and ``min_size``;
    * a body mask: pixels above ``body_threshold`` (a fraction of the range, or ``"otsu"``
      for Otsu's threshold of the slice, e.g. fluorescence microscopy, with
      ``largest_body=False``), reduced to the largest 8-connected component with its holes
      filled (``largest_body=True``, as SSL-ALPNet's ``fg_mask2d``); pixels outside it belong
      to no superpixel;
    * a superpixel (its part inside the body) is a candidate when it has at least
      ``min_foreground`` and at most ``max_fraction * H * W`` pixels.

    Defaults follow SSL-ALPNet's released configuration: ``felzenszwalb(min_size=400,
    sigma=1)`` (scale 1) at 256 x 256, hence ``min_size = 400 * H * W / 256**2`` (100 at
    128 x 128: about 30 superpixels of ~400 pixels per CHAOS MR slice), and its default
    augmentation ``sabs_aug``: rotation and shear +-5 degrees, shift +-5 / 256 of the side,
    zoom 0.9-1.2, gamma 0.5-1.5. ``body_threshold = 0.05`` separates air from body on CHAOS
    T2 slices (SSL-ALPNet thresholds its normalised intensities the same way). Their elastic
    deformation (alpha 10, sigma 5) moves pixels by ~0.3 pixel; ``elastic`` is the standard
    deviation in pixels of a random field on a coarse grid (one node per 16 pixels),
    bicubically upsampled (default 1 pixel: a little more variety, no tearing). Contrast
    (+-10 %), brightness (+-5 % of the range) and noise (1 % of the range) are mild additions
    to SSL-ALPNet's gamma-only intensity change.

    Args:
        dataset: a :class:`~medmeta.data.SegmentationDataset` (its masks are ignored),
            anything with ``images``, or the images themselves: ``[N, H, W]`` or
            ``[N, H, W, C]`` numpy array / tensor (uint8 / 255, uint16 / 65535, other dtypes
            cast unchanged to float32).
        ways, shots, queries: N superpixels per episode, K support and Q query augmentations.
        batch_size: episodes per meta-batch B.
        generator: a ``torch.Generator`` or an int seed (``None`` -> seed 0).
        min_foreground: minimum pixels of a candidate superpixel (inside the body).
        max_fraction: maximum share of the image a candidate superpixel may cover.
        scale, sigma, min_size: Felzenszwalb parameters (``min_size=None``: area-scaled 400).
        body_threshold: body-mask threshold on the [0, 1]-rescaled slice; ``"otsu"``: Otsu's
            threshold of each slice (fluorescence microscopy); ``None``: no mask.
        largest_body: keep only the largest body component, holes filled (off for images of
            many separate objects such as nuclei).
        augment: ``False`` returns the slice itself as every support and query image.
        rotation, shear: maximum angles in degrees (uniform in ``[-a, a]``).
        shift: maximum translation as a fraction of the side.
        zoom: ``(low, high)`` isotropic zoom of the content.
        elastic: std (pixels) of the smooth random displacement; 0 disables it.
        gamma: ``(low, high)`` gamma range, applied on the image's own [min, max].
        contrast, brightness: maximum contrast change (factor ``1 +- contrast``) and
            brightness offset, in units of the image's intensity range.
        noise_std: std of the additive Gaussian noise, in units of the intensity range.
        max_retries: re-draws of a support warp that lost its superpixel.
        cache_bytes: memory bound of the superpixel cache (0: no cache).

    Attributes:
        last_slices: ``[B]`` int64 dataset indices of the slices of the last :meth:`sample`.

    Raises:
        DataError: bad arguments, images not ``[N, H, W(, C)]`` or smaller than 16 x 16, a
            candidate size range that is empty, non-finite pixels, or (when sampling) no
            slice with ``ways`` candidate superpixels.
        ImportError: scikit-image is missing (``pip install "medmeta[seg]"``).
    """

    def __init__(
        self,
        dataset: Any,
        ways: int = 1,
        shots: int = 1,
        queries: int = 1,
        *,
        batch_size: int = 1,
        generator: torch.Generator | int | None = None,
        min_foreground: int = 32,
        max_fraction: float = 0.5,
        scale: float = 1.0,
        sigma: float = 1.0,
        min_size: int | None = None,
        body_threshold: float | Literal["otsu"] | None = 0.05,
        largest_body: bool = True,
        augment: bool = True,
        rotation: float = 5.0,
        shear: float = 5.0,
        shift: float = 5 / 256,
        zoom: tuple[float, float] = (0.9, 1.2),
        elastic: float = 1.0,
        gamma: tuple[float, float] = (0.5, 1.5),
        contrast: float = 0.1,
        brightness: float = 0.05,
        noise_std: float = 0.01,
        max_retries: int = 10,
        cache_bytes: int = 256 * 1024**2,
    ) -> None:
        self._felzenszwalb, self._otsu, self._ndimage = _superpixel_backend()
        self.ways = check_count("ways", ways, 1)
        self.shots = check_count("shots", shots, 1)
        self.queries = check_count("queries", queries, 1)
        self.batch_size = check_count("batch_size", batch_size, 1)
        self.min_foreground = check_count("min_foreground", min_foreground, 1)
        self.max_fraction = _check_float("max_fraction", max_fraction, 0.0, 1.0, open_low=True)
        self.max_retries = check_count("max_retries", max_retries, 0)
        self.cache_bytes = check_count("cache_bytes", cache_bytes, 0)
        self.augment = bool(augment)
        self.largest_body = bool(largest_body)
        self._origin = dataset_origin(dataset)
        self._load_images(getattr(dataset, "images", dataset))
        self._check_superpixel_args(scale, sigma, min_size, body_threshold)
        self.rotation = _check_float("rotation", rotation, 0.0, 180.0)
        self.shear = _check_float("shear", shear, 0.0, 60.0)
        self.shift = _check_float("shift", shift, 0.0, 1.0)
        self.zoom = _check_range("zoom", zoom)
        self.elastic = _check_float("elastic", elastic, 0.0)
        self.gamma = _check_range("gamma", gamma)
        self.contrast = _check_float("contrast", contrast, 0.0, 1.0)
        self.brightness = _check_float("brightness", brightness, 0.0)
        self.noise_std = _check_float("noise_std", noise_std, 0.0)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_used = 0
        #: candidate superpixels per slice (-1: not computed yet); survives cache eviction.
        self._n_candidates = np.full(self._images.shape[0], -1, dtype=np.int64)
        self.last_slices: torch.Tensor | None = None
        if isinstance(generator, torch.Generator):
            self.generator = generator
        else:
            self.generator = torch.Generator().manual_seed(
                0 if generator is None else int(generator)
            )

    def _load_images(self, images: Any) -> None:
        """Keep the images as a tensor (no copy) and check their shape."""
        shape = tuple(int(s) for s in getattr(images, "shape", np.shape(images)))
        if len(shape) not in (3, 4) or shape[0] < 1:
            raise DataError(
                f"images must be [N, H, W] or [N, H, W, C] with N >= 1, got shape {shape}",
                "images",
            )
        self._images, self._scale, self._channels_last = _image_tensor(images, shape[:3])
        self.height, self.width = shape[1], shape[2]
        if min(shape[1], shape[2]) < MIN_SIDE:
            raise DataError(
                f"images must be at least {MIN_SIDE} x {MIN_SIDE} pixels for superpixel "
                f"episodes, got {shape[1]} x {shape[2]}",
                "images",
            )

    def _check_superpixel_args(
        self, scale: float, sigma: float, min_size: int | None, body_threshold: Any
    ) -> None:
        self.scale = _check_float("scale", scale, 0.0, open_low=True)
        self.sigma = _check_float("sigma", sigma, 0.0)
        area = self.height * self.width
        if min_size is None:
            min_size = max(1, round(_REF_MIN_SIZE * area / _REF_AREA))
        self.min_size = check_count("min_size", min_size, 1)
        self.body_threshold: float | str | None = body_threshold
        if body_threshold is not None and body_threshold != "otsu":
            self.body_threshold = _check_float("body_threshold", body_threshold, 0.0, 1.0)
        #: the largest candidate superpixel, in pixels.
        self.max_pixels = int(self.max_fraction * area)
        if self.max_pixels < self.min_foreground:
            raise DataError(
                f"min_foreground = {self.min_foreground} pixels exceeds max_fraction * H * W = "
                f"{self.max_fraction} * {area} = {self.max_pixels}: no superpixel can qualify",
                "min_foreground",
            )

    # ------------------------------------------------------------------ superpixels

    def superpixels(self, index: int) -> np.ndarray:
        """The pseudo-label map of slice ``index``: ``[H, W]`` ints, 0 outside the body mask,
        ``1..S`` the superpixels (the ids reported in ``SegmentationEpisodeBatch.classes``)."""
        return self._slice(int(index))[0].copy()

    def candidates(self, index: int) -> np.ndarray:
        """``[S']`` int64 ids of the candidate superpixels of slice ``index`` (ascending)."""
        return self._slice(int(index))[1].copy()

    def precompute(self) -> int:
        """Compute the superpixels of every slice now (instead of lazily); returns the number
        of slices with at least ``ways`` candidates and raises when there is none."""
        return len(self._eligible_slices())

    def _slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(label map [H, W] uint16 / int32, candidate ids [S'] int64)`` of slice ``i``."""
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        labels, cand = self._compute(i)
        self._n_candidates[i] = len(cand)
        size = labels.nbytes + cand.nbytes
        if size <= self.cache_bytes:
            self._cache[i] = (labels, cand)
            self._cache_used += size
            while self._cache_used > self.cache_bytes:
                _, (old_labels, old_cand) = self._cache.popitem(last=False)
                self._cache_used -= old_labels.nbytes + old_cand.nbytes
        return labels, cand

    def _compute(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Felzenszwalb superpixels of slice ``i`` restricted to its body mask."""
        x = self._images[i].numpy().astype(np.float64)  # [H, W] or [H, W, C]
        if not np.isfinite(x).all():
            raise DataError(f"slice {i} has NaN or infinite pixels", "images")
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
        seg = self._felzenszwalb(
            x,
            scale=self.scale,
            sigma=self.sigma,
            min_size=self.min_size,
            channel_axis=-1 if self._channels_last else None,
        )
        body = self._body_mask(x.mean(-1) if self._channels_last else x)
        labels = np.where(body, seg.astype(np.int64) + 1, 0)
        counts = np.bincount(labels.ravel(), minlength=2)
        counts[0] = 0
        cand = np.flatnonzero((counts >= self.min_foreground) & (counts <= self.max_pixels))
        dtype = np.uint16 if len(counts) <= 65536 else np.int32
        logger.debug("slice %d: %d superpixels, %d candidates", i, len(counts) - 1, len(cand))
        return labels.astype(dtype), cand.astype(np.int64)

    def _body_mask(self, gray: np.ndarray) -> np.ndarray:
        """``[H, W]`` bool body mask of a [0, 1]-rescaled slice (SSL-ALPNet's ``fg_mask2d``)."""
        if self.body_threshold is None:
            return np.ones(gray.shape, dtype=bool)
        if self.body_threshold != "otsu":
            mask = gray > self.body_threshold
        elif gray.max() > gray.min():
            mask = gray > self._otsu(gray)
        else:  # a constant slice has no foreground
            mask = np.zeros(gray.shape, dtype=bool)
        if self.largest_body and mask.any():
            comp, _ = self._ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
            largest = int(np.bincount(comp.ravel())[1:].argmax()) + 1
            mask = self._ndimage.binary_fill_holes(comp == largest)
        return mask

    def _eligible_slices(self) -> np.ndarray:
        """Indices of every slice with >= ``ways`` candidates (computes the unknown ones)."""
        todo = np.flatnonzero(self._n_candidates < 0)
        if len(todo):
            logger.info("computing superpixels of %d slices to find eligible ones", len(todo))
        for i in todo.tolist():
            self._slice(i)
        ok = np.flatnonzero(self._n_candidates >= self.ways)
        if not len(ok):
            raise DataError(
                f"no slice has ways = {self.ways} candidate superpixel(s) (inside the body mask "
                f"with min_foreground = {self.min_foreground} to max_fraction * H * W = "
                f"{self.max_pixels} pixels) among {len(self._n_candidates)} slice(s); lower "
                "min_foreground or min_size, or check body_threshold",
                self._origin,
            )
        return ok

    def _pick_slice(self, g: torch.Generator) -> tuple[int, np.ndarray, np.ndarray]:
        """A random slice with >= ``ways`` candidates: up to ``SLICE_DRAWS`` uniform draws
        (always consumed, so the stream never depends on what is cached), then a uniform draw
        among all eligible slices."""
        draws = torch.randint(len(self._n_candidates), (SLICE_DRAWS,), generator=g).tolist()
        for i in draws:
            if 0 <= self._n_candidates[i] < self.ways:
                continue
            labels, cand = self._slice(i)
            if len(cand) >= self.ways:
                return i, labels, cand
        ok = self._eligible_slices()
        i = int(ok[int(torch.randint(len(ok), (1,), generator=g))])
        return i, *self._slice(i)

    # ------------------------------------------------------------------ episodes

    def sample(self) -> SegmentationEpisodeBatch:
        """One meta-batch of ``batch_size`` episodes.

        Returns a :class:`SegmentationEpisodeBatch`: ``support_x [B, N*K, C, H, W]`` float32,
        ``support_masks [B, N*K, H, W]`` binary int64, ``support_labels [B, N*K, H, W]`` in
        ``0..N``, ``query_x [B, Q, C, H, W]``, ``query_masks [B, Q, H, W]`` in ``0..N`` and
        ``classes [B, N]`` int64: the superpixel ids (see :meth:`superpixels`) of the
        episode classes 1..N, in the slice ``last_slices[b]``.
        """
        B, N, K, Q = self.batch_size, self.ways, self.shots, self.queries
        M, g = N * K + Q, self.generator
        slices, chosen, maps = [], [], []
        for _ in range(B):
            i, labels, cand = self._pick_slice(g)
            ids = cand[torch.randperm(len(cand), generator=g)[:N].numpy()]
            lut = np.zeros(int(labels.max()) + 1, dtype=np.int64)
            lut[ids] = np.arange(1, N + 1)
            slices.append(i)
            chosen.append(ids)
            maps.append(torch.from_numpy(lut[labels]))
        self.last_slices = torch.tensor(slices, dtype=torch.int64)
        x = self._features(self.last_slices)  # [B, C, H, W]
        H, W = x.shape[-2:]
        xs = x.unsqueeze(1).expand(B, M, *x.shape[1:]).reshape(B * M, *x.shape[1:])
        ys = torch.stack(maps).unsqueeze(1).expand(B, M, H, W).reshape(B * M, H, W)
        own = torch.cat([torch.arange(1, N + 1).repeat_interleave(K), torch.zeros(Q)]).long()
        if self.augment:
            xs, ys = self._augment(xs, ys, own.repeat(B))
        xs, ys = xs.reshape(B, M, *x.shape[1:]), ys.reshape(B, M, H, W)
        support_labels = ys[:, : N * K].contiguous()
        return SegmentationEpisodeBatch(
            support_x=xs[:, : N * K].contiguous(),
            support_masks=(support_labels == own[: N * K].view(1, -1, 1, 1)).long(),
            support_labels=support_labels,
            query_x=xs[:, N * K :].contiguous(),
            query_masks=ys[:, N * K :].contiguous(),
            classes=torch.from_numpy(np.stack(chosen)).long(),
            ways=N,
            shots=K,
            queries=Q,
        )

    def _features(self, idx: torch.Tensor) -> torch.Tensor:
        """Slices ``idx`` (``[B]``) as float32 ``[B, C, H, W]`` (uint scaled to [0, 1])."""
        x = self._images[idx].float()
        if self._scale != 1.0:
            x = x / self._scale
        return (x.permute(0, 3, 1, 2) if self._channels_last else x.unsqueeze(1)).contiguous()

    def _augment(
        self, x: torch.Tensor, y: torch.Tensor, own: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp images ``x [M, C, H, W]`` and label maps ``y [M, H, W]`` identically, then
        change the images' intensity. ``own [M]``: the class each image must keep (0: none)."""
        grid = self._random_grids(len(x))
        lab = _warp_labels(y, grid)

        def lost() -> torch.Tensor:
            kept = (lab == own.view(-1, 1, 1)).flatten(1).any(1)
            return (own > 0) & ~kept

        for _ in range(self.max_retries):
            bad = lost()
            if not bad.any():
                break
            grid[bad] = self._random_grids(int(bad.sum()))
            lab[bad] = _warp_labels(y[bad], grid[bad])
        bad = lost()
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if bad.any():
            logger.debug("%d support warp(s) lost their superpixel: left unwarped", int(bad.sum()))
            lab[bad], out[bad] = y[bad], x[bad]
        return self._intensity(out), lab

    def _random_grids(self, n: int) -> torch.Tensor:
        """``n`` random sampling grids ``[n, H, W, 2]``: affine (rotation, shear, zoom, shift)
        plus a smooth displacement field; built in pixel units, so non-square images are not
        sheared by the normalised coordinates."""
        g, H, W = self.generator, self.height, self.width
        u = torch.rand(n, 5, generator=g, dtype=torch.float64) * 2 - 1  # uniform [-1, 1)
        angle = u[:, 0] * math.radians(self.rotation)
        shear = u[:, 1] * math.radians(self.shear)
        zoom = self.zoom[0] + (u[:, 2] + 1) / 2 * (self.zoom[1] - self.zoom[0])
        half = torch.tensor([W / 2, H / 2], dtype=torch.float64)
        move = u[:, 3:5] * self.shift * 2 * half  # [n, 2] pixels (x, y)
        cos, sin, one = torch.cos(angle), torch.sin(angle), torch.ones_like(angle)
        rot = torch.stack([cos, -sin, sin, cos], -1).view(n, 2, 2)
        skew = torch.stack([one, torch.tan(shear), 0 * one, one], -1).view(n, 2, 2)
        inv = torch.linalg.inv(zoom.view(n, 1, 1) * rot @ skew)  # output -> input pixels
        theta = torch.empty(n, 2, 3, dtype=torch.float64)
        theta[:, :, :2] = inv * half.view(1, 1, 2) / half.view(1, 2, 1)
        theta[:, :, 2] = -(inv @ move.unsqueeze(-1)).squeeze(-1) / half
        grid = F.affine_grid(theta.float(), [n, 1, H, W], align_corners=False)
        if self.elastic > 0:
            coarse = (max(2, H // 16), max(2, W // 16))
            field = torch.randn(n, 2, *coarse, generator=g) * self.elastic
            field = F.interpolate(field, size=(H, W), mode="bicubic", align_corners=False)
            grid = grid + (field / half.float().view(1, 2, 1, 1)).permute(0, 2, 3, 1)
        return grid

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        """Gamma (on each image's [min, max]), contrast, brightness and noise: ``[M, C, H, W]``."""
        g, n = self.generator, len(x)
        u = torch.rand(n, 3, generator=g)
        gamma = self.gamma[0] + u[:, 0] * (self.gamma[1] - self.gamma[0])
        contrast = 1 + (2 * u[:, 1] - 1) * self.contrast
        bright = (2 * u[:, 2] - 1) * self.brightness
        flat = x.flatten(1)
        low = flat.min(1).values.view(n, 1, 1, 1)
        span = (flat.max(1).values.view(n, 1, 1, 1) - low).clamp_min(1e-8)
        z = ((x - low) / span).clamp(0, 1) ** gamma.view(n, 1, 1, 1)
        mean = z.mean((1, 2, 3), keepdim=True)
        z = (z - mean) * contrast.view(n, 1, 1, 1) + mean + bright.view(n, 1, 1, 1)
        if self.noise_std > 0:
            z = z + self.noise_std * torch.randn(x.shape, generator=g)
        return z * span + low


def _warp_labels(y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Label maps ``y [M, H, W]`` int64 resampled (nearest, 0 outside) on ``grid [M, H, W, 2]``."""
    out = F.grid_sample(
        y.unsqueeze(1).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out.squeeze(1).round().long()
