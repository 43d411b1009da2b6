"""Load a policy file for the gateway: parse, validate and (when required) check its governance signature."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.privacy.policy import Policy, PolicyError, parse_policy
from edge.privacy.signing import (
    SignatureError,
    governance_key_id,
    load_governance_public_key,
    read_signature,
    signature_path,
    verify_digest,
)

__all__ = ["load_policy", "verify_policy_signature"]


def verify_policy_signature(policy: Policy, governance_key: Ed25519PublicKey) -> str:
    """Check the detached signature next to the policy; returns the governance key id, raises SignatureError."""
    key_id, signed_digest, signature = read_signature(policy.path)
    sig_name = signature_path(policy.path).name
    expected_id = governance_key_id(governance_key)
    if key_id != expected_id:
        raise SignatureError(f"{sig_name}: signed by key {key_id}, but the governance key is {expected_id}")
    if signed_digest != policy.digest:
        raise SignatureError(
            f"{sig_name}: signed digest {signed_digest.hex()[:16]}… does not match the policy's digest "
            f"{policy.digest.hex()[:16]}… (the policy was changed after it was signed)"
        )
    verify_digest(policy.digest, signature, governance_key)
    return key_id


def load_policy(
    path: str | os.PathLike[str],
    *,
    governance_key: str | os.PathLike[str] | Ed25519PublicKey | None = None,
    require_signed: bool = False,
) -> Policy:
    """Read and validate a policy file; raises :class:`PolicyError` with one line per problem.

    With ``governance_key`` (a PEM path or a public key) a present signature must verify;
    with ``require_signed`` a missing, foreign or tampered signature refuses the policy.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{p}: no such policy file"]) from None
    except IsADirectoryError:
        raise PolicyError([f"{p}: is a directory; expected a policy TOML file"]) from None
    except UnicodeDecodeError as exc:
        raise PolicyError([f"{p}: not UTF-8 text (at byte {exc.start}); save the policy as UTF-8"]) from None
    except OSError as exc:
        raise PolicyError([f"{p}: cannot read the policy ({exc.strerror})"]) from None
    policy = parse_policy(text, path=str(p))
    if governance_key is None:
        if require_signed:
            raise PolicyError([f"{p.name}: require_signed = true needs a governance_key to check the signature with"])
        return policy
    try:
        key = governance_key if isinstance(governance_key, Ed25519PublicKey) else load_governance_public_key(governance_key)
    except OSError as exc:
        raise PolicyError([f"{p.name}: governance_key {governance_key}: cannot read it ({exc.strerror})"]) from None
    except ValueError:
        raise PolicyError([f"{p.name}: governance_key {governance_key}: expected a PEM Ed25519 public key"
                           " (`ocn-edge policy keygen` writes governance.pub)"]) from None
    if not require_signed and not signature_path(p).exists():
        return policy
    try:
        key_id = verify_policy_signature(policy, key)
    except SignatureError as exc:
        raise PolicyError([f"{p.name}: refused: {exc}"]) from None
    return dataclasses.replace(policy, signed_by=key_id)
