"""Helpers that read pdfusion's deployment files (infra/, .dockerignore, docs/cluster.md) and check
them against the code they launch. Kept out of the tests so each test reads as one claim.

Why by hand rather than only with linters: a manifest can be schema-valid and still run a job file
that does not exist or pass it a flag its argument parser rejects; only the project's own parsers
can answer that.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
DOCKER = INFRA / "docker"
# WORKDIR of the pdfusion images: jobs/, benchmarks/, experiments/, serve/ are copied here
IMAGE_ROOT = "/home/ray/pdfusion"
SHARED_MOUNT = "/mnt/pdfusion"  # shared storage path on every node (PVC on KubeRay, EFS on AWS)
PARSER_FUNCTIONS = ("build_parser", "parser", "make_parser", "get_parser", "create_parser")


# ----------------------------------------------------------------------------------------- versions
@cache
def versions() -> dict[str, str]:
    """infra/versions.env as a dict; a malformed line is an error naming the line."""
    out: dict[str, str] = {}
    path = INFRA / "versions.env"
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key) or not value:
            raise ValueError(f"{path}:{lineno}: expected KEY=VALUE, got {line!r}")
        out[key] = value
    return out


def image_tag(flavour: str) -> str:
    v = versions()
    return f"{v['PDFUSION_IMAGE']}:{v['PDFUSION_VERSION']}-ray{v['RAY_VERSION']}-{flavour}"


# --------------------------------------------------------------------------------------------- YAML
def load_docs(path: Path) -> list[Any]:
    """All non-empty documents of a (multi-document) YAML file."""
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def infra_yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*.yaml") if p.name != ".yamllint.yaml")


def kuberay_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in load_docs(p)]


def cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) for every RayCluster, RayJob and RayService manifest."""
    out = []
    for path, doc in kuberay_docs():
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(kind, "-")
        if key == "-":
            continue
        out.append((f"{path.name}:{kind}", spec if key is None else spec.get(key)))
    return out


def pod_templates(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, pod template) of the head and every worker group of a RayClusterSpec."""
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


# ------------------------------------------------------------------------------------- Dockerfiles
@dataclass(frozen=True)
class Instruction:
    lineno: int
    op: str  # upper case: FROM, RUN, COPY, ...
    args: str


def dockerfile(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile with line continuations joined and comments dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = lineno
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append(Instruction(start, op.upper(), args.strip()))
        buf = ""
    return out


def arg_defaults(instrs: list[Instruction]) -> dict[str, str]:
    out = {}
    for ins in instrs:
        if ins.op == "ARG" and "=" in ins.args:
            k, v = ins.args.split("=", 1)
            out[k.strip()] = v.strip().strip('"')
    return out


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def dockerignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching for the pattern forms used here: `name`, `dir/name`,
    `*`/`?` globs and a leading `**/`; a pattern also excludes everything below a matched folder.
    `!` exceptions are not used in .dockerignore and are rejected by a test."""
    parts = Path(rel).parts
    for pat in patterns:
        anywhere = pat.startswith("**/")
        pat_parts = Path(pat[3:] if anywhere else pat).parts
        starts = range(len(parts)) if anywhere else range(1)
        for s in starts:
            window = parts[s : s + len(pat_parts)]
            if len(window) == len(pat_parts) and all(fnmatch.fnmatchcase(a, b)
                                                     for a, b in zip(window, pat_parts, strict=True)):
                return True
    return False


def build_context(dst: Path) -> Path:
    """Copy the Docker build context (repository minus .dockerignore) to dst, as `docker build`
    would send it; ignored folders are not descended into."""
    patterns = dockerignore_patterns()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        here = Path(dirpath)
        rel_dir = here.relative_to(ROOT)
        dirnames[:] = [d for d in dirnames if not dockerignored((rel_dir / d).as_posix(), patterns)]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if dockerignored(rel, patterns):
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(here / name, target)
    return dst


def apply_copies(instrs: list[Instruction], context: Path, workdir: Path, until_op: str, until_text: str) -> None:
    """Replay the Dockerfile's COPY instructions (destinations relative to WORKDIR) into workdir,
    stopping at the first `until_op` instruction containing until_text. Like Docker, a source
    without wildcards must exist, a folder source copies its contents, and a file goes into a
    destination ending in `/`."""
    for ins in instrs:
        if ins.op == until_op and until_text in ins.args:
            return
        if ins.op != "COPY":
            continue
        *srcs, dest = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        for src in srcs:
            matches = sorted(context.glob(src))
            if not matches and not any(c in src for c in "*?["):
                raise AssertionError(f"line {ins.lineno}: COPY source {src!r} is not in the build context")
            for m in matches:
                if m.is_dir():
                    shutil.copytree(m, workdir / dest, dirs_exist_ok=True)
                    continue
                target = workdir / dest / m.name if dest.endswith("/") else workdir / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(m, target)
    raise AssertionError(f"no {until_op} instruction containing {until_text!r}")


# ---------------------------------------------------------------------------------- job commands
@dataclass(frozen=True)
class JobCall:
    script: Path  # the job file in this repository
    argv: list[str]
    source: str  # where the command was found


def _repo_path(token: str) -> Path | None:
    """A script path as written in a manifest (image path or repo-relative) → repository file."""
    if token.startswith(IMAGE_ROOT + "/"):
        token = token[len(IMAGE_ROOT) + 1 :]
    if token.startswith("./"):
        token = token[2:]
    if token.startswith(("jobs/", "benchmarks/", "experiments/", "serve/")):
        return ROOT / token
    return None


def job_calls(command: str, source: str) -> list[JobCall]:
    """Every `python[3] <jobs|benchmarks|experiments|serve path>.py ARGS` in a shell command line (split on && ; |)."""
    out = []
    tokens = shlex.split(command, comments=True)
    segment: list[str] = []
    for tok in [*tokens, "&&"]:
        if tok in ("&&", ";", "||", "|"):
            for i, word in enumerate(segment[:-1]):
                if re.fullmatch(r"(\S*/)?python3?(\.\d+)?", word):
                    script = _repo_path(segment[i + 1])
                    if script is not None:
                        out.append(JobCall(script, segment[i + 2 :], source))
                    break
            segment = []
        else:
            segment.append(tok)
    return out


def parser_for(script: Path) -> argparse.ArgumentParser | None:
    """The job's own ArgumentParser, from a parser-building function of the module (imported from
    its path, as the job files are not a package). None when it has none: callers fall back to
    `--help` output."""
    name = f"_pdfusion_job_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec and spec.loader, f"cannot import {script}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    for fn in PARSER_FUNCTIONS:
        obj = getattr(module, fn, None)
        if callable(obj) and not isinstance(obj, type):
            try:
                parser = obj()
            except TypeError:
                continue
            if isinstance(parser, argparse.ArgumentParser):
                return parser
    return None


@cache
def help_flags(script: Path) -> frozenset[str]:
    """Option strings listed by `python script --help` (fallback for jobs without a parser function)."""
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert res.returncode == 0, f"{script} --help failed: {res.stderr[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", res.stdout))


def check_call(call: JobCall) -> list[str]:
    """Problems with one job invocation: a missing script, or arguments its parser rejects."""
    rel = call.script.relative_to(ROOT) if call.script.is_relative_to(ROOT) else call.script
    if not call.script.is_file():
        return [f"{call.source}: {rel} does not exist (jobs/ has "
                f"{sorted(p.name for p in (ROOT / 'jobs').glob('*.py'))})"]
    parser = parser_for(call.script)
    if parser is None:
        unknown = [a.split("=")[0] for a in call.argv if a.startswith("-")
                   and a.split("=")[0] not in help_flags(call.script)]
        return [f"{call.source}: {rel} --help lists no {u}" for u in unknown]
    errors: list[str] = []
    parser.exit_on_error = False
    parser.error = lambda message: errors.append(message)  # type: ignore[method-assign]
    try:
        _, extra = parser.parse_known_args(call.argv)
    except (argparse.ArgumentError, SystemExit) as err:
        return [f"{call.source}: {rel} rejects {call.argv}: {err}"]
    if extra:
        errors.append(f"unrecognized arguments: {extra}")
    return [f"{call.source}: {rel} rejects {' '.join(call.argv)}: {e}" for e in errors]


# -------------------------------------------------------------------------------- command sources
def manifest_commands() -> list[tuple[str, str]]:
    """(where, shell command) from every place in infra/ that launches pdfusion code."""
    out: list[tuple[str, str]] = []
    for path, doc in kuberay_docs():
        if doc.get("kind") == "RayJob":
            out.append((f"{path.name}:entrypoint", doc["spec"]["entrypoint"]))
    launcher = load_docs(INFRA / "cluster" / "aws-gpu.yaml")[0]
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        out += [(f"aws-gpu.yaml:{key}", c) for c in launcher.get(key) or []]
    return out


def doc_commands(path: Path) -> list[tuple[str, str]]:
    """(file:line, command) for each shell line inside ``` blocks of a Markdown file, with
    backslash continuations joined."""
    out: list[tuple[str, str]] = []
    in_block, buf, start = False, "", 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, buf = not in_block, ""
            continue
        if not in_block:
            continue
        text = line.strip()
        if not buf:
            start = lineno
        if text.endswith("\\"):
            buf += text[:-1] + " "
            continue
        buf += text
        if buf and not buf.startswith("#"):
            out.append((f"{path.name}:{start}", buf))
        buf = ""
    return out
