"""Ed25519 signing keys: generation, storage, rotation and publication as a JWKS.

The private key never leaves :class:`Signer`: callers get ``sign(message)`` and a public half, nothing else. Keys live
in ``<home>/keys/``: ``<kid>.key`` (PKCS#8 PEM, mode 0600, encrypted when a master key is set), ``<kid>.pub`` and
``active`` (the kid that signs). Rotation retires the old private key but keeps its public key, so everything it
signed still verifies.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lexecon_core.errors import KeyStoreError

__all__ = ["KeyRing", "PublicKey", "Signer", "b64url", "jwks_of", "jwks_to_keys", "key_id"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_raw: bytes) -> str:
    """The key id: base64url of the first 16 bytes of SHA-256 over the raw 32-byte public key."""
    return b64url(hashlib.sha256(public_raw).digest()[:16])


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key and its kid. ``verify`` uses libsodium, the fastest sound verifier we have."""

    kid: str
    raw: bytes

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        if len(raw) != 32:
            raise KeyStoreError("an Ed25519 public key is 32 bytes")
        return cls(key_id(raw), raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            _verify_key(self.raw).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True

    def to_cryptography(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    def to_jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(self.raw), "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    def to_pem(self) -> bytes:
        return self.to_cryptography().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


_verify_keys: dict[bytes, nacl.signing.VerifyKey] = {}


def _verify_key(raw: bytes) -> nacl.signing.VerifyKey:
    key = _verify_keys.get(raw)
    if key is None:
        key = _verify_keys[raw] = nacl.signing.VerifyKey(raw)
    return key


class Signer:
    """The private half. Signs messages; cannot be serialised except through :meth:`KeyRing` storage."""

    __slots__ = ("_crypto", "_nacl", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._crypto = private
        seed = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        self._nacl = nacl.signing.SigningKey(seed)
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey.from_raw(raw)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @property
    def kid(self) -> str:
        return self.public.kid

    def sign(self, message: bytes) -> bytes:
        return self._nacl.sign(message).signature

    def derive_key(self, purpose: bytes) -> bytes:
        """A 32-byte secret for ``purpose`` (HKDF-SHA256 over this key): whoever holds this signing key can derive
        it, nobody else. Each purpose gets its own key; the signing key itself is never used for anything else."""
        seed = self._crypto.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"lexecon/" + purpose).derive(seed)

    def jose_key(self) -> Ed25519PrivateKey:
        """The key object a JOSE library needs to produce an EdDSA JWS."""
        return self._crypto

    def __repr__(self) -> str:
        return f"Signer(kid={self.kid!r})"


def jwks_of(keys: Iterable[PublicKey]) -> dict[str, Any]:
    """A JWKS document publishing ``keys``, ordered by kid."""
    return {"keys": [k.to_jwk() for k in sorted(keys, key=lambda k: k.kid)]}


def jwks_to_keys(jwks: Mapping[str, Any]) -> dict[str, PublicKey]:
    """Parse a JWKS; each kid must be the one derived from its key (a swapped key is refused, not trusted)."""
    keys: dict[str, PublicKey] = {}
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "x" not in jwk:
            continue
        key = PublicKey.from_raw(_b64url_decode(jwk["x"]))
        if jwk.get("kid") not in (None, key.kid):
            raise KeyStoreError(f"JWKS key {jwk.get('kid')!r} does not match its public key (expected {key.kid})")
        keys[key.kid] = key
    return keys


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class KeyRing:
    """The keys of one node: the active :class:`Signer` and every public key ever used (for verification)."""

    def __init__(self, directory: Path, signer: Signer | None, public_keys: Mapping[str, PublicKey]) -> None:
        self.directory = directory
        self._signer = signer
        self.public_keys: dict[str, PublicKey] = dict(public_keys)

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            raise KeyStoreError(f"no active signing key in {self.directory}")
        return self._signer

    @property
    def active_kid(self) -> str:
        return self.signer.kid

    def jwks(self) -> dict[str, Any]:
        return jwks_of(self.public_keys.values())

    # -- storage --------------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, master_key: str | None = None) -> KeyRing:
        """Make a new key in an empty key directory. Refuses if a key already exists there."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if (directory / "active").exists():
            raise KeyStoreError(f"{directory} already holds a signing key; refusing to replace it")
        signer = Signer.generate()
        cls._store(directory, signer, master_key)
        _write_atomic(directory / "active", signer.kid.encode())
        return cls(directory, signer, {signer.kid: signer.public})

    @staticmethod
    def _store(directory: Path, signer: Signer, master_key: str | None) -> None:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(master_key.encode()) if master_key else serialization.NoEncryption()
        )
        pem = signer.jose_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        _write_private(directory / f"{signer.kid}.key", pem)
        _write_atomic(directory / f"{signer.kid}.pub", signer.public.to_pem())

    @classmethod
    def load(cls, directory: Path, master_key: str | None = None, *, need_signer: bool = True) -> KeyRing:
        if not directory.is_dir():
            raise KeyStoreError(f"no key directory at {directory}; run `lexecon init` first")
        public_keys = cls.load_public(directory)
        signer = None
        if need_signer:
            try:
                active = (directory / "active").read_text().strip()
            except OSError:
                raise KeyStoreError(f"no active key recorded in {directory}") from None
            signer = cls._load_signer(directory / f"{active}.key", master_key)
            if signer.kid != active:
                raise KeyStoreError(f"key file for {active} holds a different key ({signer.kid})")
            if public_keys.get(active) != signer.public:
                raise KeyStoreError(f"published key {active}.pub is missing or does not match the signing key")
        return cls(directory, signer, public_keys)

    @staticmethod
    def load_public(directory: Path) -> dict[str, PublicKey]:
        """Every published public key, keyed by the kid derived from the key itself (not from the file name)."""
        keys: dict[str, PublicKey] = {}
        for path in sorted(directory.glob("*.pub")):
            try:
                loaded = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError):
                raise KeyStoreError(f"cannot read public key {path.name}") from None
            if not isinstance(loaded, Ed25519PublicKey):
                raise KeyStoreError(f"{path.name} is not an Ed25519 public key")
            key = PublicKey.from_raw(loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
            # A file whose contents are not the key its name promises was swapped: it is not trusted.
            if key.kid == path.stem:
                keys[key.kid] = key
        return keys

    @staticmethod
    def _load_signer(path: Path, master_key: str | None) -> Signer:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            data = path.read_bytes()
        except OSError:
            raise KeyStoreError(f"cannot read signing key {path}") from None
        if mode & 0o077:
            raise KeyStoreError(f"signing key {path} has permissions {mode:04o}; expected 0600 (chmod 600 {path})")
        encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
        if encrypted and not master_key:
            raise KeyStoreError("the signing key is encrypted; set LEXECON_MASTER_KEY")
        try:
            password = master_key.encode() if encrypted and master_key else None
            private = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError):
            raise KeyStoreError("cannot decrypt the signing key (wrong LEXECON_MASTER_KEY?)") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyStoreError(f"{path.name} is not an Ed25519 private key")
        return Signer(private)

    def prepare_rotation(self, master_key: str | None = None) -> Signer:
        """Write a new key pair next to the current one, not yet active. :meth:`activate` finishes the rotation."""
        signer = Signer.generate()
        self._store(self.directory, signer, master_key)
        return signer

    def activate(self, signer: Signer) -> None:
        """Make ``signer`` the active key and delete the retired private key (its public key stays published)."""
        old = self._signer
        if old is not None and old.kid != signer.kid:
            _write_atomic(self.directory / f"{old.kid}.retired", str(int(time.time())).encode())
        _write_atomic(self.directory / "active", signer.kid.encode())
        self._signer = signer
        self.public_keys[signer.kid] = signer.public
        if old is not None and old.kid != signer.kid:
            (self.directory / f"{old.kid}.key").unlink(missing_ok=True)

    def token_keys(self, grace_seconds: int) -> dict[str, PublicKey]:
        """Keys that may sign a capability token now: the active key, and keys retired within ``grace_seconds``
        (a token issued just before a rotation stays usable for its short life; a retired key mints nothing new).
        Ledger verification, unlike this, trusts every published key: old entries stay verifiable."""
        keys = {self.active_kid: self.signer.public}
        cutoff = time.time() - grace_seconds
        for kid, key in self.public_keys.items():
            retired = self._retired_at(kid)
            if retired is not None and retired >= cutoff:
                keys[kid] = key
        return keys

    def _retired_at(self, kid: str) -> int | None:
        try:
            return int((self.directory / f"{kid}.retired").read_text().strip())
        except (OSError, ValueError):
            return None

    def is_encrypted(self) -> bool:
        """Whether the active private key is stored encrypted."""
        try:
            with open(self.directory / f"{self.active_kid}.key", "rb") as handle:
                return b"ENCRYPTED" in handle.readline()
        except OSError:
            return False
