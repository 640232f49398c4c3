"""The local cluster's certificates: one CA, the API server's serving certificate, and a client certificate
(with its kubeconfig) per component, named as the default RBAC bootstrap policy expects."""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# name -> (user, groups). Each component authenticates as the user RBAC's bootstrap roles are bound to.
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("kubernetes-admin", ("system:masters",)),
    "controller-manager": ("system:kube-controller-manager", ()),
    "scheduler": ("system:kube-scheduler", ()),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",)),
    "kube-proxy": ("system:kube-proxy", ()),
    "coredns": ("system:coredns", ()),
}
API_SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def ensure(self, api_server_ips: Sequence[str]) -> None:
        """Write every certificate once; a CA from an earlier run is kept (kubeconfigs stay valid), a serving
        certificate lacking one of `api_server_ips` is reissued."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.ca.exists():
            ca_key = _new_key()
            _write_key(self.dir / "ca.key", ca_key)
            _write_cert(self.ca, _certificate("rayvllm-local-ca", [], ca_key, ca_key, None, is_ca=True))
        ca_key = _load_key(self.dir / "ca.key")
        ca_cert = x509.load_pem_x509_certificate(self.ca.read_bytes())
        if not self._serves(api_server_ips):
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in API_SERVER_NAMES]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in api_server_ips]
            key = _new_key()
            _write_key(self.key("apiserver"), key)
            cert = _certificate("kube-apiserver", sans, key, ca_key, ca_cert, is_ca=False, server=True)
            _write_cert(self.cert("apiserver"), cert)
        for name, (user, groups) in CLIENTS.items():
            self.ensure_client(name, user, groups, ca_key, ca_cert)
        if not (self.dir / "sa.key").exists():
            sa_key = _new_key()
            _write_key(self.dir / "sa.key", sa_key)
            (self.dir / "sa.pub").write_bytes(
                sa_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def ensure_client(
        self,
        name: str,
        user: str,
        groups: Sequence[str],
        ca_key: rsa.RSAPrivateKey | None = None,
        ca_cert: x509.Certificate | None = None,
    ) -> None:
        if self.cert(name).exists():
            return
        ca_key = ca_key or _load_key(self.dir / "ca.key")
        ca_cert = ca_cert or x509.load_pem_x509_certificate(self.ca.read_bytes())
        key = _new_key()
        cert = _certificate(user, [], key, ca_key, ca_cert, is_ca=False, client=True, org=groups)
        _write_key(self.key(name), key)
        _write_cert(self.cert(name), cert)

    def kubeconfig(self, name: str, server: str) -> str:
        """A kubeconfig (JSON) authenticating as client `name` against `server`."""
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "rayvllm-local",
                        "cluster": {"server": server, "certificate-authority": str(self.ca)},
                    }
                ],
                "users": [
                    {
                        "name": name,
                        "user": {
                            "client-certificate": str(self.cert(name)),
                            "client-key": str(self.key(name)),
                        },
                    }
                ],
                "contexts": [
                    {"name": "rayvllm-local", "context": {"cluster": "rayvllm-local", "user": name}}
                ],
                "current-context": "rayvllm-local",
            },
            indent=2,
        )

    def _serves(self, ips: Sequence[str]) -> bool:
        if not self.cert("apiserver").exists():
            return False
        cert = x509.load_pem_x509_certificate(self.cert("apiserver").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
        return set(ips) <= have


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _certificate(
    common_name: str,
    sans: list[x509.GeneralName],
    key: rsa.RSAPrivateKey,
    issuer_key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    *,
    is_ca: bool,
    server: bool = False,
    client: bool = False,
    org: Sequence[str] = (),
) -> x509.Certificate:
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in org]
    )
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
