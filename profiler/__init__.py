"""hetcache-profile: where the redundancy is in a diffusers video transformer — per layer, per token, per step.

`profile(pipe, inputs)` records block drift, attention contribution, the step-change curve (with a fitted rescaling
polynomial for a policy's step plan), per-layer cost and a headroom verdict; `Profile.save` / `Profile.load` write and
read the profile folder (profile.json + tensors.safetensors).
"""

from .curve import PolynomialFit, fit_polynomial
from .options import ProfileOptions
from .run import profile, profile_session
from .store import SCHEMA, Profile

__all__ = ["SCHEMA", "PolynomialFit", "Profile", "ProfileOptions", "fit_polynomial", "profile", "profile_session"]
