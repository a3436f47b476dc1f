"""Whether the Hugging Face model hub can be reached, checked once before a download."""

from __future__ import annotations


def unreachable_hub(timeout_s: float = 3.0) -> str | None:
    """Why the model hub cannot be used right now, or None when it answers.

    Checked once before a download so that a machine without internet fails in seconds, not
    after the hub client's minute of retries."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
    except httpx.HTTPError as e:
        return f"{constants.ENDPOINT} cannot be reached ({type(e).__name__})"
    return None
