"""The operator's certificate store: layout, atomic writes, key file permissions, passphrases.

Layout (one folder per purpose under the store root, ``certs/`` by default)::

    ca/        ca.pem, ca.key              the private CA of a site or lab (init-ca)
    identity/  cert.pem, key.pem           the gateway's TLS identity (issue, import, rotate)
    issued/    <name>/cert.pem, key.pem    other certificates the CA issued (mTLS clients)
    csr/       <name>.key, <name>.csr      keys waiting for a public CA's certificate
    trust/     provider-ca.pem             trust anchors for the provider (optional)
    lab/                                   a one-machine lab (``gateway certs lab``)

Private keys are written mode 0600 from the first byte (the file is created with that mode,
never chmod-ed after the fact), and every write goes through a temporary file in the same
directory followed by ``os.replace`` so that a reader sees either the old or the new file,
never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.certs.errors import CertificateError
from gateway.certs.settings import TlsIdentitySettings

#: Private key types this gateway creates and accepts (RFC 5480 EC, RFC 8017 RSA).
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEY_MODE = 0o600
CERT_MODE = 0o644


@dataclass(frozen=True)
class StoreLayout:
    """Paths of the store's folders; nothing is created until something is written."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def identity_dir(self) -> Path:
        return self.root / "identity"

    @property
    def issued_dir(self) -> Path:
        return self.root / "issued"

    @property
    def csr_dir(self) -> Path:
        return self.root / "csr"

    @property
    def lab_dir(self) -> Path:
        return self.root / "lab"


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a same-directory temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; widen only for public material, so a key is never exposed.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; without it a crash can bring back the old entry.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_key_file_mode(path: Path) -> None:
    """Refuse a private key file that group or others may read or write."""
    try:
        st = path.stat()
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read private key: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CertificateError(str(path), "private key is not a regular file")
    loose = st.st_mode & 0o077
    if loose:
        raise CertificateError(
            str(path),
            f"private key is accessible to group or others (mode {stat.S_IMODE(st.st_mode):04o});"
            " run chmod 600 on it",
        )


def read_passphrase(env: str | None, file: str | None) -> bytes | None:
    """The key passphrase from an environment variable or a file (first line), or None."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise CertificateError("", f"passphrase variable {env} is not set")
        return value.encode()
    if file is not None:
        try:
            text = Path(file).read_bytes()
        except OSError as exc:
            raise CertificateError(file, f"cannot read passphrase file: {exc.strerror}") from None
        # Only the first line: editors add a trailing newline that is not part of the secret.
        line = text.splitlines()[0] if text else b""
        if not line:
            raise CertificateError(file, "passphrase file is empty")
        return line
    return None


def identity_passphrase(settings: TlsIdentitySettings) -> bytes | None:
    """The passphrase configured for an identity's key, if any."""
    return read_passphrase(settings.passphrase_env, settings.passphrase_file)


def key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def certs_to_pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_private_key(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    atomic_write(path, key_to_pem(key, passphrase), KEY_MODE)


def write_certificates(
    path: Path, certs: list[x509.Certificate] | tuple[x509.Certificate, ...]
) -> None:
    atomic_write(path, certs_to_pem(certs), CERT_MODE)


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in file order; an empty or unreadable file is an error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read certificate file: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(str(path), f"not a PEM certificate file ({exc})") from None
    return certs


def read_private_key(
    path: Path, passphrase: bytes | None = None, *, check_mode: bool = True
) -> PrivateKey:
    """Load a PEM private key, refusing loose permissions and unsupported key types."""
    if check_mode:
        check_key_file_mode(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(str(path), f"cannot read private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        # cryptography raises TypeError for "encrypted but no password" and the reverse.
        reason = (
            "private key is encrypted; configure passphrase_env or passphrase_file"
            if passphrase is None
            else "private key is not encrypted but a passphrase was given"
        )
        raise CertificateError(str(path), reason) from None
    except ValueError:
        # Deliberately vague: the message must not help guess the passphrase or leak bytes.
        raise CertificateError(
            str(path), "cannot decrypt or parse private key (wrong passphrase or not a PEM key)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(str(path), f"unsupported key type {type(key).__name__}")
    return key
