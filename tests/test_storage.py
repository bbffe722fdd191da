"""Run storage: local folders become absolute, URIs (s3://, file://) pass through and are read/written
through pyarrow's filesystem layer (the `file://` scheme exercises that code path without a network)."""

from pathlib import Path

from pdfusion import storage


def test_uri_is_never_turned_into_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize_storage_path("s3://bucket/runs") == "s3://bucket/runs"
    assert storage.normalize_storage_path("runs") == str(tmp_path / "runs")
    assert storage.join("s3://bucket/runs/", "exp", "mlflow_run_id.txt") == "s3://bucket/runs/exp/mlflow_run_id.txt"
    assert not (tmp_path / "s3:").exists()


def test_local_and_uri_round_trip(tmp_path):
    local = storage.join(str(tmp_path), "a", "id.txt")
    assert storage.read_text(local) is None
    storage.write_text(local, "run-1")
    assert Path(local).read_text() == "run-1" and storage.read_text(local) == "run-1"
    assert list(Path(local).parent.glob("*.tmp")) == []
    assert [p.name for p in Path(local).parent.iterdir()] == ["id.txt"]  # no temp file of any name

    uri = storage.join(f"file://{tmp_path}", "b", "id.txt")
    assert storage.is_uri(uri) and storage.read_text(uri) is None
    storage.write_text(uri, "run-2")
    assert (tmp_path / "b" / "id.txt").read_text() == "run-2"
    assert storage.read_text(uri) == "run-2"
