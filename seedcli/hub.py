"""`--push-to-hub REPO`: upload a directory (adapter or merged model, with its card) to the Hugging Face Hub.

Checked before any work (`check_push`): a repo id of the form user/name, hub access not switched
off (HF_HUB_OFFLINE), and a token (`hf auth login` or HF_TOKEN). Failures during the upload are
reported in one line: no network, a rejected token, or the hub's own message.
"""

from __future__ import annotations

import re
from pathlib import Path

from seedcli.errors import ConfigError, SeedError

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# Never uploaded from a run's adapter directory or a merged model.
IGNORE = ["checkpoints/*", "*.tmp", ".*"]


def check_push(repo: str) -> None:
    """Fail early, before training or merging, when an upload to `repo` cannot work."""
    if not REPO_ID.fullmatch(repo):
        raise ConfigError(f"--push-to-hub {repo!r}: expected a repo id like user/name.")
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "--push-to-hub: hub access is switched off (HF_HUB_OFFLINE=1); unset it on a machine with network."
        )
    if not get_token():
        raise ConfigError("--push-to-hub: not logged in to the Hugging Face Hub; run `hf auth login` or set HF_TOKEN.")


def _offline(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names & {"ConnectError", "ConnectionError", "ConnectTimeout", "TimeoutException", "OfflineModeIsEnabled"}
    )


def push(folder: Path, repo: str, *, message: str) -> str:
    """Create `repo` if needed and upload `folder` into it; returns the commit URL."""
    check_push(repo)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo, folder_path=str(folder), repo_type="model", commit_message=message, ignore_patterns=IGNORE
        )
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise SeedError(
                f"--push-to-hub {repo}: the hub refused the token (HTTP {status}); "
                "run `hf auth login` with a write token."
            ) from None
        raise SeedError(f"--push-to-hub {repo}: upload failed: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        if _offline(exc):
            raise SeedError(
                f"--push-to-hub {repo}: cannot reach the Hugging Face Hub (no network?); {folder} is kept, retry later."
            ) from None
        raise
    return str(getattr(commit, "commit_url", commit))
