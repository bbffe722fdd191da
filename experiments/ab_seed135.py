"""Equal-CPU A/B of two training recipes on graphs_fixed_num_135: one command, one table row per arm.

Both arms train side by side for the same minutes (1 thread each, the 2 cores of this machine), then each is
evaluated on the same 12 validation PDFs (K = 16, 100 strided steps, η = 1, top-4 refined), and its EMA
denoiser's x̂0 error is measured at t = 10 / 25 / 50 / 100 on the validation particle AntiFlourite_Ag2O
(`experiments.common.x0_errors`, 16 noise draws). Recipes are `--set KEY=VALUE` lists over `exp_seed135`'s config.

    python experiments/ab_seed135.py --minutes 30 --out runs/ab/edge_pdf \\
        --a model.normalization_factor=1 --b model.normalization_factor=1 model.edge_pdf=raw
    python experiments/ab_seed135.py --out runs/ab/edge_pdf --table-only      # the table again, from the results
    python experiments/ab_seed135.py --minutes 30 --clock cpu --pdf-guidance 0.3 --pdf-guidance-iters 3 \\
        --out runs/ab/sc --a model.edge_pdf=raw diffusion.t_sampling=lognormal \\
        --b model.edge_pdf=raw diffusion.t_sampling=lognormal \\
        model.self_condition=true                                      # CPU-time budgets, PDF-guided sampling
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `experiments` is a package
from experiments.common import SHARED, load_one, x0_errors

HERE = Path(__file__).resolve().parent
PROBE = SHARED / "graphs_fixed_num_135" / "AntiFlourite_Ag2O.h5"
EVAL = ["--val-pdfs", "12", "-k", "16", "--sample-steps", "100", "--eta", "1", "--refine-top", "4",
        "--refine-steps", "150"]
TS = (10, 25, 50, 100)


def launch(arm: str, sets: list[str], minutes: float, out: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "exp_seed135.py"), "--minutes", str(minutes), "--out", str(out / arm),
           *EVAL, *extra]
    for s in sets:
        cmd += ["--set", s]
    (out / arm).mkdir(parents=True, exist_ok=True)
    (out / arm / "command.txt").write_text(" ".join(cmd) + "\n")
    log = open(out / arm / "log.txt", "w")  # noqa: SIM115 - closed when the process ends
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def x0_row(checkpoint: Path) -> dict[int, float]:
    from pdfusion.training.trainer import Trainer

    data, _ = load_one(PROBE)
    rows = x0_errors(Trainer.from_checkpoint(checkpoint), data, copies=16, seed=0, ts=TS)
    return {int(r["t"]): float(r["x0_error_A"]) for r in rows if int(r["t"]) in TS}


def table(out: Path, arms: dict[str, list[str]]) -> str:
    head = ("| arm | recipe (`--set`) | steps | x̂0 error t=10/25/50/100 (Å) | raw best-of-16 | after expansion fit "
            "| refined top-4 | valid (≥1.2 Å) | NaN | library raw / expanded / refined |\n|" + "---|" * 10)
    lines = [head]
    for arm, sets in arms.items():
        res = json.loads((out / arm / "result.json").read_text())
        x0 = json.loads((out / arm / "x0.json").read_text()) if (out / arm / "x0.json").exists() else {}
        x0s = " / ".join(f"{x0[str(t)]:.3f}" if str(t) in x0 else "—" for t in TS)
        expanded = res.get("median_best_of_k_expanded", res["median_best_of_k"])
        lib = (f"{res['median_library_lookup']:.3f} / {res.get('median_library_lookup_expanded', float('nan')):.3f} / "
               f"{res.get('median_library_lookup_refined', float('nan')):.3f}")
        lines.append(f"| {arm} | {' '.join(sets) or '(preset)'} | {res['train_step']} | {x0s} "
                     f"| {res['median_best_of_k']:.3f} "
                     f"| {expanded:.3f} | {res.get('median_best_of_k_refined', float('nan')):.3f} "
                     f"| {100 * res.get('valid_frac', float('nan')):.0f}% | {res['nan_values']} | {lib} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", nargs="*", default=[], metavar="KEY=VALUE", help="arm A's config overrides")
    ap.add_argument("--b", nargs="*", default=[], metavar="KEY=VALUE", help="arm B's config overrides")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time per arm (both run at once)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what --minutes counts per arm: wall time, or the arm's own CPU time (fair when other "
                         "work shares the cores)")
    ap.add_argument("--pdf-guidance", type=float, default=0.0, help="sample both arms with this PDF guidance")
    ap.add_argument("--pdf-guidance-iters", type=int, default=1)
    ap.add_argument("--extra", nargs="*", default=[], help="further exp_seed135 arguments for both arms")
    ap.add_argument("--out", required=True)
    ap.add_argument("--table-only", action="store_true", help="print the table from a finished A/B")
    args = ap.parse_args()
    out = Path(args.out)
    spec = out / "arms.json"
    if args.table_only:
        print(table(out, json.loads(spec.read_text())))
        return
    out.mkdir(parents=True, exist_ok=True)
    arms = {"A": args.a, "B": args.b}
    spec.write_text(json.dumps(arms))
    extra = ["--clock", args.clock, "--pdf-guidance", str(args.pdf_guidance),
             "--pdf-guidance-iters", str(args.pdf_guidance_iters), *args.extra]
    procs = {arm: launch(arm, sets, args.minutes, out, extra) for arm, sets in arms.items()}
    failed = [arm for arm, p in procs.items() if p.wait() != 0]
    if failed:
        sys.exit(f"arm(s) {failed} failed; see {out}/<arm>/log.txt")
    import torch

    torch.set_num_threads(1)
    for arm in arms:
        (out / arm / "x0.json").write_text(json.dumps(x0_row(out / arm / "checkpoint.pt")))
    print(table(out, arms))


if __name__ == "__main__":
    main()
