"""A DKIM signer with a fresh key, and the DNS answer for it, so tests and benchmarks need no real DNS."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class DkimSigner:
    """Signs mail as `domain` with selector `selector`; `dns_txt` is dkimpy's dnsfunc for its key."""

    domain: str
    selector: bytes = b"test2026"
    private_pem: bytes = field(default=b"", repr=False)
    txt_record: bytes = b""

    @classmethod
    def generate(cls, domain: str, selector: bytes = b"test2026", *, key_size: int = 2048) -> DkimSigner:
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(domain, selector, private, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public))

    @property
    def record_name(self) -> bytes:
        return self.selector + b"._domainkey." + self.domain.encode() + b"."

    def dns_txt(self, name: bytes, timeout: float = 5) -> bytes | None:
        """The TXT record a DNS server would give for this key, and nothing for any other name."""
        return self.txt_record if name == self.record_name else None

    def sign(self, raw: bytes, *, domain: str | None = None, **options) -> bytes:
        """`raw` with CRLF line ends and a DKIM-Signature on top (dkimpy's sign options pass through).

        `domain` signs as another domain with this same key, whose DNS record then does not exist.
        """
        crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        signature = dkim.sign(
            crlf, self.selector, (domain or self.domain).encode(), self.private_pem, **options
        )
        return signature + crlf
