"""Structure I/O: round trips on structures generated here, malformed input, one real seed file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pdfusion.structures.io import (
    SeedRecord,
    parse_seed_name,
    read_seed_h5,
    read_structure,
    read_structures,
    write_seed_h5,
    write_structure,
    xyz_text,
)
from pdfusion.structures.particle import Particle


def rocksalt_cluster(metal: int = 12, a: float = 4.21, radius: float = 5.0, jitter: float = 0.0,
                     seed: int = 0) -> Particle:
    """A rock-salt sphere cut (metal on even sites, O on odd), optionally jittered so coordinates are not round."""
    g = np.arange(-4, 5)
    ijk = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    pos = ijk * (a / 2)
    keep = np.linalg.norm(pos, axis=1) <= radius
    numbers = np.where(ijk[keep].sum(1) % 2 == 0, metal, 8)
    pos = pos[keep] + np.random.default_rng(seed).normal(scale=jitter, size=(int(keep.sum()), 3))
    return Particle(numbers, pos, {"structure_type": "NaCl", "formula": "MgO", "radius": radius})


def sorted_atoms(numbers: np.ndarray, pos: np.ndarray) -> np.ndarray:
    arr = np.column_stack([numbers, np.round(pos, 5)])
    return arr[np.lexsort(arr.T[::-1])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xyz_round_trip_is_bit_exact(tmp_path, seed):
    p = rocksalt_cluster(jitter=0.05, seed=seed)
    write_structure(p, tmp_path / "a.xyz")
    q = read_structure(tmp_path / "a.xyz")
    np.testing.assert_array_equal(q.numbers, p.numbers)
    assert q.positions.tobytes() == p.positions.tobytes()


def test_xyz_text_is_the_one_writer(tmp_path):
    """Files, Candidate.to_xyz and the HTTP answers all write this: count, one comment line, repr coordinates."""
    text = xyz_text(np.array([22, 8]), np.array([[0.0, 0.1, -1.5], [1.0 / 3, 2.0, 3.0]]), "two\nlines")
    assert text == "2\ntwo lines\nTi 0.0 0.1 -1.5\nO 0.3333333333333333 2.0 3.0\n"
    p = rocksalt_cluster(jitter=0.05)
    p.meta["comment"] = "a cluster"
    write_structure(p, tmp_path / "a.xyz")
    assert (tmp_path / "a.xyz").read_text() == xyz_text(p.numbers, p.positions, "a cluster")


def test_seed_h5_leftover_never_looks_like_a_seed_file(tmp_path, monkeypatch):
    """A write that fails leaves nothing; its temp name ends in .tmp, so a seed folder's *.h5 never lists it."""
    import h5py as _h5py

    rec = make_seed_record(rocksalt_cluster(jitter=0.05))
    seen = []
    real = _h5py.File

    def spy(name, *a, **k):
        seen.append(str(name))
        return real(name, *a, **k)

    monkeypatch.setattr(_h5py, "File", spy)
    write_seed_h5(rec, tmp_path / "graph_NaCl_MgO_r5.h5")
    assert seen and seen[0].endswith(".tmp") and not seen[0].endswith(".h5")
    assert [x.name for x in tmp_path.iterdir()] == ["graph_NaCl_MgO_r5.h5"]


def test_extxyz_round_trip_keeps_meta_and_lattice(tmp_path):
    p = rocksalt_cluster(jitter=0.05)
    p.meta.update(lattice=(np.eye(3) * 12.5).tolist(), note="made by a test", aug={"noise": 0.01})
    write_structure(p, tmp_path / "a.extxyz")
    q = read_structure(tmp_path / "a.extxyz")
    assert q.positions.tobytes() == p.positions.tobytes()
    np.testing.assert_array_equal(q.numbers, p.numbers)
    assert q.meta["structure_type"] == "NaCl" and q.meta["formula"] == "MgO" and q.meta["radius"] == 5.0
    assert q.meta["note"] == "made by a test"
    assert q.meta["lattice"] == p.meta["lattice"]


def test_ase_reads_what_we_write_as_extxyz(tmp_path):
    """Interoperability: an independent reader (ASE) sees the same atoms."""
    from ase.io import read

    p = rocksalt_cluster(jitter=0.05)
    write_structure(p, tmp_path / "a.extxyz")
    atoms = read(tmp_path / "a.extxyz", format="extxyz")
    np.testing.assert_array_equal(atoms.numbers, p.numbers)
    np.testing.assert_array_equal(atoms.positions, p.positions)


def test_multi_frame_xyz(tmp_path):
    a, b = rocksalt_cluster(radius=3.0), rocksalt_cluster(radius=4.0)
    write_structure(a, tmp_path / "a.xyz")
    write_structure(b, tmp_path / "b.xyz")
    (tmp_path / "ab.xyz").write_text((tmp_path / "a.xyz").read_text() + (tmp_path / "b.xyz").read_text())
    frames = read_structures(tmp_path / "ab.xyz")
    assert [len(f) for f in frames] == [len(a), len(b)]
    with pytest.raises(ValueError, match="2 frames"):
        read_structure(tmp_path / "ab.xyz")


def test_cif_of_periodic_crystal_gives_unit_cell_cartesian(tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    CifWriter(s).write_file(tmp_path / "mgo.cif")  # independent writer
    p = read_structure(tmp_path / "mgo.cif")
    assert len(p) == 8 and sorted(p.numbers.tolist()) == [8] * 4 + [12] * 4
    np.testing.assert_allclose(p.meta["lattice"], np.eye(3) * 4.21, atol=1e-8)
    np.testing.assert_allclose(sorted_atoms(p.numbers, p.positions),
                               sorted_atoms(np.array([x.specie.Z for x in s]), s.cart_coords), atol=1e-5)
    # and our writer keeps the cell
    write_structure(p, tmp_path / "again.cif")
    q = read_structure(tmp_path / "again.cif")
    np.testing.assert_allclose(q.meta["lattice"], p.meta["lattice"], atol=1e-7)
    np.testing.assert_allclose(sorted_atoms(q.numbers, q.positions), sorted_atoms(p.numbers, p.positions), atol=1e-5)


def test_cif_round_trip_of_finite_particle_up_to_translation(tmp_path):
    p = rocksalt_cluster(jitter=0.05)
    write_structure(p, tmp_path / "p.cif")
    q = read_structure(tmp_path / "p.cif")
    assert len(q) == len(p)
    centred = lambda x: x.positions - x.positions.mean(0)  # noqa: E731
    np.testing.assert_allclose(sorted_atoms(q.numbers, centred(q)), sorted_atoms(p.numbers, centred(p)), atol=1e-4)


def make_seed_record(p: Particle, n_r: int = 300, seed: int = 0) -> SeedRecord:
    rng = np.random.default_rng(seed)
    feat = {12: (160.0, 1.738, -0.415), 8: (60.0, 0.001308, 1.461)}
    na = np.column_stack([p.numbers.astype(float), [feat[int(z)] for z in p.numbers], p.positions])
    d = np.linalg.norm(p.positions[:, None] - p.positions[None], axis=-1)
    src, dst = np.nonzero((d > 0) & (d < 2.5))
    r = np.arange(n_r) * 0.01
    return SeedRecord(p, na, r, rng.normal(size=n_r), np.stack([src, dst]), d[src, dst], {})


@pytest.mark.parametrize("name, radius", [("graph_NaCl_MgO_r5.h5", 5.0), ("NaCl_MgO.h5", None)])
def test_seed_h5_round_trip_and_name_meta(tmp_path, name, radius):
    rec = make_seed_record(rocksalt_cluster(jitter=0.05))
    write_seed_h5(rec, tmp_path / name)
    got = read_seed_h5(tmp_path / name)
    for key in ("node_attributes", "r", "pdf", "edge_index", "edge_attr"):
        a, b = getattr(got, key), getattr(rec, key)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key
    np.testing.assert_array_equal(got.particle.numbers, rec.particle.numbers)
    assert got.particle.positions.tobytes() == rec.particle.positions.tobytes()
    assert got.meta == {"structure_type": "NaCl", "formula": "MgO", "radius": radius, "source": name, "metal": "Mg"}
    assert read_structure(tmp_path / name).meta["metal"] == "Mg"


def test_parse_seed_name():
    assert parse_seed_name("graph_Spinel_AgAg2O4_r8.h5")["formula"] == "AgAg2O4"
    assert parse_seed_name("CdI2_TiO2.h5") == {"structure_type": "CdI2", "formula": "TiO2", "radius": None,
                                               "source": "CdI2_TiO2.h5"}
    with pytest.raises(ValueError, match="seed-oxides pattern"):
        parse_seed_name("whatever.h5")


# ---- malformed input: the error names the file and the line / key ---------------------------------
def test_bad_atom_count_line(tmp_path):
    f = tmp_path / "bad.xyz"
    f.write_text("three\ncomment\nO 0 0 0\n")
    with pytest.raises(ValueError, match=r"bad\.xyz:1: expected the atom count"):
        read_structure(f)


def test_bad_float(tmp_path):
    f = tmp_path / "bad.xyz"
    f.write_text("2\ncomment\nO 0 0 0\nMg 1.0 x2.0 0\n")
    with pytest.raises(ValueError, match=r"bad\.xyz:4: column 3 must be a float coordinate, got 'x2\.0'"):
        read_structure(f)


def test_truncated_xyz_and_unknown_element(tmp_path):
    f = tmp_path / "short.xyz"
    f.write_text("3\ncomment\nO 0 0 0\n")
    with pytest.raises(ValueError, match=r"short\.xyz:4: atom count line 1 says 3 atoms"):
        read_structure(f)
    g = tmp_path / "elem.xyz"
    g.write_text("1\n\nQq 0 0 0\n")
    with pytest.raises(ValueError, match=r"elem\.xyz:3: unknown element symbol 'Qq'"):
        read_structure(g)


def test_extxyz_without_pos_column(tmp_path):
    f = tmp_path / "bad.extxyz"
    f.write_text('1\nProperties=species:S:1:forces:R:3 pbc="F F F"\nO 0 0 0\n')
    with pytest.raises(ValueError, match=r"bad\.extxyz:2: .*needs both 'species' and 'pos'"):
        read_structure(f)


def test_seed_h5_missing_key_and_bad_shape(tmp_path):
    rec = make_seed_record(rocksalt_cluster())
    write_seed_h5(rec, tmp_path / "graph_NaCl_MgO_r5.h5")
    with h5py.File(tmp_path / "graph_NaCl_MgO_r5.h5", "a") as h5:
        del h5["pdf"]
    with pytest.raises(ValueError, match=r"graph_NaCl_MgO_r5\.h5: missing key 'pdf'"):
        read_seed_h5(tmp_path / "graph_NaCl_MgO_r5.h5")
    with h5py.File(tmp_path / "x.h5", "w") as h5:
        for k in ("r", "pdf"):
            h5[k] = np.zeros(10)
        h5["node_attributes"] = np.zeros((4, 5))
        h5["edge_indices"] = np.zeros((2, 0), dtype=np.int64)
        h5["edge_attributes"] = np.zeros(0)
    with pytest.raises(ValueError, match=r"x\.h5: key 'node_attributes' must have shape \(N, 7\)"):
        read_seed_h5(tmp_path / "x.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        read_seed_h5(tmp_path / "text.h5")


def test_bad_cif_and_unknown_extension(tmp_path):
    f = tmp_path / "bad.cif"
    f.write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(ValueError, match=r"bad\.cif"):
        read_structure(f)
    with pytest.raises(ValueError, match="cannot tell the format"):
        write_structure(rocksalt_cluster(), tmp_path / "a.pdb")


def test_write_is_atomic_no_temp_left(tmp_path):
    p = rocksalt_cluster()
    for ext in ("xyz", "extxyz", "cif"):
        write_structure(p, tmp_path / f"a.{ext}")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.cif", "a.extxyz", "a.xyz"]


@pytest.mark.seed
def test_real_seed_file(seed_h5_dir):
    f = sorted(seed_h5_dir.glob("graph_Spinel_*_r6.h5"))[0]
    rec = read_seed_h5(f)
    with h5py.File(f) as h5:
        na = h5["node_attributes"][()]
        assert rec.pdf.tobytes() == h5["pdf"][()].tobytes()
    np.testing.assert_array_equal(rec.particle.numbers, na[:, 0].astype(int))
    np.testing.assert_array_equal(rec.particle.positions, na[:, 4:7])
    assert rec.meta["structure_type"] == "Spinel" and rec.meta["radius"] == 6.0
    from pymatgen.core import Element

    assert Element(rec.meta["metal"]).Z == int(np.unique(na[na[:, 0] != 8, 0])[0])
    assert rec.meta["formula"].startswith(rec.meta["metal"])
