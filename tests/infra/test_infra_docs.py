"""docs/cluster.md is a runbook: every repository file it names exists and every job command in
its code blocks runs an existing job with flags the job's parser accepts."""

from __future__ import annotations

import re

import infra_checks as ic

DOC = ic.ROOT / "docs" / "cluster.md"
PATH = re.compile(r"(?<![\w/.-])((?:infra|jobs|benchmarks|experiments|serve)/[\w./-]*\w)")
CREATED_BY_THE_READER = {"infra/mlflow/.env"}  # `cp .env.example .env`; git-ignored, holds secrets


def test_every_file_the_runbook_names_exists():
    named = set(PATH.findall(DOC.read_text()))
    assert {"infra/kuberay/rayjob-train.yaml", "infra/cluster/aws-gpu.yaml",
            "infra/mlflow/docker-compose.yaml"} <= named
    missing = sorted(p for p in named - CREATED_BY_THE_READER if not (ic.ROOT / p).exists())
    assert not missing, f"docs/cluster.md names files that do not exist: {missing}"


def test_every_job_command_in_the_runbook_parses():
    commands = ic.doc_commands(DOC)
    calls = [c for where, cmd in commands for c in ic.job_calls(cmd, where)]
    scripts = {c.script.name for c in calls}
    assert {"train_egnn.py", "tune_schedules.py"} <= scripts
    problems = [p for c in calls for p in ic.check_call(c)]
    assert not problems, "\n".join(problems)


def test_runbook_commands_match_the_manifests():
    """The `ray job submit` training command is the RayJob's entrypoint, so both paths train alike."""
    entrypoints = {d["metadata"]["name"]: d["spec"]["entrypoint"] for _, d in ic.kuberay_docs()
                   if d["kind"] == "RayJob"}
    text = " ".join(cmd for _, cmd in ic.doc_commands(DOC))
    for name, entry in entrypoints.items():
        assert entry in text, f"docs/cluster.md has no `ray job submit -- {entry}` ({name})"
