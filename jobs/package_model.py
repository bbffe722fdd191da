"""Package a trained checkpoint as the model that ships: a slim file (config, EMA weights, sampling defaults)
under models/<name>/model.pt, plus its config.json, loadable with weights_only=True.

    python jobs/package_model.py runs/r9/ray/r9-B/checkpoint_e00012_s00005000_final/rank0.pt \\
        --name pdfusion-cpu-v2 --pdf-guidance 0.3 --pdf-guidance-iters 200 --pdf-guidance-window 0.9 1.0 \\
        --prune-fragments
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pdfusion.inference.bundle import SHIPPED_MODEL, export_model, load_bundle
from pdfusion.inference.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a trainer checkpoint file (a Ray Train checkpoint's rank0.pt)")
    ap.add_argument("--name", default=SHIPPED_MODEL.parent.name)
    ap.add_argument("--out", default=str(SHIPPED_MODEL.parents[1]), help="models/ folder")
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--pdf-guidance", type=float, default=0.0)
    ap.add_argument("--pdf-guidance-iters", type=int, default=1)
    ap.add_argument("--pdf-guidance-cohesion", type=float, default=0.0,
                    help="weight of the stray-atom penalty in PDF guidance (SampleConfig.pdf_guidance_cohesion)")
    ap.add_argument("--pdf-guidance-window", type=float, nargs=2, default=[0.0, 1.0], metavar=("START", "END"),
                    help="shares of the sampler's steps that are guided (SampleConfig.pdf_guidance_window)")
    ap.add_argument("--resample-at", type=float, nargs="*", default=[], metavar="FRAC",
                    help="population resampling fractions of the sampler's steps (SampleConfig.resample_at)")
    ap.add_argument("--resample-keep", type=float, default=0.5)
    ap.add_argument("--prune-fragments", action="store_true",
                    help="drop atoms outside each candidate's largest bonded group (SampleConfig.prune_fragments)")
    ap.add_argument("--restarts", type=int, default=0,
                    help="late, guided re-runs of each finished sample (SampleConfig.restarts)")
    ap.add_argument("--restart-t", type=int, default=100, help="the time restarts re-noise to (SampleConfig.restart_t)")
    ap.add_argument("--count-temperature", type=float, default=1.0,
                    help="temperature of the count head's size draw (SampleConfig.count_temperature)")
    ap.add_argument("--sizing", choices=("head", "library"), default="head",
                    help="atom counts from the count head or the fitted library (SampleConfig.sizing)")
    ap.add_argument("--size-scale", type=float, default=1.0, help="with --sizing library (SampleConfig.size_scale)")
    args = ap.parse_args()
    state = load_checkpoint(args.checkpoint)
    defaults = {"guidance": args.guidance, "steps": args.steps, "pdf_guidance": args.pdf_guidance,
                "pdf_guidance_iters": args.pdf_guidance_iters, "pdf_guidance_cohesion": args.pdf_guidance_cohesion,
                "pdf_guidance_window": list(args.pdf_guidance_window),
                "resample_at": list(args.resample_at),
                "resample_keep": args.resample_keep, "prune_fragments": args.prune_fragments,
                "restarts": args.restarts, "restart_t": args.restart_t, "count_temperature": args.count_temperature,
                "sizing": args.sizing, "size_scale": args.size_scale}
    folder = Path(args.out) / args.name
    path = export_model(state, folder / "model.pt", defaults, name=args.name, version=str(state.get("step", 0)))
    (folder / "config.json").write_text(json.dumps(state["config"], indent=2, sort_keys=True) + "\n")
    bundle = load_bundle(path)  # the file loads as a bundle, exactly as the CLI and serve will load it
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, step {bundle.version}, defaults {bundle.defaults}")


if __name__ == "__main__":
    main()
