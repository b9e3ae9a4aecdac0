"""Model cards (parsed with huggingface_hub.ModelCard) and --push-to-hub up to the upload call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from seedcli import cards, hub
from seedcli.config.base import to_dict
from seedcli.config.distill import DistillConfig
from seedcli.errors import ConfigError, SeedError


def make_run(root: Path, model: str, *, data: Path | None = None, method: str = "seed") -> Path:
    run = root / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}", encoding="utf-8")
    cfg = DistillConfig(model=model, method=method, data=str(data or root / "nodata"), max_steps=4)
    resolved = {"model_source": model, "global_batch": 8, "train_records": 16, "total_steps_per_round": 4}
    document = {"seedcli_version": "0", "command": "distill", "config": to_dict(cfg), "resolved": resolved}
    (run / "config.json").write_text(json.dumps(document), encoding="utf-8")
    summary = {"final": {"last": {"step": 4, "loss": 0.2}, "mean_kl": 0.1}}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run


def pope_block(f1: float) -> dict:
    rates = {"accuracy": f1, "precision": f1, "recall": f1, "f1": f1, "yes_ratio": 0.5}
    return {"official": rates, "robust": rates}


def results(out: Path, run: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "out": str(out),
        "created": "2026-01-01T00:00:00+00:00",
        "protocol": {"label": "greedy"},
        "models": [{"label": "base", "run": None}, {"label": "run", "run": str(run)}],
        "pope": {"base": {"random": pope_block(0.8)}, "run": {"random": pope_block(0.85)}},
        "chair": {
            "base": {"chair_s_pct": 40.0, "chair_i_pct": 12.0, "recall_pct": 80.0},
            "run": {"chair_s_pct": 30.0, "chair_i_pct": 9.5, "recall_pct": 79.0},
        },
    }
    (out / "results.json").write_text(json.dumps(data), encoding="utf-8")
    return data


def test_adapter_card_metadata_parses_and_inherits_the_local_base_license(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}", encoding="utf-8")
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n", encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"source": {"kind": "llava-instruct"}}), encoding="utf-8")
    run = make_run(tmp_path, str(base), data=data)
    card = ModelCard.load(cards.write_adapter_card(run))
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["liuhaotian/LLaVA-Instruct-150K"]
    assert "base_model" not in meta  # a local directory is not a hub id
    assert "seed" in meta["tags"] and "| `noise_alpha` | `0.3` |" in card.text
    assert "Not evaluated yet" in card.text


def test_alias_bases_become_hub_ids_and_tiny_models_none():
    assert cards.base_hub_id("llava-1.5-7b") == "llava-hf/llava-1.5-7b-hf"
    assert cards.base_hub_id("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    assert cards.base_hub_id("tiny-llava") is None


def test_evaluate_refreshes_the_card_with_its_newest_results(tmp_path):
    run = make_run(tmp_path, "qwen2-vl-2b", method="sft")
    cards.record_evaluation(results(tmp_path / "old", run))
    newest = results(tmp_path / "new", run)
    newest["pope"]["run"]["random"] = pope_block(0.9)
    (tmp_path / "new" / "results.json").write_text(json.dumps(newest), encoding="utf-8")
    written = cards.record_evaluation(newest)
    assert written == [run / "adapter" / "README.md"]
    card = ModelCard.load(written[0])
    assert card.data.base_model == "Qwen/Qwen2-VL-2B-Instruct" and "sft-baseline" in card.data.tags
    assert str(tmp_path / "new" / "results.json") in card.text
    assert "| random | this adapter | 90.00 | 90.00 | 90.00 | 90.00 | 50.00 |" in card.text
    assert "| base | 40.00 | 12.00 | 80.00 |" in card.text


def test_merged_card_keeps_its_marker_and_gains_the_evaluation(tmp_path):
    from seedcli.merge import CARD_TAG, merged_marker

    run = make_run(tmp_path, "llava-1.5-7b")
    cards.record_evaluation(results(tmp_path / "eval", run))
    original = (
        f"---\nlibrary_name: transformers\nbase_model: llava-hf/llava-1.5-7b-hf\ntags:\n- {CARD_TAG}\n---\n# merged\n"
    )
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "README.md").write_text(cards.enrich_merged_card(original, run), encoding="utf-8")
    card = ModelCard.load(merged / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == "llava-hf/llava-1.5-7b-hf"
    assert "## Evaluation" in card.text and "| random | the adapter (merged here) | 85.00" in card.text
    assert merged_marker(merged) == {"source": None}
    assert cards.enrich_merged_card(original, None) == original


def test_push_checks_offline_and_login_before_any_work(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        hub.check_push("user/model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="not logged in.*hf auth login"):
        hub.check_push("user/model")
    with pytest.raises(ConfigError, match="user/name"):
        hub.check_push("not a repo")


def test_push_uploads_the_folder_through_the_api(tmp_path, monkeypatch):
    import huggingface_hub

    calls: list = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return type("Commit", (), {"commit_url": "https://huggingface.co/user/model/commit/1"})()

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_x")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = hub.push(tmp_path, "user/model", message="m")
    assert url.endswith("/commit/1")
    assert calls[0] == ("create_repo", "user/model", {"repo_type": "model", "exist_ok": True})
    upload = calls[1][1]
    assert (
        upload["folder_path"] == str(tmp_path)
        and upload["repo_id"] == "user/model"
        and "checkpoints/*" in upload["ignore_patterns"]
    )

    class Offline(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise type("ConnectError", (Exception,), {})("no route")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(SeedError, match="cannot reach the Hugging Face Hub"):
        hub.push(tmp_path, "user/model", message="m")


def test_merge_push_to_hub_fails_before_merging_when_not_logged_in(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from tests.conftest import run_cli

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    code, out, err = run_cli(
        ["merge", str(tmp_path), "--out", str(tmp_path / "m"), "--push-to-hub", "user/model"], capsys
    )
    assert code == 2 and "not logged in" in err and not (tmp_path / "m").exists()


def test_distill_uploads_the_adapter_after_writing_its_card_and_report(tmp_path, monkeypatch):
    import seedcli.hub
    from seedcli.cli.distill import _after_training

    run = make_run(tmp_path, "llava-1.5-7b")
    (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "step": 4, "loss": 0.2, "lr": 1e-3}) + "\n")
    uploaded = {}

    def fake_push(folder, repo, *, message):
        uploaded.update(folder=folder, repo=repo, files=sorted(p.name for p in folder.iterdir()))
        return "https://huggingface.co/user/adapter/commit/1"

    monkeypatch.setattr(seedcli.hub, "push", fake_push)
    cfg = DistillConfig(model="llava-1.5-7b", push_to_hub="user/adapter")
    _after_training(cfg, run, json.loads((run / "summary.json").read_text()), None)
    assert uploaded == {
        "folder": run / "adapter",
        "repo": "user/adapter",
        "files": ["README.md", "adapter_config.json"],
    }
    assert (run / "report.html").is_file()
