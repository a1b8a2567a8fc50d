"""Batched photometric augmentation (``augment.device``): the same ops, probabilities and ranges
as the per-sample path, measured on the outputs of a few hundred seeded samples; shapes per
preset and band count; per-item randomness that does not depend on the batch or the device."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as TF

from acclimate.data import batch_augment as ba
from acclimate.data.color import shift_hue
from acclimate.data.transforms import MultiCropTransform
from acclimate.data.views import crop_box

N = 300  # images per distribution test


def _run(t: MultiCropTransform, images: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Every image with its own seed, as SeededItems does; batched views go through one
    collated batch stage, per-sample views are stacked."""
    items = []
    for i, image in enumerate(images):
        torch.manual_seed(1000 + i)
        items.append(t.sample(image))
    collated = default_collate(items)
    return t.batch(collated) if t.batched else collated


def _both(images: list[torch.Tensor], **kw) -> tuple[dict, dict]:
    c = kw.pop("channels", 3)
    args = {"global_size": 16, "local_size": 8, "channels": c, "mean": [0.0] * c, **kw}
    args["std"] = [1.0] * c
    per_sample = _run(MultiCropTransform(**args, device="per_sample"), images)
    batched = _run(MultiCropTransform(**args, device="cpu"), images)
    return per_sample, batched


def _close(a: torch.Tensor, b: torch.Tensor, mean_tol: float = 0.3, sd_tol: float = 0.25):
    """Two samples of a statistic agree: means within ``mean_tol`` pooled standard deviations,
    standard deviations within ``sd_tol`` of it (about 4 standard errors for N views)."""
    pooled = float(torch.cat([a, b]).std()) + 1e-6
    assert abs(float(a.mean() - b.mean())) <= mean_tol * pooled, (a.mean(), b.mean(), pooled)
    assert abs(float(a.std() - b.std())) <= sd_tol * pooled, (a.std(), b.std())


def _all(views: dict) -> list[torch.Tensor]:
    return views["global"] + views["local"]


def _gray_image(value: int, channels: int = 3, size: int = 24) -> torch.Tensor:
    return torch.full((channels, size, size), value, dtype=torch.uint8)


def _noise_images(channels: int, n: int = N, dtype=torch.uint8, size: int = 24) -> list:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.uint8:
        return [torch.randint(0, 256, (channels, size, size), generator=g, dtype=dtype)] * n
    return [torch.rand(channels, size, size, generator=g) * 3000 - 1000] * n


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1, 1, 1)


def test_ops_equal_torchvision_factor_by_factor() -> None:
    """Each batched op against torchvision's functional on each sample with the same factor."""
    x = torch.rand(5, 3, 20, 20)
    f = torch.tensor([0.0, 0.6, 1.0, 1.2, 1.4])
    for ours, theirs in (
        (ba._brightness, TF.adjust_brightness),
        (ba._contrast, TF.adjust_contrast),
        (ba._saturation, TF.adjust_saturation),
    ):
        expected = torch.stack([theirs(xi, float(fi)) for xi, fi in zip(x, f, strict=True)])
        torch.testing.assert_close(ours(x, _rows(f)), expected)
    hue = torch.tensor([-0.5, -0.1, 0.0, 0.25, 0.5])
    expected = torch.stack([TF.adjust_hue(xi, float(h)) for xi, h in zip(x, hue, strict=True)])
    torch.testing.assert_close(shift_hue(x, _rows(hue)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        ba.Grayscale(1.0).apply(x, x[:, :0, 0, 0], True), TF.rgb_to_grayscale(x, 3)
    )
    torch.testing.assert_close(ba.Solarize(1.0).apply(x, x[:, :0, 0, 0], True), TF.solarize(x, 0.5))
    u = torch.rand(5, 1)
    blurred = ba.GaussianBlur(1.0, 5, (0.1, 2.0)).apply(x, u, True)
    sigma = (0.1 + 1.9 * u[:, 0]).tolist()
    pairs = zip(x, sigma, strict=True)
    expected = torch.stack([TF.gaussian_blur(xi, [5, 5], [s, s]) for xi, s in pairs])
    torch.testing.assert_close(blurred, expected, atol=1e-5, rtol=0)


def test_hue_matches_torchvision_on_gray_pixels_and_ties() -> None:
    """The sector of each pixel comes from float arithmetic (sign, lerp), not a mask: gray
    pixels, two channels tied for the max, 0 and 1, and shifts up to half the circle."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[:, :, 0] = 0.4  # gray rows
    x[:, 1, 1] = x[:, 0, 1]  # red and green tied
    x[:, 2, 2] = x[:, 1, 2]  # green and blue tied
    x[:, 2, 3] = x[:, 0, 3]  # red and blue tied
    x[:, :, 4, :4], x[:, :, 4, 4:] = 0.0, 1.0
    x[:, 0, 5] = 1.0  # a saturated channel beside others
    hue = torch.tensor([-0.5, -0.37, -0.02, 0.0, 0.11, 0.5])
    expected = torch.stack([TF.adjust_hue(xi, float(h)) for xi, h in zip(x, hue, strict=True)])
    torch.testing.assert_close(shift_hue(x, _rows(hue)), expected, atol=1e-5, rtol=0)
    shift_hue(x, _rows(hue))
    torch.testing.assert_close(x[:, :, 0], torch.full_like(x[:, :, 0], 0.4))  # input unchanged


def test_color_jitter_applies_its_ops_in_each_samples_order() -> None:
    x = torch.rand(3, 3, 12, 12)
    u = torch.tensor(
        [  # apply, 4 factors (b, c, s, hue), 4 keys: ranks are the order
            [0.0, 0.9, 0.1, 0.8, 0.3, 0.4, 0.3, 0.2, 0.1],  # hue, saturation, contrast, bright
            [0.0, 0.2, 0.7, 0.5, 0.9, 0.1, 0.2, 0.3, 0.4],  # brightness, contrast, sat., hue
            [0.9, 0.2, 0.7, 0.5, 0.9, 0.1, 0.2, 0.3, 0.4],  # not applied (p = 0.8)
        ]
    )
    out = ba.ColorJitter(0.8, 0.4, 0.4, 0.2, 0.1)(x.clone(), u, False)
    b, c, s = (0.6 + 0.8 * u[:, 1]), (0.6 + 0.8 * u[:, 2]), (0.8 + 0.4 * u[:, 3])
    h = -0.1 + 0.2 * u[:, 4]
    ops = [
        lambda v, i: TF.adjust_brightness(v, float(b[i])),
        lambda v, i: TF.adjust_contrast(v, float(c[i])),
        lambda v, i: TF.adjust_saturation(v, float(s[i])),
        lambda v, i: TF.adjust_hue(v, float(h[i])),
    ]
    for i, order in ((0, [3, 2, 1, 0]), (1, [0, 1, 2, 3])):
        expected = x[i]
        for k in order:
            expected = ops[k](expected, i)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], x[2])


def test_color_jitter_sorted_slices_match_torchvision_and_the_where_path(monkeypatch) -> None:
    """The CPU path (samples sorted by their order of ops, each step on contiguous slices in
    place) against torchvision per sample and against the accelerators' path (every sample
    computed, ``torch.where`` picks), on a batch with every order of the four ops."""
    g = torch.Generator().manual_seed(3)
    n = 60
    x = torch.rand(n, 3, 10, 10, generator=g)
    u = torch.rand(n, 9, generator=g)
    orders = list(itertools.permutations(range(4)))
    for i in range(n):  # keys whose ranks give each order at least twice
        u[i, 5:9] = (torch.tensor(orders[i % 24]).argsort().float() + 0.5) / 4
    jitter = ba.ColorJitter(0.8, 0.4, 0.4, 0.2, 0.1)
    out = jitter(x.clone(), u, False)
    b, c, s, h = 0.6 + 0.8 * u[:, 1], 0.6 + 0.8 * u[:, 2], 0.8 + 0.4 * u[:, 3], -0.1 + 0.2 * u[:, 4]
    for i in range(n):
        expected = x[i]
        if u[i, 0] < 0.8:
            for k in orders[i % 24]:
                expected = (
                    TF.adjust_brightness,
                    TF.adjust_contrast,
                    TF.adjust_saturation,
                    TF.adjust_hue,
                )[k](expected, float((b, c, s, h)[k][i]))
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    monkeypatch.setattr(ba, "SUBSET_DEVICES", ())
    torch.testing.assert_close(jitter(x.clone(), u, False), out, atol=1e-6, rtol=0)


def test_intensity_window_and_stain_follow_the_per_sample_formulas() -> None:
    from acclimate.data.batch_augment import HED_FROM_RGB, RGB_FROM_HED

    x = torch.rand(4, 3, 10, 10)
    u = torch.rand(4, 6)
    out = ba.IntensityJitter(1.0, 0.4, 0.2, per_band=True).apply(x, u, True)
    bright, contrast = _rows(0.6 + 0.8 * u[:, :3]).reshape(4, 3, 1, 1), 0.8 + 0.4 * u[:, 3:6]
    y = x * bright
    m = y.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(out, ((y - m) * contrast[:, :, None, None] + m).clamp(0, 1))

    out = ba.WindowJitter(1.0, 0.1, 1.25).apply(x, u[:, :2], True)
    centre = 0.4 + 0.2 * u[:, 0]
    gain = torch.exp(-torch.log(torch.tensor(1.25)) + 2 * torch.log(torch.tensor(1.25)) * u[:, 1])
    expected = ((x - _rows(centre)) * _rows(gain) + 0.5).clamp(0, 1)
    torch.testing.assert_close(out, expected)

    out = ba.StainJitter(1.0, 0.05).apply(x, u, True)
    a, shift = 0.95 + 0.1 * u[:, :3], -0.05 + 0.1 * u[:, 3:6]
    for i in range(4):  # transforms.StainJitter's steps, with this sample's factors
        od = -torch.log(x[i].clamp(min=1 / 255)).permute(1, 2, 0)
        od = ((od @ HED_FROM_RGB) * a[i] + shift[i]) @ RGB_FROM_HED
        expected = torch.exp(-od).clamp(0, 1).permute(2, 0, 1)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_brightness_factors_match_the_per_sample_path(dtype) -> None:
    """On a gray image only brightness changes pixels: view / image = the factor b, applied with
    p = 0.8, b ~ U(0.6, 1.4). (On uint8 torchvision truncates after each of its four ops, which
    lowers the per-sample factors by about 1.5%: compared with the ranges only.)"""
    image = _gray_image(128) if dtype == torch.uint8 else torch.full((3, 24, 24), 0.5)
    base = float(image.float().mean()) / (255 if dtype == torch.uint8 else 1)
    views = _both([image] * N, n_local=2, blur_p=0.0, solarize_p=0.0)
    stats = []
    for out in views:
        factor = torch.cat([v.mean(dim=(1, 2, 3)) for v in out["global"] + out["local"]]) / base
        jittered = factor[(factor - 1).abs() > 0.01]
        assert 0.75 <= len(jittered) / len(factor) <= 0.85  # p = 0.8
        assert abs(float(jittered.mean()) - 1.0) < 0.04
        assert abs(float(jittered.std()) - 0.8 / 12**0.5) < 0.03  # U(0.6, 1.4)
        stats.append(jittered)
    if dtype == torch.float32:
        _close(*stats)


def test_grayscale_and_solarise_fractions_match() -> None:
    """Grayscale views of a colour image have equal channels; a bright gray image stays above
    0.5 under the colour jitter, so its solarised views are the dark ones."""
    colour = torch.tensor([64, 51, 38], dtype=torch.uint8)[:, None, None].expand(3, 24, 24)
    for out in _both([colour.clone()] * N, n_local=2, blur_p=0.0, solarize_p=0.0):
        spread = [(v.amax(dim=1) - v.amin(dim=1)).amax(dim=(-2, -1)) for v in _all(out)]
        gray = torch.stack(spread) < 2 / 255
        assert 0.16 <= float(gray.float().mean()) <= 0.24  # RandomGrayscale(p=0.2)
    for out in _both([_gray_image(242)] * N, n_local=2, blur_p=0.0, solarize_p=0.2):
        solarised = torch.stack([v.amax(dim=(1, 2, 3)) < 0.5 for v in _all(out)])
        assert 0.14 <= float(solarised[1].float().mean()) <= 0.26  # second global view only
        assert not solarised[[0, 2, 3]].any()


@pytest.mark.parametrize(
    ("preset", "channels", "dtype"),
    [
        ("natural", 3, torch.float32),  # [0, 1]; on uint8 torchvision truncates (see above)
        ("satellite", 13, torch.uint8),
        ("satellite", 4, torch.float32),
        ("medical", 1, torch.uint8),
        ("medical", 1, torch.float32),  # physical units (HU): windowed on its own range
        ("microscopy", 3, torch.uint8),
        ("microscopy", 5, torch.uint8),  # per-band jitter
    ],
)
def test_output_pixel_statistics_match(preset: str, channels: int, dtype) -> None:
    images = _noise_images(channels, dtype=dtype)
    if preset == "natural":
        images = [x.float() / 255 for x in _noise_images(channels)]
    out_a, out_b = _both(images, channels=channels, preset=preset, n_local=1, blur_p=0.0)
    for a, b in zip(
        out_a["global"] + out_a["local"], out_b["global"] + out_b["local"], strict=True
    ):
        for stat in (lambda v: v.mean(dim=(2, 3)), lambda v: v.std(dim=(2, 3))):
            sa, sb = stat(a), stat(b)  # (N, C) per view and band
            scale = float(torch.cat([sa, sb]).abs().mean()) + 1e-6
            if float(torch.cat([sa, sb]).std()) < 1e-4 * scale:
                continue  # the statistic does not vary (e.g. no jitter on it)
            _close(sa.flatten(), sb.flatten())


def test_blur_statistics_match() -> None:
    """Gaussian blur (p 1 / 0.1 / 0.5 for global 1 / global 2 / locals, sigma U(0.1, 2)) seen in
    the pixel-to-pixel differences of noise."""
    images = _noise_images(3)
    a, b = _both(images, n_local=1, color_strength=0.0, solarize_p=0.0, global_size=24)
    for va, vb in zip(a["global"] + a["local"], b["global"] + b["local"], strict=True):
        ea = (va[..., 1:] - va[..., :-1]).abs().mean(dim=(1, 2, 3))
        eb = (vb[..., 1:] - vb[..., :-1]).abs().mean(dim=(1, 2, 3))
        _close(ea, eb)


@pytest.mark.parametrize("device", ["per_sample", "cpu", "auto"])
@pytest.mark.parametrize(
    ("preset", "channels"),
    [("natural", 3), ("natural", 2), ("satellite", 13), ("medical", 1), ("medical", 3)]
    + [("microscopy", 3), ("microscopy", 6)],
)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shapes_and_dtypes_per_preset(preset: str, channels: int, device: str, dtype) -> None:
    c = channels
    t = MultiCropTransform(
        16, 8, 3, preset=preset, channels=c, mean=[0.4] * c, std=[0.2] * c, device=device
    )
    image = _noise_images(c, 1, dtype=dtype, size=20)[0]
    out = _run(t, [image] * 4)
    assert [v.shape for v in out["global"]] == [(4, c, 16, 16)] * 2
    assert [v.shape for v in out["local"]] == [(4, c, 8, 8)] * 3
    for v in out["global"] + out["local"]:
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all())
    single = t(image)  # the standalone call: the same views as one image's
    assert [v.shape for v in single["global"]] == [(c, 16, 16)] * 2
    assert [v.shape for v in single["local"]] == [(c, 8, 8)] * 3


@pytest.mark.parametrize("size,atol", [(16, 1e-5), (64, 1e-3)])
def test_an_items_views_do_not_depend_on_its_batch(size: int, atol: float) -> None:
    """Exact at 16 px; at 64 px the CPU blur's kernel is cut at 4 sigma of the largest sigma in
    its chunk: a difference below 1e-4 in [0, 1] units (1e-3 after normalisation)."""
    t = MultiCropTransform(size, size // 2, 2, channels=3, device="cpu")
    images = _noise_images(3, 6, size=size + size // 4)
    together = _run(t, images)
    for i in range(6):
        torch.manual_seed(1000 + i)
        alone = t.batch(default_collate([t.sample(images[i])]))
        for kind in ("global", "local"):
            for v_all, v_one in zip(together[kind], alone[kind], strict=True):
                torch.testing.assert_close(v_all[i], v_one[0], atol=atol, rtol=1e-5)


def test_accelerator_branch_equals_the_cpu_branch(monkeypatch) -> None:
    """On an accelerator every sample is computed and torch.where picks: same result."""
    cases = [("natural", 3, 16), ("microscopy", 3, 16), ("medical", 1, 16), ("satellite", 5, 16)]
    cases.append(("natural", 3, 64))  # a blur kernel long enough to be cut on the CPU
    for preset, c, size in cases:
        t = MultiCropTransform(
            size, size // 2, 2, preset=preset, channels=c, mean=[0.5] * c, std=[0.2] * c
        )
        dtype = torch.float32 if preset == "medical" else torch.uint8
        images = _noise_images(c, 16, dtype=dtype, size=size + size // 4)
        subset = _run(t, images)
        monkeypatch.setattr(ba, "SUBSET_DEVICES", ())
        everything = _run(t, images)
        monkeypatch.undo()
        atol = 1e-5 if size == 16 else 1e-3  # the cut: below 1e-4 before normalisation
        for a, b in zip(_all(subset), _all(everything), strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def test_per_sample_device_keeps_the_original_path() -> None:
    t = MultiCropTransform(16, 8, 2, device="per_sample")
    image = _noise_images(3, 1)[0]
    torch.manual_seed(3)
    a = t.sample(image)
    torch.manual_seed(3)
    b = t(image)
    assert "draws" not in a and t.batch(a) is a
    for x, y in zip(a["global"] + a["local"], b["global"] + b["local"], strict=True):
        torch.testing.assert_close(x, y)


def test_crop_boxes_stay_inside_and_square_for_satellite() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in ((40, 24), (24, 40), (33, 33), (20, 200)):
        for _ in range(200):
            u = torch.rand(43, generator=g, dtype=torch.float64).tolist()
            top, left, h, w = crop_box(*shape, (0.25, 1.0), (1.0, 1.0), u)
            assert h == w and 0 <= top <= shape[0] - h and 0 <= left <= shape[1] - w
            top, left, h, w = crop_box(*shape, (0.05, 0.4), (3 / 4, 4 / 3), u)
            assert 0 < h <= shape[0] and 0 < w <= shape[1]


def _datamodule(tiny_dataset, device: str):
    from acclimate.data.datamodule import SSLDataModule

    dm = SSLDataModule(
        str(tiny_dataset), batch_size=4, num_workers=0, mean=[0.5] * 3, std=[0.2] * 3
    )
    dm.transform = MultiCropTransform(16, 8, 2, mean=[0.5] * 3, std=[0.2] * 3, device=device)
    return dm


def test_loader_batches_are_the_seeded_items_batched(tiny_dataset) -> None:
    """``cpu``: the loader's collate applies the batch stage to items seeded by (seed, epoch,
    index); ``auto`` with an accelerator: the same, after the transfer."""
    from acclimate.data.dataset import ImageDataset
    from acclimate.resume import item_seed

    dm = _datamodule(tiny_dataset, "cpu")
    loader = dm.train_dataloader()
    views, labels = next(iter(loader))
    order = loader.sampler.order()[:4]
    items = []
    dataset = ImageDataset(dm.source, dm.transform.sample)
    for i in order:
        torch.manual_seed(item_seed(dm.seed, 0, i))
        items.append(dataset[i][0])
    expected = dm.transform.batch(default_collate(items))
    for a, b in zip(_all(views), _all(expected), strict=True):
        torch.testing.assert_close(a, b)

    dm = _datamodule(tiny_dataset, "auto")
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),  # pretend
        precision_plugin=SimpleNamespace(convert_input=lambda x: x),
    )
    raw = next(iter(dm.train_dataloader()))
    assert raw[0]["global"][0].dtype == torch.uint8 and "draws" in raw[0]  # crosses as uint8
    done, labels_auto = dm.on_after_batch_transfer(raw, 0)
    assert torch.equal(labels_auto, labels)
    for a, b in zip(_all(done), _all(views), strict=True):
        torch.testing.assert_close(a, b)


def test_recipe_checks_the_device(tmp_path) -> None:
    from acclimate.config import ConfigError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone:\n  name: test_resnet\ndata:\n  train: images\n")
    assert load_recipe(recipe).data["augment"]["device"] == "auto"
    with pytest.raises(ConfigError, match="augment.device.*per_sample.*cpu.*auto"):
        load_recipe(recipe, ["augment.device=gpu"])
    with pytest.raises(ValueError, match="device must be one of per_sample, cpu, auto"):
        MultiCropTransform(device="gpu")  # type: ignore[arg-type]


def test_blur_cut_at_four_sigma_matches_the_full_kernel() -> None:
    """DINO's 23-tap kernel at 224 px, cut on the CPU to 4 sigma of the chunk's largest sigma:
    within 1e-4 of torchvision's full kernel, for one sample and for a chunk of several."""
    x = torch.rand(4, 3, 40, 40)
    for u in (torch.tensor([[0.1]]), torch.tensor([[0.0], [0.3], [0.6], [1.0 - 2**-24]])):
        xs = x[: len(u)]
        blurred = ba.GaussianBlur(1.0, 23, (0.1, 2.0)).apply(xs, u, True)
        sigma = (0.1 + 1.9 * u[:, 0]).tolist()
        pairs = zip(xs, sigma, strict=True)
        expected = torch.stack([TF.gaussian_blur(xi, [23, 23], [s, s]) for xi, s in pairs])
        torch.testing.assert_close(blurred, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        ba.GaussianBlur(1.0, 4)
