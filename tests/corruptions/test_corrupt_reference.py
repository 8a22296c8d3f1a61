"""Each deterministic corruption against an independent formulation (SciPy, Pillow, the
generator's numpy code written plainly) or a hand-computed case on a tiny image."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

scipy_ndimage = pytest.importorskip("scipy.ndimage")

from testtime.corruptions import (  # noqa: E402
    PARAMS,
    _ops,  # noqa: E402
    corrupt,
)
from testtime.corruptions.blur import glass_shuffle, zoom_factors  # noqa: E402


def to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).double() / 255


def test_contrast_hand_computed():
    x = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]], dtype=torch.float32)  # (1, 1, 2, 2), mean 0.5
    from testtime.corruptions.digital import contrast

    out = contrast(x, 0.15, None)
    expected = torch.tensor([[[[0.455, 0.485], [0.515, 0.545]]]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_brightness_and_saturate_hand_computed():
    img = torch.zeros(1, 3, 32, 32)
    img[0, :, 0, 0] = torch.tensor([0.2, 0.4, 0.6])  # h = 7/12, s = 2/3, v = 0.6; the rest is black
    b = corrupt(img, "brightness", 1, params="cifar")  # v + 0.05
    torch.testing.assert_close(b[0, :, 0, 0], torch.tensor([0.65 / 3, 0.65 * 2 / 3, 0.65]), atol=1e-6, rtol=0)
    torch.testing.assert_close(b[0, :, 5, 5], torch.full((3,), 0.05), atol=1e-6, rtol=0)  # black -> grey v
    s = corrupt(img, "saturate", 1, params="cifar")  # s * 0.3 = 0.2, same hue and value
    torch.testing.assert_close(s[0, :, 0, 0], torch.tensor([0.48, 0.54, 0.6]), atol=1e-6, rtol=0)


def test_hsv_round_trip_matches_definition():
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(_ops.hsv_to_rgb(_ops.rgb_to_hsv(x)), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("sev", range(1, 6))
def test_gaussian_blur_matches_scipy(cifar_images, sev):
    x = cifar_images[:4]
    sigma = PARAMS["gaussian_blur"]["cifar"][sev - 1]
    ref = scipy_ndimage.gaussian_filter(x / 255.0, sigma=(0, sigma, sigma, 0), mode="nearest", truncate=4.0)
    out = corrupt(to_nchw(x), "gaussian_blur", sev).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-6)  # float32 inside


def _disk_reference(radius, alias_blur):
    # the generator's disk, with OpenCV's 3x3 Gaussian written as a SciPy correlation (mode mirror)
    ls = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    ks = 3 if radius <= 8 else 5
    xx, yy = np.meshgrid(ls, ls)
    d = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    d /= d.sum()
    g = np.exp(-((np.arange(ks) - ks // 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    return scipy_ndimage.correlate(d, np.outer(g, g), mode="mirror")


@pytest.mark.parametrize("sev", range(1, 6))
def test_defocus_blur_matches_scipy(cifar_images, sev):
    x = cifar_images[:3]
    r, a = PARAMS["defocus_blur"]["cifar"][sev - 1]
    k = _disk_reference(r, a)
    ref = np.stack([scipy_ndimage.correlate(x[..., c] / 255.0, k[None], mode="mirror") for c in range(3)], -1)
    out = corrupt(to_nchw(x), "defocus_blur", sev).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-6)


@pytest.mark.parametrize("sev", range(1, 6))
def test_pixelate_is_pillow_box_byte_exact(cifar_images, sev):
    x = cifar_images
    c = PARAMS["pixelate"]["cifar"][sev - 1]
    ref = np.stack(
        [np.asarray(Image.fromarray(im).resize((int(32 * c),) * 2, Image.BOX).resize((32, 32), Image.BOX)) for im in x]
    )
    np.testing.assert_array_equal(corrupt(x, "pixelate", sev), ref)


@pytest.mark.parametrize("sev", [1, 5])
def test_jpeg_is_pillow_round_trip(cifar_images, sev):
    x = cifar_images[:5]
    q = PARAMS["jpeg_compression"]["cifar"][sev - 1]
    ref = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=q)
        ref.append(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
    np.testing.assert_array_equal(corrupt(x, "jpeg_compression", sev), np.stack(ref))


def _clipped_zoom_reference(img, z):
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    out = scipy_ndimage.zoom(img[top : top + ch, top : top + ch], (z, z, 1), order=1)
    t = (out.shape[0] - h) // 2
    return out[t : t + h, t : t + h]


@pytest.mark.parametrize("sev", [1, 3, 5])
def test_zoom_blur_matches_scipy_zoom(cifar_images, sev):
    x = cifar_images[:2] / 255.0
    zs = zoom_factors(PARAMS["zoom_blur"]["cifar"][sev - 1])
    ref = np.stack([(im + sum(_clipped_zoom_reference(im, z) for z in zs)) / (len(zs) + 1) for im in x])
    out = corrupt(torch.from_numpy(x).permute(0, 3, 1, 2), "zoom_blur", sev).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-6)


MODES = [("reflect101", "mirror"), ("symmetric", "reflect"), ("edge", "nearest")]


@pytest.mark.parametrize(("mode", "scipy_mode"), MODES)
def test_bilinear_sampling_matches_map_coordinates(mode, scipy_mode):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 1, 9, 7, generator=g, dtype=torch.float64)
    ys = torch.rand(1, 20, 20, generator=g, dtype=torch.float64) * 14 - 3  # reaches outside
    xs = torch.rand(1, 20, 20, generator=g, dtype=torch.float64) * 12 - 3
    out = _ops.sample_bilinear(img, ys, xs, mode)[0, 0].numpy()
    ref = scipy_ndimage.map_coordinates(img[0, 0].numpy(), [ys[0].numpy(), xs[0].numpy()], order=1, mode=scipy_mode)
    np.testing.assert_allclose(out, ref, atol=1e-12)


MODES = [("reflect101", "mirror"), ("symmetric", "reflect"), ("edge", "nearest")]


@pytest.mark.parametrize(("mode", "scipy_mode"), MODES)
def test_separable_filter_with_wide_kernels(mode, scipy_mode):
    img = torch.rand(1, 1, 6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = _ops.gaussian_kernel1d(3.0, 3.0)  # radius 9, wider than the image
    out = _ops.separable(img, k, k, mode)[0, 0].numpy()
    ref = scipy_ndimage.gaussian_filter(img[0, 0].numpy(), 3.0, mode=scipy_mode, truncate=3.0)
    np.testing.assert_allclose(out, ref, atol=1e-12)


def test_motion_blur_kernel_and_offsets_hand_computed():
    k = _ops.motion_kernel(1, 1.0)  # width 2 * ceil(1) + 1 = 3, one-sided Gaussian
    w = np.exp(-(np.arange(3) ** 2) / 2.0)
    np.testing.assert_allclose(k.numpy(), w / w.sum())
    dx, dy = _ops.motion_offsets(3, torch.tensor([0.0, 90.0, 45.0]))
    assert dx.tolist() == [[0, 1, 2], [0, 0, 0], [0, 1, 1]]
    assert dy.tolist() == [[0, 0, 0], [0, 1, 2], [0, 1, 1]]
    # angle 0: out[x] = sum_i k_i * img[min(x + i, W - 1)] (edge virtual pixels)
    img = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    img[0, 0, 1, 3] = 1.0
    out = _ops.motion_blur(img, 1, 1.0, torch.tensor([0.0]))[0, 0]
    expect = torch.zeros(3, 4, dtype=torch.float64)
    expect[1] = torch.tensor([0.0, k[2], k[1] + k[2], 1.0])
    torch.testing.assert_close(out, expect)


def _glass_reference(x, delta, offsets):
    # the generator's loop, literally, on one numpy image (H, W, C), with the given offsets
    x = x.copy()
    h_, w_ = x.shape[:2]
    for it in range(offsets.shape[0]):
        k = 0
        for h in range(h_ - delta, delta, -1):
            for w in range(w_ - delta, delta, -1):
                dx, dy = offsets[it, k]
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
                k += 1
    return x


@pytest.mark.parametrize("delta", [1, 2])
def test_glass_shuffle_reproduces_numpy_semantics(cifar_images, delta):
    x = cifar_images[:3, :12, :10]  # (3, 12, 10, 3)
    npos = (12 - 2 * delta) * (10 - 2 * delta)
    offsets = torch.randint(-delta, delta, (2, npos, 2, 3), generator=torch.Generator().manual_seed(0))
    out = glass_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2).clone(), delta, offsets).permute(0, 2, 3, 1).numpy()
    for i in range(3):
        ref = _glass_reference(x[i], delta, offsets[:, :, :, i].numpy())
        np.testing.assert_array_equal(out[i], ref)


def test_plasma_fractal_range_and_corner():
    rng = _ops.Rng(torch.Generator().manual_seed(0), torch.device("cpu"))
    p = _ops.plasma_fractal(3, 32, 3.0, rng)
    assert p.shape == (3, 32, 32)
    assert torch.allclose(p.amin(dim=(1, 2)), torch.zeros(3, dtype=p.dtype))
    assert torch.allclose(p.amax(dim=(1, 2)), torch.ones(3, dtype=p.dtype))


def test_canny_step_edge_and_distance_transform_hand_computed():
    img = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    img[..., 4:] = 200.0  # vertical step between columns 3 and 4
    edges = _ops.canny(img, 50.0, 150.0)[0, 0]
    # |dx| = 800 on columns 3 and 4; non-maximum suppression keeps the left one (m > left, m >= right)
    assert edges[:, 3].all() and edges.sum() == 6
    zero = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    zero[0, 0, 0, 0] = True
    d = _ops.distance_transform(zero, 20.0)[0, 0]
    # OpenCV's fixed-point weights: a = 65536, b = round(1.4 * 65536) = 91750, c = round(2.1969 * 65536) = 143976
    a, b, c = 1.0, 91750 / 65536, 143976 / 65536
    assert d[0, 1] == a and d[1, 1] == pytest.approx(b, abs=1e-6) and d[1, 2] == pytest.approx(c, abs=1e-6)
    assert d[0, 2] == 2 * a and d[2, 2] == pytest.approx(2 * b, abs=1e-6) and d[4, 4] == pytest.approx(4 * b, abs=1e-6)
    assert d[3, 4] == pytest.approx(c + 2 * b, abs=1e-6)  # (3, 4) = (1, 2) + 2 x (1, 1)


def test_equalize_hist_hand_computed():
    img = torch.tensor([[[[0.0, 0.0], [1.0, 2.0]]]])
    # OpenCV: scale = 255 / (4 - 2); lut[1] = round(1 * 127.5) = 128, lut[2] = round(2 * 127.5) = 255
    assert _ops.equalize_hist(img)[0, 0].tolist() == [[0.0, 0.0], [128.0, 255.0]]


def test_noise_statistics():
    x = torch.full((64, 3, 32, 32), 0.5)
    n = corrupt(x, "gaussian_noise", 5, seed=0) - 0.5  # sigma 0.10 at 32 px, far from the clip
    assert abs(float(n.std()) - 0.10) < 0.002 and abs(float(n.mean())) < 0.002
    s = corrupt(x, "shot_noise", 5, seed=0)  # Poisson(0.5 * 50) / 50: mean 0.5, var 0.5 / 50
    assert abs(float(s.mean()) - 0.5) < 0.003 and abs(float(s.var()) - 0.01) < 0.001
    i = corrupt(x, "impulse_noise", 5, seed=0)  # 7% of values flipped, half to 0, half to 1
    assert abs(float((i != 0.5).float().mean()) - 0.07) < 0.003
    assert abs(float((i == 1).float().mean()) - 0.035) < 0.003


def test_frost_uses_the_first_five_photographs():
    from testtime.corruptions.frost import frost_textures

    tex = frost_textures(0.2)
    assert len(tex) == 5 and all(t.dtype == torch.uint8 and t.shape[2] == 3 for t in tex)
    # frost1.png is 900 x 600 -> 180 x 120 after OpenCV's resize by 0.2
    assert tuple(tex[0].shape[:2]) == (120, 180)
    x = torch.zeros(8, 3, 32, 32)
    out = corrupt(x, "frost", 1, seed=0)  # 1 * 0 + 0.2 * frost
    assert math.isclose(float(out.max()), 0.2 * float(max(t.max() for t in tex)) / 255, rel_tol=0.05)


@pytest.mark.parametrize("sev", [1, 2, 5])
def test_elastic_matches_scipy_composition(cifar_images, sev):
    # the generator's steps with SciPy: affine from 3 points, warp (bilinear, reflect-101), then
    # displacement fields gaussian(U(-1, 1), sigma, reflect, truncate 3) * alpha, map_coordinates
    x = cifar_images[:3] / 255.0
    n = len(x)
    alpha, sigma, jitter = PARAMS["elastic_transform"]["cifar"][sev - 1]
    rng = _ops.Rng(torch.Generator().manual_seed(11), torch.device("cpu"))
    jit = rng.uniform((n, 3, 2), -jitter, jitter).double().numpy()
    nx = rng.uniform((n, 1, 32, 32), -1.0, 1.0).double().numpy()
    ny = rng.uniform((n, 1, 32, 32), -1.0, 1.0).double().numpy()
    out = (
        corrupt(
            torch.from_numpy(x).permute(0, 3, 1, 2), "elastic_transform", sev, seed=torch.Generator().manual_seed(11)
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    cs, ss = np.float32([16, 16]), 32 // 3
    pts1 = np.float32([cs + ss, [cs[0] + ss, cs[1] - ss], cs - ss]).astype(np.float64)
    yy, xx = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    for i in range(n):
        m = np.linalg.solve(np.c_[pts1, np.ones(3)], pts1 + jit[i]).T  # (2, 3): [x y 1] -> [x' y']
        ainv = np.linalg.inv(m[:, :2])
        sx = ainv[0, 0] * (xx - m[0, 2]) + ainv[0, 1] * (yy - m[1, 2])
        sy = ainv[1, 0] * (xx - m[0, 2]) + ainv[1, 1] * (yy - m[1, 2])
        warped = np.stack(
            [scipy_ndimage.map_coordinates(x[i, ..., c], [sy, sx], order=1, mode="mirror") for c in range(3)], -1
        )
        dx = (
            scipy_ndimage.gaussian_filter(nx[i, 0], sigma, mode="reflect", truncate=3) * alpha
            if sigma
            else 0 * nx[i, 0]
        )
        dy = (
            scipy_ndimage.gaussian_filter(ny[i, 0], sigma, mode="reflect", truncate=3) * alpha
            if sigma
            else 0 * ny[i, 0]
        )
        ref = np.stack(
            [
                scipy_ndimage.map_coordinates(warped[..., c], [yy + dy, xx + dx], order=1, mode="reflect")
                for c in range(3)
            ],
            -1,
        )
        np.testing.assert_allclose(out[i], np.clip(ref, 0, 1), atol=2e-5)


@pytest.mark.parametrize(("size", "params"), [(32, "cifar"), (64, "tiny")])
def test_pixelate_byte_exact_on_noise_images(size, params):
    x = np.random.default_rng(size).integers(0, 256, (64, size, size, 3), dtype=np.uint8)  # many rounding ties
    for sev in range(1, 6):
        c = PARAMS["pixelate"][params][sev - 1]
        small = (int(size * c),) * 2
        ref = np.stack(
            [np.asarray(Image.fromarray(im).resize(small, Image.BOX).resize((size,) * 2, Image.BOX)) for im in x]
        )
        np.testing.assert_array_equal(corrupt(x, "pixelate", sev), ref)


class _FixedAngle:
    """A stand-in for the context's random source: every angle is ``angle``, every normal draw 0."""

    def __init__(self, angle: float) -> None:
        self.angle = angle

    def uniform(self, shape, low, high, dtype=torch.float32):
        return torch.full(shape, self.angle, dtype=dtype)

    def normal(self, shape, loc=0.0, scale=1.0):
        return torch.zeros(shape)


def test_imagemagick_png8_hand_computed():
    # floor(round(65535 y) / 257): y = 0.5 -> q = 32768 -> 127.50 -> 127 (round(255 y) would give 128);
    # y = 100.6 / 255 -> q = floor(25854.2 + 0.5) = 25854 -> 100.599 -> 100 (round: 101)
    y = torch.tensor([0.0, 0.5, 100.6 / 255, 254.7 / 255, 1.0, 1.2, -0.1])
    assert (_ops.imagemagick_png8(y) * 255).round().tolist() == [0, 127, 100, 254, 255, 255, 0]
    v = torch.arange(256, dtype=torch.float32) / 255  # 8-bit values survive unchanged
    assert torch.equal((_ops.imagemagick_png8(v) * 255).round(), torch.arange(256, dtype=torch.float32))


def test_motion_blur_uint8_output_is_imagemagicks_png_hand_computed():
    from testtime.corruptions.blur import motion_blur
    from testtime.corruptions.params import PARAM_SETS
    from testtime.corruptions.registry import Context

    # radius 1, sigma 1, angle 0: k = exp(-i^2 / 2) / sum = (0.574095, 0.348207, 0.077697), and
    # out[x] = sum_i k_i * row[min(x + i, 3)]; the row (0, 0, 0, 255) gives 255 * (0, k2, k1 + k2, 1)
    # = (0, 19.813, 108.606, 255). ImageMagick: 19.813 -> q = round(19.813 * 257) = 5092 -> floor(19.81) = 19;
    # 108.606 -> q = 27912 -> floor(108.61) = 108 (rounding to 8 bits would give 20 and 109).
    x = torch.zeros(1, 1, 1, 4)
    x[0, 0, 0, 3] = 1.0
    ctx = Context(rng=_FixedAngle(0.0), pset=PARAM_SETS["cifar"], quantized=True)
    out = motion_blur(x, (1, 1.0), ctx)
    assert (out[0, 0, 0] * 255).round().tolist() == [0, 19, 108, 255]


def test_snow_layer_is_stored_as_imagemagicks_png(monkeypatch):
    from testtime.corruptions import weather
    from testtime.corruptions.params import PARAM_SETS
    from testtime.corruptions.registry import Context

    # the blurred layer is 100.6 / 255 everywhere: ImageMagick's PNG keeps 100 (rounding would keep 101);
    # on a black image: out = blend * 0 + (1 - blend) * max(0, 1.5 * 0 + 0.5) + 2 * 100 / 255
    monkeypatch.setattr(_ops, "motion_blur", lambda layer, *a: torch.full_like(layer, 100.6 / 255))
    p = PARAMS["snow"]["cifar"][0]
    ctx = Context(rng=_FixedAngle(-90.0), pset=PARAM_SETS["cifar"], quantized=True)
    out = weather.snow(torch.zeros(1, 3, 4, 4), p, ctx)
    expected = (1 - p[6]) * 0.5 + 2 * 100 / 255
    torch.testing.assert_close(out, torch.full_like(out, expected))


def test_brightness_within_one_level_of_the_generators_float64_truncation():
    """On a grey pixel scikit-image's HSV round trip is exact, so the generator's brightness is
    ``np.uint8(clip(k / 255 + c, 0, 1) * 255)`` in float64. Ours is the exact value truncated; the
    generator is one level lower where float64 lands just below an integer (k = 81 at c = 0.2)."""
    import testtime.corruptions as corruptions_pkg

    k = np.arange(256)
    grey = np.repeat(k.astype(np.uint8).reshape(1, 16, 16, 1), 3, axis=3)  # (1, 16, 16, 3), every level
    c = PARAMS["brightness"]["cifar"][3]
    assert c == 0.2
    generator = np.uint8(np.clip(k / 255.0 + c, 0, 1) * 255)
    exact = np.minimum(k + 51, 255)  # k + 255 c in integers
    ours = corrupt(grey, "brightness", 4, params="cifar").reshape(-1, 3)[:, 0].astype(int)
    np.testing.assert_array_equal(ours, exact)
    diff = ours - generator.astype(int)
    assert set(np.unique(diff)) == {0, 1} and diff[81] == 1 and 0 < (diff != 0).mean() <= 0.08
    doc = corruptions_pkg.__doc__
    exact_part = doc[doc.index("* exact"):doc.index("* within one grey level")]
    within_part = doc[doc.index("* within one grey level"):doc.index("* close")]
    for name in ("brightness", "saturate", "defocus_blur"):
        assert name not in exact_part and name in within_part
