"""Experiment (c) of the 2023 report, made to work: conditional training on graphs_fixed_num_135.

80/20 split; after training, K = 16 candidates per validation PDF (atom count predicted), simulated with the
dataset's PDFConfig and scored by R_wp: NaN count, the report's figure 7 (histograms of per-PDF mean and
std of R_wp), best-of-16, and the library-lookup baseline (nearest training PDF) on the same split.
Refinement of the top candidates is an optional second stage; both are reported.
Bar: median best-of-16 R_wp <= 0.10 and below library lookup.

    nice -n 10 python experiments/exp_seed135.py --minutes 40 --out runs/exp_seed135          # train + evaluate
    nice -n 10 python experiments/exp_seed135.py --resume runs/exp_seed135/checkpoint.pt --minutes 20   # continue
    nice -n 10 python experiments/exp_seed135.py --eval-only runs/exp_seed135/checkpoint.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `experiments` is a package
from experiments.common import SHARED


def seed135_config(seed: int = 0, name: str = "cpu"):
    """A preset sized for 135-atom particles: `cpu` (radius graph, small width; batch 8 on 2 cores) or
    `gpu` (EDM-sized, fully connected; the preset's batch)."""
    from pdfusion.config import preset

    base = preset(name)
    data = dataclasses.replace(base.data, batch_size=8) if name == "cpu" else base.data
    return dataclasses.replace(base, model=dataclasses.replace(base.model, max_atoms=160), seed=seed, data=data,
                               warmup_steps=50, ema_decay=0.995)


def split(ds, split_by: str, seed: int):
    from pdfusion.data.splits import group_split

    return group_split(ds.groups(split_by), 0.2, seed=seed)


def train(trainer, train_data, minutes: float, max_steps: int | None, ckpt: Path, log: list,
          bf16: bool = True, clock: str = "wall") -> None:
    """Train until the time budget or step limit; checkpoint every `checkpoint_every_steps` and at the end.
    On CUDA each step runs under bf16 autocast (as the Ray Train job does) unless `bf16` is False.
    `clock="cpu"` counts this process's CPU time instead of wall time: an equal budget for arms that share
    a loaded machine (with 1 thread, CPU seconds are compute seconds)."""
    from tqdm.auto import tqdm

    from pdfusion.data.batching import BucketBatchSampler
    from pdfusion.training.trainer import autocast_for

    sizes = [int(d.num_nodes) for d in train_data]
    sampler = BucketBatchSampler(sizes, trainer.cfg.data.batch_size, shuffle=True, seed=trainer.cfg.seed)
    resumed = trainer.sampler_state is not None
    if resumed:
        sampler.load_state_dict(trainer.sampler_state)
    now = time.process_time if clock == "cpu" else time.time
    deadline = now() + 60 * minutes
    bar = tqdm(desc="train", initial=trainer.step)
    losses: list[float] = []

    def on_step(m: dict, batch, indices) -> None:
        losses.append(m["loss"])
        bar.update(1)
        if trainer.step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", count=f"{m.get('loss_count', 0):.3f}")
            log.append({"step": trainer.step, "loss": float(np.mean(losses[-20:])), "lr": m["lr"],
                        "loss_count": m.get("loss_count", 0.0)})
        if trainer.step % trainer.cfg.checkpoint_every_steps == 0:
            trainer.save_checkpoint(ckpt, sampler_state=sampler.state_dict())

    trainer.train_loop(train_data, sampler, epochs=10**9, max_steps=max_steps, should_stop=lambda: now() >= deadline,
                       resumed=resumed, autocast=autocast_for(trainer.device, bf16), on_step=on_step)
    bar.close()
    trainer.save_checkpoint(ckpt, sampler_state=sampler.state_dict(),
                            extra={"defaults": {"guidance": 1.0, "steps": 100}})


def evaluate(model, diffusion, pdf_cfg, train_data, val_data, k: int, steps: int | None, guidance: float,
             refine_top: int, refine_steps: int, seed: int, out: Path, title: str, pdf_guidance: float = 0.0,
             pdf_guidance_iters: int = 1, eta: float = 0.0, device: str = "cpu", spacing: str = "time",
             seed_library: int | None = None, self_cond_estimate: str = "clean", sizes: str = "head",
             resample_at: tuple[float, ...] = (), resample_keep: float = 0.5,
             pdf_guidance_cohesion: float = 0.0, pdf_guidance_window: tuple[float, float] = (0.0, 1.0),
             prune_fragments: bool = False, restarts: int = 0, restart_t: int = 100,
             count_temperature: float = 1.0, prune_atoms: bool = False) -> dict:
    from pdfusion.config import SampleConfig
    from pdfusion.inference.candidates import prune_candidates, refine_candidates, sample_and_score
    from pdfusion.inference.lookup import library_lookup, nearest_library
    from pdfusion.inference.refine import refine
    from pdfusion.inference.topology import reshape_and_refine

    pdfs = torch.cat([d.y for d in val_data]).float()
    lib_pdfs = torch.cat([d.y for d in train_data]).float()
    metals = [int(d.metal) for d in val_data]
    t0 = time.time()
    scfg = SampleConfig(guidance=guidance, steps=steps, n_samples=k, seed=seed, pdf_guidance=pdf_guidance,
                        pdf_guidance_iters=pdf_guidance_iters, eta=eta, spacing=spacing,
                        self_cond_estimate=self_cond_estimate, resample_at=tuple(resample_at),
                        resample_keep=resample_keep, pdf_guidance_cohesion=pdf_guidance_cohesion,
                        pdf_guidance_window=tuple(pdf_guidance_window), prune_fragments=prune_fragments,
                        restarts=restarts, restart_t=restart_t, count_temperature=count_temperature)
    if seed_library is None:
        counts = None
        if sizes == "library":  # each candidate at the atom count of one of the K nearest library structures
            counts = [[int(train_data[int(j)].num_nodes) for j in row] for row in nearest_library(pdfs, lib_pdfs, k)]
        ranked = sample_and_score(model, diffusion, pdfs, metals, scfg, pdf_cfg, device=device, progress=True,
                                  sizes=counts)
    else:
        ranked = seeded_candidates(model, diffusion, pdfs, metals, train_data,
                                   dataclasses.replace(scfg, init_t=seed_library),
                                   pdf_cfg)
    sample_s = time.time() - t0
    rwp = np.array([[c.rwp for c in cands] for cands in ranked])  # (P, K), each row ascending
    n_nan = int((~np.isfinite(rwp)).sum())
    n_true = np.array([int(d.num_nodes) for d in val_data])
    # the drawn size (before detached fragments are dropped) is what the count head chose
    n_pred = np.array([[c.n_sampled if c.n_sampled is not None else c.n_atoms for c in cands] for cands in ranked])
    n_kept = np.array([[c.n_atoms for c in cands] for cands in ranked])
    lib_idx, lib_rwp = library_lookup(pdfs, lib_pdfs)
    result = {
        "title": title, "val_pdfs": len(val_data), "k": k, "sampler_steps": steps or "ancestral",
        "guidance": guidance, "eta": eta, "spacing": spacing, "seed_library_t": seed_library, "sizes": sizes,
        "pdf_guidance": pdf_guidance, "pdf_guidance_iters": pdf_guidance_iters,
        "pdf_guidance_cohesion": pdf_guidance_cohesion, "pdf_guidance_window": list(pdf_guidance_window),
        "prune_fragments": prune_fragments, "restarts": restarts, "restart_t": restart_t,
        "count_temperature": count_temperature,
        "resample_at": list(resample_at), "resample_keep": resample_keep,
        "nan_values": n_nan,
        "median_best_of_k": float(np.median(rwp[:, 0])), "mean_best_of_k": float(np.mean(rwp[:, 0])),
        "median_of_per_pdf_mean": float(np.median(rwp.mean(1))),
        "median_library_lookup": float(np.median(lib_rwp)),
        "frac_pdfs_model_beats_library": float(np.mean(rwp[:, 0] < lib_rwp)),
        "n_atoms_exact_frac": float(np.mean(n_pred == n_true[:, None])),
        "n_atoms_kept_exact_frac": float(np.mean(n_kept == n_true[:, None])),
        "atoms_pruned_by_sampler_frac": float(1 - n_kept.sum() / max(int(n_pred.sum()), 1)),
        "valid_frac": valid_fraction(ranked),
        "valid_strict_frac": strict_valid_fraction(ranked),
        "sample_seconds": sample_s,
        **pruned_report(ranked, pdfs, pdf_cfg),
    }
    if diffusion.model_cfg.bond_length is None:
        # the bar is stated after the isotropic expansion fit: give Å-frame candidates the same step
        expanded = best_expanded(ranked, pdfs, pdf_cfg)
        result["median_best_of_k_expanded"] = float(np.median(expanded))
    # and the library the same step, in either frame
    _, lib_exp_rwp = library_lookup_expanded(pdfs, train_data, pdf_cfg)
    result.update({"median_library_lookup_expanded": float(np.median(lib_exp_rwp)),
                   "frac_pdfs_model_beats_library_expanded": float(np.mean(rwp[:, 0] < lib_exp_rwp))})
    if refine_top and refine_steps:
        t0 = time.time()
        refined = [refine_candidates(c[:refine_top], pdfs[i], pdf_cfg, steps=refine_steps)
                   for i, c in enumerate(ranked)]
        best_ref = np.array([r[0].rwp for r in refined])
        # the fair comparison: the library's best structure refined the same way
        lib_fits = [refine(train_data[int(j)].pos.double().numpy(), train_data[int(j)].z.numpy(), pdfs[i],
                           pdf_cfg, steps=refine_steps) for i, j in enumerate(lib_idx)]
        lib_ref = np.array([f.rwp_after[0] for f in lib_fits])
        result.update({"refine_top": refine_top, "refine_steps": refine_steps,
                       "median_best_of_k_refined": float(np.median(best_ref)),
                       "median_library_lookup_refined": float(np.median(lib_ref)),
                       "frac_pdfs_refined_beats_library": float(np.mean(best_ref < lib_rwp)),
                       "frac_pdfs_refined_beats_refined_library": float(np.mean(best_ref < lib_ref)),
                       "refine_seconds": time.time() - t0})
        if prune_atoms:  # the topology stage on both sides, on the same refined structures
            t0 = time.time()
            shaped = [prune_candidates(r, pdfs[i], pdf_cfg, steps=refine_steps, top=refine_top)
                      for i, r in enumerate(refined)]
            best_pruned = np.array([r[0].rwp for r in shaped])
            lib_pruned = np.array([
                reshape_and_refine([f.positions], [train_data[int(j)].z.numpy()], f.rwp_after, pdfs[i], pdf_cfg,
                                   refine_steps).rwp[0]
                for i, (j, f) in enumerate(zip(lib_idx, lib_fits, strict=True))])
            result.update({"median_best_of_k_refined_pruned": float(np.median(best_pruned)),
                           "median_library_lookup_refined_pruned": float(np.median(lib_pruned)),
                           "frac_pdfs_pruned_beats_pruned_library": float(np.mean(best_pruned < lib_pruned)),
                           "per_pdf_refined": best_ref.tolist(), "per_pdf_refined_pruned": best_pruned.tolist(),
                           "per_pdf_library_refined": lib_ref.tolist(),
                           "per_pdf_library_refined_pruned": lib_pruned.tolist(),
                           "n_atoms_best_refined_pruned": [r[0].n_atoms for r in shaped],
                           "n_atoms_true": n_true.tolist(),
                           "prune_seconds": time.time() - t0})
    else:
        best_ref = None
    plot_figure7(rwp, lib_rwp, best_ref, out / "figure7_rwp.png", title)
    np.savez(out / "rwp.npz", rwp=rwp, library=lib_rwp, library_index=lib_idx,
             refined=best_ref if best_ref is not None else np.zeros(0))
    best = ranked[int(np.argmin(rwp[:, 0]))][0]
    (out / "best_candidate.xyz").write_text(best.to_xyz())
    return result


def pruned_report(ranked: list, pdfs: torch.Tensor, pdf_cfg) -> dict:
    """The same candidates with their detached fragments dropped (what SampleConfig.prune_fragments does before
    scoring), re-scored: a paired comparison on identical samples. Best-of-K after pruning, strict validity,
    and the share of atoms dropped here (0 when the sampler already pruned: see atoms_pruned_by_sampler_frac)."""
    from pdfusion.evaluation.metrics import validity
    from pdfusion.inference.candidates import keep_largest_fragments
    from pdfusion.inference.refine import pad_structures
    from pdfusion.pdf import rwp as rwp_fn
    from pdfusion.pdf.fitting import simulate_safe

    best, valid, dropped, total = [], [], 0, 0
    for i, row in enumerate(ranked):
        pos, num, mask = (torch.as_tensor(a) for a in pad_structures([c.positions for c in row],
                                                                      [c.numbers for c in row]))
        keep = keep_largest_fragments(pos, mask)
        dropped += int((mask & ~keep).sum())
        total += int(mask.sum())
        with torch.no_grad():
            r = rwp_fn(simulate_safe(pos, num * keep, keep, pdf_cfg), pdfs[i].double().expand(len(row), -1))
        best.append(float(r.min()))
        valid += [validity(pos[j][keep[j]].numpy()).valid for j in range(len(row))]
    return {"median_best_of_k_pruned": float(np.median(best)), "valid_strict_frac_pruned": float(np.mean(valid)),
            "atoms_dropped_frac": dropped / max(total, 1), "best_of_k_pruned": best}


def seeded_candidates(model, diffusion, pdfs: torch.Tensor, metals, library, cfg, pdf_cfg) -> list:
    """Template-seeded sampling (reported apart from the unaided model): for each target, its K nearest library
    structures by PDF, noised to cfg.init_t and denoised with the target as condition (the target's metal on
    the template's metal sites), each sized by the same expansion fit as the model's own candidates."""
    from tqdm.auto import tqdm

    from pdfusion.data.batching import DenseBatch
    from pdfusion.diffusion.gaussian import types_to_numbers
    from pdfusion.diffusion.samplers import sample
    from pdfusion.inference.candidates import candidates_from, fit_and_score
    from pdfusion.inference.refine import pad_structures
    from pdfusion.pdf import rwp as rwp_fn

    lib_pdfs = torch.cat([d.y for d in library]).double()
    ranked = []
    for i in tqdm(range(pdfs.shape[0]), desc="seeded"):
        short = torch.argsort(rwp_fn(lib_pdfs, pdfs[i].double().expand_as(lib_pdfs)))[: cfg.n_samples].tolist()
        pos, num, msk = (torch.from_numpy(a) for a in pad_structures(
            [library[j].pos.double().numpy() for j in short], [library[j].z.numpy() for j in short]))
        k = len(short)
        metal = torch.full((k,), int(metals[i]))
        init = DenseBatch(pos=pos.float(), z=num, mask=msk, pdf=None, metal=None, n_atoms=msk.sum(1))
        out = sample(model, diffusion, pdfs[i].expand(k, -1), metal, msk.sum(1), cfg, init=init,
                     generator=torch.Generator().manual_seed(cfg.seed + i))
        mask = out.mask.bool()
        numbers = types_to_numbers(out.types.long(), metal) * mask
        scored = fit_and_score(out.positions.float(), numbers, mask, pdfs[i].expand(k, -1).float(), pdf_cfg,
                                diffusion.model_cfg.bond_length)
        ranked.append(sorted(candidates_from(numbers, mask, *scored), key=lambda c: c.rwp))
    return ranked


VALID_DISTANCE = 1.2  # Å: a candidate is valid when no two atoms are closer


def strict_valid_fraction(ranked) -> float:
    """Fraction of all candidates valid by `evaluation.metrics.validity` (the beyond-library benchmark's test):
    every distance >= 1.2 Å and no atom farther than 3.5 Å from all others (no stray atoms)."""
    from pdfusion.evaluation.metrics import validity

    return float(np.mean([validity(c.positions).valid for row in ranked for c in row]))


def valid_fraction(ranked) -> float:
    """Fraction of all candidates whose shortest interatomic distance is at least VALID_DISTANCE."""
    from pdfusion.inference.refine import pad_structures
    from pdfusion.pdf.fitting import min_pair_distance

    cands = [c for row in ranked for c in row]
    pos, _, mask = pad_structures([c.positions for c in cands], [c.numbers for c in cands])
    return float((min_pair_distance(torch.as_tensor(pos), torch.as_tensor(mask)) >= VALID_DISTANCE).double().mean())


def best_expanded(ranked, pdfs: torch.Tensor, pdf_cfg) -> np.ndarray:
    """Per PDF, the best R_wp of its candidates after each is scaled to the target (`fit_expansion`)."""
    from pdfusion.inference.refine import pad_structures
    from pdfusion.pdf.fitting import fit_expansion

    out = []
    for i, cands in enumerate(ranked):
        pos, num, mask = pad_structures([c.positions for c in cands], [c.numbers for c in cands])
        fit = fit_expansion(torch.as_tensor(pos), torch.as_tensor(num), torch.as_tensor(mask),
                            pdfs[i].double().expand(len(cands), -1), pdf_cfg)
        out.append(float(fit.rwp.min()))
    return np.array(out)


def library_lookup_expanded(pdfs: torch.Tensor, library, pdf_cfg, shortlist: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Library lookup with each library structure's expansion fitted to the target (what a bond-length-frame
    model's candidates get): the `shortlist` nearest library PDFs by plain R_wp, each scaled by
    `fit_expansion`, the best kept. Returns (library index, R_wp) per target."""
    from pdfusion.inference.refine import pad_structures
    from pdfusion.pdf import rwp
    from pdfusion.pdf.fitting import fit_expansion

    lib_pdfs = torch.cat([d.y for d in library]).double()
    idx, best = [], []
    for i in range(pdfs.shape[0]):
        short = torch.argsort(rwp(lib_pdfs, pdfs[i].double().expand_as(lib_pdfs)))[:shortlist]
        pos, num, msk = (torch.from_numpy(a) for a in pad_structures(  # dataset positions are centred
            [library[j].pos.double().numpy() for j in short.tolist()], [library[j].z.numpy() for j in short.tolist()]))
        fit = fit_expansion(pos, num, msk, pdfs[i].double().expand(len(short), -1), pdf_cfg)
        k = int(fit.rwp.argmin())
        idx.append(int(short[k]))
        best.append(float(fit.rwp[k]))
    return np.array(idx), np.array(best)


def plot_figure7(rwp: np.ndarray, lib: np.ndarray, refined: np.ndarray | None, path: Path, title: str) -> None:
    """The 2023 report's figure 7 (histograms of per-PDF mean and std of R_wp over K samples), plus
    best-of-K vs library lookup (and refined, when run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].hist(rwp.mean(1), bins=30, color="C0")
    ax[0].set(title="mean R_wp per validation PDF", xlabel="R_wp", ylabel="PDFs")
    ax[1].hist(rwp.std(1), bins=30, color="C1")
    ax[1].set(title="std of R_wp per validation PDF", xlabel="R_wp", ylabel="PDFs")
    hi = float(np.quantile(np.concatenate([rwp[:, 0], lib]), 0.98))
    bins = np.linspace(0, max(hi, 0.05), 30)
    ax[2].hist(rwp[:, 0], bins=bins, alpha=0.6, label=f"best of {rwp.shape[1]} (median {np.median(rwp[:, 0]):.3f})")
    ax[2].hist(lib, bins=bins, alpha=0.6, label=f"library lookup (median {np.median(lib):.3f})")
    if refined is not None:
        ax[2].hist(refined, bins=bins, alpha=0.6, label=f"best, refined (median {np.median(refined):.3f})")
    ax[2].axvline(0.10, color="k", ls="--", lw=1)
    ax[2].set(title="best-of-K vs library lookup", xlabel="R_wp", ylabel="PDFs")
    ax[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(data_dir: Path, split_by: str, title: str, default_out: str, argv=None, config_fn=seed135_config) -> dict:
    from pdfusion.config import with_sets
    from pdfusion.data.dataset import open_dataset
    from pdfusion.inference.bundle import load_bundle
    from pdfusion.training.trainer import Trainer

    ap = argparse.ArgumentParser(description=title)
    ap.add_argument("--data", default=str(data_dir))
    ap.add_argument("--preset", choices=("cpu", "gpu"), default="cpu",
                    help="new runs: the base config (`gpu` = EDM-sized 9 x 256, fully connected, T = 1000)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    ap.add_argument("--no-bf16", action="store_true", help="CUDA: train in float32 instead of bf16 autocast")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what --minutes counts: wall time, or this process's CPU time (fair on a shared machine)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                    help="new runs only: any config field, e.g. --set model.normalization_factor=1 --set lr=1e-3")
    ap.add_argument("--decay-lr", action="store_true",
                    help="cosine-decay the learning rate to 5%% at --max-steps (default: constant after warmup)")
    ap.add_argument("--eval-on", choices=("val", "train"), default="val",
                    help="'train' scores training PDFs instead (memorisation check; the library then excludes "
                         "the scored structures)")
    ap.add_argument("--train-subset", type=int, default=None, metavar="N",
                    help="train on N evenly spaced training structures only (capacity check: can the network "
                         "learn a few particles where it cannot learn all?); their files are printed")
    ap.add_argument("--resume", default=None, help="continue training from this checkpoint")
    ap.add_argument("--init-from", default=None,
                    help="new run (config from the preset and --set) starting from this checkpoint's weights "
                         "(model and EMA; optimizer, step and schedule start fresh)")
    ap.add_argument("--eval-only", default=None, help="only evaluate this checkpoint")
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("--val-pdfs", type=int, default=None, help="evaluate on this many validation PDFs (default all)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity of the strided sampler")
    ap.add_argument("--seed-library", type=int, default=None, metavar="T0",
                    help="template-seeded sampling: start from the K nearest library structures noised to t = T0 "
                         "(reported apart from the unaided model)")
    ap.add_argument("--sizes", choices=("head", "library"), default="head",
                    help="atom counts: drawn from the model's count head, or those of each target's K nearest "
                         "library structures (by R_wp)")
    ap.add_argument("--spacing", choices=("time", "sigma"), default="time",
                    help="strided times evenly in t, or in sigma^(1/7) (Karras)")
    ap.add_argument("--pdf-guidance", type=float, default=0.0,
                    help="steer sampling toward the target G(r) (A per step at full noise; 0 = off)")
    ap.add_argument("--pdf-guidance-iters", type=int, default=1)
    ap.add_argument("--pdf-guidance-cohesion", type=float, default=0.0,
                    help="weight of the stray-atom penalty in PDF guidance (0 = off)")
    ap.add_argument("--pdf-guidance-window", type=float, nargs=2, default=[0.0, 1.0], metavar=("START", "END"),
                    help="shares of the sampler's steps that are guided (0 = the first step, at full noise)")
    ap.add_argument("--prune-fragments", action="store_true",
                    help="drop atoms outside each candidate's largest bonded group before scoring")
    ap.add_argument("--restarts", type=int, default=0,
                    help="restart sampling: re-noise each finished sample to --restart-t and run the late times "
                         "again, guided, this many times (0 = off)")
    ap.add_argument("--restart-t", type=int, default=100, help="the time restarts re-noise to (of T)")
    ap.add_argument("--count-temperature", type=float, default=1.0,
                    help="temperature of the count head's size draw (< 1 sharpens toward its mode)")
    ap.add_argument("--resample-at", type=float, nargs="*", default=[], metavar="FRAC",
                    help="population resampling: at these fractions of the sampler's steps keep each target's best "
                         "candidates (by the guidance objective) and restart the rest from copies of them")
    ap.add_argument("--resample-keep", type=float, default=0.5, help="share of each target's candidates kept")
    ap.add_argument("--self-cond-estimate", choices=("clean", "raw"), default="clean",
                    help="a self-conditioned model's fed-back x̂0: after clipping/PDF guidance, or its own (as trained)")
    ap.add_argument("--untrained-control", action="store_true",
                    help="evaluate a freshly initialised model of the same config instead: what the sampler "
                         "(and PDF guidance) achieve without a learned prior")
    ap.add_argument("--refine-top", type=int, default=2)
    ap.add_argument("--refine-steps", type=int, default=50)
    ap.add_argument("--prune-atoms", action="store_true",
                    help="after refinement, prune atoms by R_wp and refine again (model's top --refine-top and the "
                         "refined library structure; inference.topology.reshape_and_refine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=default_out)
    args = ap.parse_args(argv)
    if args.decay_lr and not args.max_steps:
        ap.error("--decay-lr needs --max-steps (the step the cosine decay ends at)")
    if args.resume and (args.set or args.preset != "cpu"):
        ap.error("--set and --preset apply to new runs; a resumed run keeps its checkpoint's config")
    if args.resume and args.init_from:
        ap.error("--init-from starts a new run; --resume continues one: give one of them")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = open_dataset(args.data)
    tr_idx, va_idx = split(ds, split_by, args.seed)
    subset_files = None
    if args.train_subset:
        tr_idx = np.asarray(tr_idx)[np.unique(np.linspace(0, len(tr_idx) - 1, args.train_subset).round().astype(int))]
        subset_files = [ds.record(int(i)).meta["source"] for i in tr_idx]
        print("training subset:", ", ".join(subset_files), flush=True)
    train_data = [ds[int(i)] for i in tr_idx]
    val_data = [ds[int(i)] for i in va_idx]
    pool = train_data if args.eval_on == "train" else val_data
    keep = np.arange(len(pool))
    if args.val_pdfs:
        keep = np.unique(np.linspace(0, len(pool) - 1, args.val_pdfs).round().astype(int))
    val_eval = [pool[i] for i in keep]
    scored = set(keep.tolist()) if args.eval_on == "train" else set()
    library = [d for i, d in enumerate(train_data) if i not in scored]
    log: list = []
    info = {"train_structures": len(train_data), "val_structures": len(val_data), "split_by": split_by,
            "train_subset": subset_files,
            "eval_on": args.eval_on}
    if args.eval_only:
        bundle = load_bundle(args.eval_only, device=device)
        model, diffusion, pdf_cfg, step = bundle.model, bundle.diffusion, bundle.pdf_config, bundle.version
        train_s = train_cpu_s = 0.0
        if args.untrained_control:
            fresh = Trainer(Trainer.from_checkpoint(args.eval_only).cfg, device=device)
            model, step = fresh.ema.eval(), 0
    else:
        trainer = (Trainer.from_checkpoint(args.resume, device=device) if args.resume
                   else Trainer(with_sets(config_fn(args.seed, args.preset), args.set), device=device))
        if args.init_from:
            from pdfusion.inference.checkpoint import load_checkpoint

            state = load_checkpoint(args.init_from)
            trainer.module.load_state_dict(state["model"])  # shapes must match: a clear torch error otherwise
            trainer.ema.load_state_dict(state["ema"])
        if args.decay_lr:
            trainer.total_steps = args.max_steps  # the LR lambda reads it at every step
        t0 = time.time()
        c0 = time.process_time()
        train(trainer, train_data, args.minutes, args.max_steps, out / "checkpoint.pt", log, bf16=not args.no_bf16,
              clock=args.clock)
        train_cpu_s = time.process_time() - c0
        train_s = time.time() - t0
        model, diffusion, pdf_cfg, step = trainer.ema, trainer.diffusion, trainer.cfg.pdf, trainer.step
        info["val_loss_ema"] = trainer.evaluate_loss([trainer.collate(val_data[i:i + 8])
                                                      for i in range(0, len(val_data), 8)])
    result = {**info, "train_step": step, "train_seconds_this_call": train_s,
              "train_cpu_seconds_this_call": train_cpu_s, "clock": args.clock, "threads": args.threads,
              "device": device,
              **evaluate(model, diffusion, pdf_cfg, library, val_eval, args.k, args.sample_steps, args.guidance,
                         args.refine_top, args.refine_steps, args.seed, out, title, args.pdf_guidance,
                         args.pdf_guidance_iters, args.eta, device, args.spacing, args.seed_library,
                         args.self_cond_estimate, args.sizes, tuple(args.resample_at), args.resample_keep,
                         args.pdf_guidance_cohesion, tuple(args.pdf_guidance_window), args.prune_fragments,
                         restarts=args.restarts, restart_t=args.restart_t,
                         count_temperature=args.count_temperature, prune_atoms=args.prune_atoms)}
    result["bar_median_best_le_0.10"] = result["median_best_of_k"] <= 0.10
    result["bar_below_library"] = result["median_best_of_k"] < result["median_library_lookup"]
    (out / "result.json").write_text(json.dumps(result, indent=2))
    (out / "train_log.json").write_text(json.dumps(log))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run(SHARED / "graphs_fixed_num_135", "random", "seed-oxides graphs_fixed_num_135, random 80/20 split",
        "runs/exp_seed135")
