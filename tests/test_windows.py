"""Window patterns: resolution, validation, mask semantics and the analytic pair count."""

from __future__ import annotations

import itertools

import pytest
import torch

from ditfa_core.windows import AttentionPattern, TokenLayout, WindowSpec

LAYOUTS = [
    TokenLayout(1),
    TokenLayout(7),
    TokenLayout(64),
    TokenLayout(97, image_start=13),
    TokenLayout(50, image_start=50),
    TokenLayout(40, grid=(1, 5, 8)),
    TokenLayout(47, image_start=3, grid=(1, 5, 8)),
    TokenLayout(70, image_start=5, grid=(2, 3, 7)),
    TokenLayout(90, image_start=0, grid=(3, 4, 5)),
    TokenLayout(33, image_start=2, grid=(1, 1, 30)),
    TokenLayout(9, grid=(9, 1, 1)),
]
SPECS = [
    WindowSpec(),
    WindowSpec(fraction=0.5),
    WindowSpec(fraction=1.0),
    WindowSpec(radius=0),
    WindowSpec(radius=3),
    WindowSpec(radius=10_000),
    WindowSpec("nbhd"),
    WindowSpec("nbhd", fraction=0.3),
    WindowSpec("nbhd", radius=1),
    WindowSpec("nbhd", radius=(0, 2, 1)),
    WindowSpec("nbhd", radius=(2, 0, 3)),
    WindowSpec("nbhd", radius=(50, 50, 50)),
    WindowSpec("tile"),
    WindowSpec("tile", fraction=0.3),
    WindowSpec("tile", radius=0),
    WindowSpec("tile", radius=(1, 0, 2)),
]


def naive_mask(pattern: AttentionPattern) -> torch.Tensor:
    """The pattern's semantics written out pair by pair, independently of windows.visible."""
    layout = pattern.layout
    n, start, end = layout.n_tokens, layout.image_start, layout.image_end
    grid = pattern.grid
    mask = torch.ones(n, n, dtype=torch.bool)
    for i, j in itertools.product(range(start, end), repeat=2):
        a = (i - start) // (grid[1] * grid[2]), (i - start) // grid[2] % grid[1], (i - start) % grid[2]
        b = (j - start) // (grid[1] * grid[2]), (j - start) // grid[2] % grid[1], (j - start) % grid[2]
        mask[i, j] = all(abs(x - y) <= r for x, y, r in zip(a, b, pattern.radius, strict=True))
    return mask


def naive_tile_mask(pattern: AttentionPattern) -> torch.Tensor:
    """The tile window written out pair by pair: whole tiles within R tiles, shifted inside the grid."""
    layout = pattern.layout
    n, start, end = layout.n_tokens, layout.image_start, layout.image_end
    grid = pattern.grid

    def tiles_seen(c: int, size: int, r: int, t: int) -> range:
        n_tiles = -(-size // t)
        k = min(2 * r + 1, n_tiles)
        s = min(max(c // t - r, 0), n_tiles - k)
        return range(s, s + k)

    mask = torch.ones(n, n, dtype=torch.bool)
    for i, j in itertools.product(range(start, end), repeat=2):
        a = (i - start) // (grid[1] * grid[2]), (i - start) // grid[2] % grid[1], (i - start) % grid[2]
        b = (j - start) // (grid[1] * grid[2]), (j - start) // grid[2] % grid[1], (j - start) % grid[2]
        mask[i, j] = all(y // t in tiles_seen(x, size, r, t)
                         for x, y, size, r, t in zip(a, b, grid, pattern.radius, pattern.tile, strict=True))
    return mask


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_pair_count_matches_dense_mask(layout: TokenLayout, spec: WindowSpec) -> None:
    pattern = spec.resolve(layout)
    assert pattern.pair_count() == int(pattern.dense_mask().sum())


@pytest.mark.parametrize("layout", [LAYOUTS[3], LAYOUTS[6], LAYOUTS[7], LAYOUTS[9]], ids=str)
@pytest.mark.parametrize("spec", [SPECS[4], SPECS[8], SPECS[9], SPECS[10]], ids=str)
def test_dense_mask_matches_pairwise_definition(layout: TokenLayout, spec: WindowSpec) -> None:
    pattern = spec.resolve(layout)
    assert torch.equal(pattern.dense_mask(), naive_mask(pattern))


@pytest.mark.parametrize("layout", [LAYOUTS[3], LAYOUTS[6], LAYOUTS[7], LAYOUTS[9]], ids=str)
@pytest.mark.parametrize("tile", [(1, 2, 3), (2, 1, 4), (1, 1, 5)], ids=str)
@pytest.mark.parametrize("radius", [(0, 0, 0), (1, 1, 1), (0, 1, 2)], ids=str)
def test_tile_mask_matches_pairwise_definition(layout: TokenLayout, tile, radius) -> None:
    """Partial tiles at the far borders included (the grids here are not multiples of the tiles)."""
    pattern = AttentionPattern(layout, "tile", radius, tile)
    assert torch.equal(pattern.dense_mask(), naive_tile_mask(pattern))
    assert pattern.pair_count() == int(naive_tile_mask(pattern).sum())


def test_tile_window_is_whole_tiles_and_equal_size_inside_the_grid() -> None:
    pattern = WindowSpec("tile").resolve(TokenLayout(64 * 64, grid=(1, 64, 64)))
    assert pattern.tile == (1, 8, 8) and pattern.radius == (0, 1, 1)
    mask = pattern.dense_mask()
    assert bool((mask.sum(1) == 24 * 24).all())   # every query sees 3 x 3 tiles, borders included
    tile_of = (torch.arange(4096) // 64 // 8) * 8 + torch.arange(4096) % 64 // 8
    same_tile = tile_of[:, None] == tile_of[None]
    assert bool((mask[same_tile.nonzero()[:, 0]] == mask[same_tile.nonzero()[:, 1]]).all())


@pytest.mark.parametrize("spec", [WindowSpec("nbhd", radius=(1, 2, 3)), WindowSpec("tile", radius=1)],
                         ids=str)
def test_key_box_covers_exactly_what_a_query_box_sees(spec: WindowSpec) -> None:
    pattern = spec.resolve(TokenLayout(3 * 10 * 12, grid=(3, 10, 12)))
    idx = torch.arange(pattern.layout.n_tokens)
    coords = torch.stack([idx // 120, idx // 12 % 10, idx % 12], -1)

    def inside(a: tuple[int, ...], b: tuple[int, ...]) -> torch.Tensor:
        return ((coords >= torch.tensor(a)) & (coords < torch.tensor(b))).all(-1)

    lo, hi = (0, 2, 5), (2, 5, 9)
    seen = pattern.dense_mask()[inside(lo, hi)].any(0)
    assert torch.equal(seen, inside(*pattern.key_box(lo, hi)))


def test_global_tokens_are_full_rows_and_columns() -> None:
    layout = TokenLayout(30, image_start=4, grid=(1, 4, 5))
    mask = WindowSpec("nbhd", radius=0).resolve(layout).dense_mask()
    globals_ = torch.tensor([*range(4), *range(24, 30)])
    assert mask[globals_].all() and mask[:, globals_].all()
    image = torch.arange(4, 24)
    assert torch.equal(mask[image][:, image], torch.eye(20, dtype=torch.bool))


def test_nbhd_on_single_frame_equals_2d_box() -> None:
    h, w, ry, rx = 6, 9, 2, 3
    for rt in (0, 5):
        pattern = AttentionPattern(TokenLayout(h * w, grid=(1, h, w)), "nbhd", (rt, ry, rx))
        y, x = torch.arange(h * w) // w, torch.arange(h * w) % w
        box = ((y[:, None] - y[None]).abs() <= ry) & ((x[:, None] - x[None]).abs() <= rx)
        assert torch.equal(pattern.dense_mask(), box)


def test_nbhd_without_grid_equals_band() -> None:
    layout = TokenLayout(40, image_start=6)
    band = AttentionPattern(layout, "band", (0, 0, 4))
    nbhd = AttentionPattern(layout, "nbhd", (0, 0, 4))
    assert torch.equal(band.dense_mask(), nbhd.dense_mask())
    assert band.pair_count() == nbhd.pair_count()


def test_band_ignores_grid_and_uses_flattened_order() -> None:
    pattern = AttentionPattern(TokenLayout(20, grid=(1, 4, 5)), "band", (0, 0, 2))
    idx = torch.arange(20)
    assert torch.equal(pattern.dense_mask(), (idx[:, None] - idx[None]).abs() <= 2)


def test_band_fraction_resolution() -> None:
    pattern = WindowSpec().resolve(TokenLayout(4096))
    assert pattern.radius == (0, 0, 256)
    assert abs((2 * pattern.radius[2] + 1) / 4096 - 1 / 8) < 1e-3
    assert WindowSpec(fraction=1e-6).resolve(TokenLayout(100)).radius == (0, 0, 1)
    with_text = WindowSpec().resolve(TokenLayout(4096 + 300, image_start=300))
    assert with_text.radius == (0, 0, 256)


def test_nbhd_fraction_resolution() -> None:
    pattern = WindowSpec("nbhd").resolve(TokenLayout(64 * 64, grid=(1, 64, 64)))
    assert pattern.radius == (0, 11, 11)
    video = WindowSpec("nbhd").resolve(TokenLayout(8 * 32 * 32, grid=(8, 32, 32)))
    assert video.radius == (2, 8, 8)


def test_radius_is_clamped_so_equal_windows_hash_equal() -> None:
    layout = TokenLayout(50, grid=(1, 5, 10))
    big = WindowSpec("nbhd", radius=1000).resolve(layout)
    assert big.radius == (0, 4, 9)
    assert big == WindowSpec("nbhd", radius=(7, 4, 9)).resolve(layout)
    assert hash(big) == hash(WindowSpec("nbhd", radius=(7, 4, 9)).resolve(layout))
    assert big.is_full and bool(big.dense_mask().all())


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_is_full_iff_mask_is_all_true(layout: TokenLayout) -> None:
    for spec in SPECS:
        pattern = spec.resolve(layout)
        assert pattern.is_full == bool(pattern.dense_mask().all())


@pytest.mark.parametrize(
    "make",
    [
        lambda: TokenLayout(0),
        lambda: TokenLayout(10, image_start=11),
        lambda: TokenLayout(10, image_start=-1),
        lambda: TokenLayout(10, image_start=5, grid=(1, 2, 3)),
        lambda: TokenLayout(10, grid=(1, 0, 3)),
        lambda: TokenLayout(10, grid=(2, 3)),
        lambda: WindowSpec(radius=-1),
        lambda: WindowSpec("nbhd", radius=(1, -2, 1)),
        lambda: WindowSpec("band", radius=(0, 0, 3)),
        lambda: WindowSpec(fraction=0.0),
        lambda: WindowSpec(fraction=1.5),
        lambda: WindowSpec(fraction=-0.1),
        lambda: WindowSpec("box"),
        lambda: AttentionPattern(TokenLayout(10), "band", (0, 0, -1)),
        lambda: AttentionPattern(TokenLayout(10), "band", (1, 0, 2)),
        lambda: AttentionPattern(TokenLayout(10), "diagonal", (0, 0, 2)),
        lambda: AttentionPattern(TokenLayout(10), "nbhd", (0, 0, 2), (1, 1, 2)),
        lambda: AttentionPattern(TokenLayout(10), "tile", (0, 0, 2), (1, 1, 0)),
    ],
)
def test_invalid_inputs_raise_value_error(make) -> None:
    with pytest.raises(ValueError):
        make()
