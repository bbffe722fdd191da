"""The denoiser is E(3)-equivariant, permutation-equivariant and blind to padding (to 1e-4 in float32)."""

from __future__ import annotations

import pytest
import torch
from helpers import N_R, tiny, toy_batch

from pdfusion.diffusion import NonFiniteError, remove_mean

ATOL = 1e-4


def random_orthogonal(g: torch.Generator, reflect: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = q @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    return q.float()


def inputs(sizes, seed=0, n_max=None):
    batch = toy_batch(sizes, seed, n_max)
    g = torch.Generator().manual_seed(seed + 1)
    _, diffusion = tiny()
    x, h = diffusion.encode(batch)
    x = remove_mean(x + 0.3 * torch.randn(x.shape, generator=g), batch.mask)
    h = (h + 0.3 * torch.randn(h.shape, generator=g)) * batch.mask.unsqueeze(-1)
    t = torch.rand(len(sizes), generator=g)
    return x, h, batch.mask, t, batch.pdf, batch.metal, torch.tensor([True, False, True][: len(sizes)])


# every denoiser variant that claims E(3) equivariance; the edge-PDF variants read the toy PDF (40 points,
# r = 0.5 k Å) at each edge's distance, which is invariant, so they must stay equivariant
GRAPHS = {"full": dict(cutoff=None), "cutoff": dict(cutoff=4.0),
          "edge_pdf": dict(cutoff=4.0, edge_pdf="raw", pdf_rstep=0.5),
          "edge_pdf_noise_aware": dict(cutoff=None, edge_pdf="noise_aware", pdf_rstep=0.5, bond_length=2.0),
          "pdf_gradient": dict(cutoff=4.0, pdf_gradient=True, pdf_rstep=0.5)}


@pytest.fixture(params=list(GRAPHS), scope="module")
def model(request):
    m, _ = tiny(seed=3, **GRAPHS[request.param])
    # make the coordinate head non-trivial (its init is near zero, which would make tests pass vacuously)
    with torch.no_grad():
        for blk in m.egnn.blocks:
            blk.coord_mlp[-1].weight.normal_(0, 0.3)
        m.egnn.out.weight.normal_(0, 0.3)  # and the extra heads (pdf_gradient's gate)
    return m.eval()


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_rotation_reflection_translation_equivariance(model, reflect):
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    g = torch.Generator().manual_seed(7)
    q = random_orthogonal(g, reflect)
    shift = torch.randn(1, 1, 3, generator=g) * 5
    ex, eh = model(x, h, mask, t, pdf, metal, cm)
    assert ex.abs().max() > 1e-3  # non-trivial output
    x2 = (x @ q.T + shift) * mask.unsqueeze(-1)
    ex2, eh2 = model(x2, h, mask, t, pdf, metal, cm)
    torch.testing.assert_close(ex2, ex @ q.T, atol=ATOL, rtol=0)
    torch.testing.assert_close(eh2, eh, atol=ATOL, rtol=0)


def test_permutation_equivariance(model):
    x, h, mask, t, pdf, metal, cm = inputs([12, 12])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    ex, eh = model(x, h, mask, t, pdf, metal, cm)
    ex2, eh2 = model(x[:, perm], h[:, perm], mask[:, perm], t, pdf, metal, cm)
    torch.testing.assert_close(ex2, ex[:, perm], atol=ATOL, rtol=0)
    torch.testing.assert_close(eh2, eh[:, perm], atol=ATOL, rtol=0)


def test_output_for_real_atoms_ignores_padding(model):
    """Particle alone vs. padded to a larger Nmax vs. mixed with a bigger particle in one batch."""
    x, h, mask, t, pdf, metal, cm = inputs([10])
    alone = model(x, h, mask, t, pdf, metal, cm[:1])
    for extra in (1, 7):
        def pad(a, extra=extra):
            return torch.cat([a, a.new_zeros(a.shape[0], extra, *a.shape[2:])], 1)

        ex, eh = model(pad(x), pad(h), pad(mask), t, pdf, metal, cm[:1])
        torch.testing.assert_close(ex[:, :10], alone[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(eh[:, :10], alone[1], atol=ATOL, rtol=0)
        assert ex[:, 10:].abs().max() == 0 and eh[:, 10:].abs().max() == 0
    # garbage in padded slots must not leak either
    xg = torch.cat([x, torch.full((1, 3, 3), 1e3)], 1)
    hg = torch.cat([h, torch.full((1, 3, 2), -50.0)], 1)
    ex, eh = model(xg, hg, torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], 1), t, pdf, metal, cm[:1])
    torch.testing.assert_close(ex[:, :10], alone[0], atol=ATOL, rtol=0)
    # mixed sizes in one batch
    x2, h2, mask2, t2, pdf2, metal2, _ = inputs([17], seed=5)
    n = 17
    xb = torch.cat([torch.cat([x, x.new_zeros(1, n - 10, 3)], 1), x2])
    hb = torch.cat([torch.cat([h, h.new_zeros(1, n - 10, 2)], 1), h2])
    mb = torch.cat([torch.cat([mask, mask.new_zeros(1, n - 10)], 1), mask2])
    ex, eh = model(xb, hb, mb, torch.cat([t, t2]), torch.cat([pdf, pdf2]), torch.cat([metal, metal2]),
                   torch.tensor([bool(cm[0]), True]))
    torch.testing.assert_close(ex[:1, :10], alone[0], atol=ATOL, rtol=0)
    other = model(x2, h2, mask2, t2, pdf2, metal2, torch.tensor([True]))
    torch.testing.assert_close(ex[1:], other[0], atol=ATOL, rtol=0)


def test_eps_x_has_zero_centre_of_mass(model):
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    ex, _ = model(x, h, mask, t, pdf, metal, cm)
    assert ex.sum(1).abs().max() < 1e-5


def test_condition_and_null_embedding_change_the_output(model):
    x, h, mask, t, pdf, metal, _ = inputs([9, 14])
    on = model(x, h, mask, t, pdf, metal, torch.tensor([True, True]))[0]
    off = model(x, h, mask, t, pdf, metal, torch.tensor([False, False]))[0]
    none = model(x, h, mask, t, None, None, torch.tensor([False, False]))[0]
    assert (on - off).abs().max() > 1e-6
    torch.testing.assert_close(off, none)  # null rows never read the condition


def test_count_logits_shape_and_return_count(model):
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    logits = model.count_logits(pdf, metal)
    assert logits.shape == (2, model.cfg.max_atoms)
    ex, eh, logits2 = model(x, h, mask, t, pdf, metal, cm, return_count=True)
    torch.testing.assert_close(logits, logits2)


def test_non_finite_input_raises_naming_the_tensor(model):
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    bad = x.clone()
    bad[0, 2, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^x: 1 NaN"):
        model(bad, h, mask, t, pdf, metal, cm)
    badp = pdf.clone()
    badp[1, 3] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^pdf: 0 NaN and 1 inf"):
        model(x, h, mask, t, badp, metal, cm)


def test_bad_shapes_and_metals_give_clear_errors(model):
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    with pytest.raises(ValueError, match=f"pdf: expected \\(B, {N_R}\\)"):
        model(x, h, mask, t, pdf[:, :-1], metal, cm)
    with pytest.raises(ValueError, match="metal: atomic numbers must be in"):
        model(x, h, mask, t, pdf, torch.tensor([22, 150]), cm)
    with pytest.raises(ValueError, match="pdf/metal is None"):
        model(x, h, mask, t, None, None, torch.tensor([True, False]))


def test_large_coordinates_stay_finite_thanks_to_tanh_bound():
    m, _ = tiny(seed=0)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(30.0)  # a badly scaled network must still produce finite, bounded updates
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    ex, eh = m(x * 1e3, h, mask, t, pdf, metal, cm)
    cfg = m.cfg
    # each layer moves an atom by at most coords_range/layers · (#neighbours)/normalization_factor
    bound = cfg.coords_range * 13 / cfg.normalization_factor + 1e-3
    assert torch.isfinite(ex).all() and ex.abs().max() <= 2 * bound  # (x_out - x) then CoM removal


@pytest.mark.parametrize("cutoff", [None, 1.0])
def test_build_edges_matches_brute_force(cutoff):
    from pdfusion.diffusion import build_edges

    x, _, mask, *_ = inputs([5, 9, 3])
    row, col = build_edges(x, mask, cutoff, chunk=2)
    flat = mask.reshape(-1).nonzero().squeeze(1)
    got = {(int(flat[r]), int(flat[c])) for r, c in zip(row, col, strict=True)}
    want = set()
    n = mask.shape[1]
    for b in range(mask.shape[0]):
        for i in range(n):
            for j in range(n):
                if i != j and mask[b, i] and mask[b, j]:
                    if cutoff is None or float((x[b, i] - x[b, j]).norm()) < cutoff:
                        want.add((b * n + i, b * n + j))
    assert got == want and len(row) == len(want)
    if cutoff is not None:
        assert len(want) < 5 * 4 + 9 * 8 + 3 * 2  # the cutoff actually removes edges here


def test_handles_23_to_511_atoms_with_cutoff():
    """The largest seed-oxides particle next to the smallest, radius graph: finite, and padding-blind."""
    from helpers import toy_batch

    m, d = tiny(seed=0, cutoff=6.0)
    m.eval()
    batch = toy_batch([511, 23])
    x, h = d.encode(batch)
    t = torch.tensor([0.05, 0.05])
    with torch.no_grad():
        ex, eh = m(x, h, batch.mask, t, batch.pdf, batch.metal)
        small = toy_batch([23])
        alone = m(*d.encode(small), small.mask, t[:1], small.pdf[:1], small.metal[:1])
    assert torch.isfinite(ex).all() and torch.isfinite(eh).all()
    torch.testing.assert_close(ex[1:, :23], alone[0], atol=ATOL, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    a, d = tiny(seed=4, cutoff=5.0)
    b, _ = tiny(seed=4, cutoff=5.0, grad_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x, h, mask, t, pdf, metal, cm = inputs([9, 14])
    for m in (a, b):
        ex, eh = m(x, h, mask, t, pdf, metal, cm)
        (ex.square().sum() + eh.square().sum()).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=name)
