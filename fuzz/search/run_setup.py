"""What a campaign's set-up checks before any rank starts: the devices its sides are drawn on, the user's model."""

from __future__ import annotations

__all__ = ["campaign_devices", "user_model"]


def campaign_devices(device: str) -> tuple[tuple[str, ...], str]:
    """The devices a campaign's sides are drawn on for ``--device``, and why not ('' when fine).

    ``cuda`` draws both, so cases cross devices: saved on CPU ranks and loaded on GPU
    ranks, and back."""
    if device == "cpu":
        return ("cpu",), ""
    from shardfuzz.capabilities import capabilities

    caps = capabilities()
    if not caps.cuda_devices:
        return (), f"--device cuda: no GPU to run on: {caps.off.get('device cuda', 'no CUDA device')}"
    return ("cpu", "cuda"), ""


def user_model(spec: str | None):
    """``--model``'s ``UserModel``, its factory imported and built on the meta device (a ``UserModelError``, a
    ValueError naming the factory, where it cannot be used); None without ``--model``."""
    if spec is None:
        return None
    from shardfuzz.case import UserModel
    from shardfuzz.rank.model_factory import probe

    model = UserModel(spec)
    probe(spec)
    return model
