"""An emulator of Google's OAuth 2.0 / OpenID Connect endpoints, served over real HTTP.

It speaks the protocol the way django-allauth's Google provider uses it:

    GET  /o/oauth2/v2/auth     authorize: checks the client, redirect_uri, response_type=code, scope, state and the
                               PKCE S256 challenge, then consents on behalf of a test identity and redirects back
                               with ?code=...&state=... (or ?error=access_denied when consent is refused)
    POST /token                token: checks the client credentials, the code, the redirect_uri and the PKCE verifier;
                               returns access_token, expires_in, token_type, scope and an RS256-signed id_token
    GET  /oauth2/v2/userinfo   userinfo (allauth's default IDENTITY_URL; v2 field names); /oauth2/v3/userinfo has the
                               OpenID Connect field names
    GET  /oauth2/v1/certs      the id_token signing certificate as {kid: PEM} (allauth's CERTS_URL format);
                               /oauth2/v3/certs has the same key as a JWK set

Switches for tests: `latency_seconds`, `deny_consent`, `id_token_includes_picture`, and `fail(endpoint, status)`
to make one endpoint answer with an error status. `requests` records what each endpoint received.

By hand:  python -m tests.emulators.google_oauth --port 8765
then run the app with the GOOGLE_* variables the command prints.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.emulators.serving import ServedEmulator

# The issuer real Google puts in id_tokens; allauth checks it (settings ID_TOKEN_ISSUER), so the emulator uses it too.
GOOGLE_ISSUER = "https://accounts.google.com"

AUTHORIZE_PATH = "/o/oauth2/v2/auth"
TOKEN_PATH = "/token"
USERINFO_V2_PATH = "/oauth2/v2/userinfo"
USERINFO_V3_PATH = "/oauth2/v3/userinfo"
CERTS_V1_PATH = "/oauth2/v1/certs"
CERTS_V3_PATH = "/oauth2/v3/certs"

ENDPOINTS = ("authorize", "token", "userinfo", "certs")

# Google accepts the short OpenID Connect names and the long userinfo URLs, and answers with the long ones.
SCOPE_ALIASES = {
    "openid": "openid",
    "email": "https://www.googleapis.com/auth/userinfo.email",
    "profile": "https://www.googleapis.com/auth/userinfo.profile",
    "https://www.googleapis.com/auth/userinfo.email": "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile": "https://www.googleapis.com/auth/userinfo.profile",
}
EMAIL_SCOPE = SCOPE_ALIASES["email"]
PROFILE_SCOPE = SCOPE_ALIASES["profile"]

AUTHORIZATION_CODE_LIFETIME_SECONDS = 600
ACCESS_TOKEN_LIFETIME_SECONDS = 3599
ID_TOKEN_LIFETIME_SECONDS = 3600


@dataclass
class GoogleIdentity:
    """The Google account that consents at the authorize endpoint."""

    sub: str = "110248495921238986420"
    email: str = "Ada.Lovelace@Example.com"
    email_verified: bool = True
    name: str = "Ada Lovelace"
    given_name: str = "Ada"
    family_name: str = "Lovelace"
    picture: str = "https://lh3.googleusercontent.com/a/ada-lovelace=s96-c"
    locale: str = "en"


@dataclass
class RecordedRequest:
    endpoint: str
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    scopes: list[str]
    code_challenge: str | None
    nonce: str | None
    identity: GoogleIdentity
    expires_at: float


@dataclass
class _AccessToken:
    scopes: list[str]
    identity: GoogleIdentity
    expires_at: float


class _SigningKey:
    """An RSA key and a self-signed certificate for it, as Google publishes its id_token keys."""

    def __init__(self) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(20)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.system.gserviceaccount.com")])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.private_key, hashes.SHA256())
        )
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def jwk(self) -> dict:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _base64url_uint(numbers.n),
            "e": _base64url_uint(numbers.e),
        }

    def sign(self, claims: dict) -> str:
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _base64url_uint(value: int) -> str:
    return _base64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def pkce_challenge(code_verifier: str) -> str:
    """The S256 code_challenge for a code_verifier (RFC 7636 section 4.2)."""
    return _base64url(hashlib.sha256(code_verifier.encode("ascii")).digest())


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class GoogleOAuthEmulator(ServedEmulator):
    """Google's OAuth 2.0 endpoints on a local port, for one registered client.

    redirect_uris: the client's registered redirect URIs; when empty any http(s) URI is accepted (handy by hand).
    """

    thread_name = "google-oauth-emulator"

    def __init__(
        self,
        *,
        client_id: str = "silo-test.apps.googleusercontent.com",
        client_secret: str = "silo-test-secret",
        redirect_uris: list[str] | tuple[str, ...] = (),
        identity: GoogleIdentity | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        self.identity = identity or GoogleIdentity()
        self.require_pkce = True
        self.latency_seconds = 0.0
        self.deny_consent = False
        # Google leaves `picture` out of some id_tokens; allauth then reads it from userinfo (FETCH_USERINFO).
        self.id_token_includes_picture = True
        self.failures: dict[str, int] = {}
        self.requests: list[RecordedRequest] = []
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._signing_key = _SigningKey()

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    def request_handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def bind_address(self) -> tuple[str, int]:
        return self._host, self._port

    @property
    def base_url(self) -> str:
        return self.origin

    @property
    def authorize_url(self) -> str:
        return self.base_url + AUTHORIZE_PATH

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    @property
    def userinfo_url(self) -> str:
        return self.base_url + USERINFO_V2_PATH

    @property
    def certs_url(self) -> str:
        return self.base_url + CERTS_V1_PATH

    # --- switches ----------------------------------------------------------------------------------------------------

    def fail(self, endpoint: str, status: int = 500) -> None:
        """Make `endpoint` (one of ENDPOINTS) answer every request with `status` until reset()."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
        self.failures[endpoint] = status

    def reset(self) -> None:
        """Back to a healthy, fast, consenting emulator with no recorded requests (identity and client are kept)."""
        self.latency_seconds = 0.0
        self.deny_consent = False
        self.require_pkce = True
        self.id_token_includes_picture = True
        self.failures.clear()
        with self._lock:
            self.requests.clear()

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.endpoint == endpoint]

    def public_jwks(self) -> dict:
        return {"keys": [self._signing_key.jwk()]}

    # --- protocol ----------------------------------------------------------------------------------------------------

    def authorize(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Returns (status, headers, body). Client and redirect_uri errors are shown, never redirected (as Google)."""
        if params.get("client_id") != self.client_id:
            return _error_page(HTTPStatus.UNAUTHORIZED, "invalid_client", "The OAuth client was not found.")
        redirect_uri = params.get("redirect_uri", "")
        if not self._redirect_uri_allowed(redirect_uri):
            return _error_page(
                HTTPStatus.BAD_REQUEST, "redirect_uri_mismatch", f"redirect_uri {redirect_uri!r} is not registered."
            )
        state = params.get("state")
        try:
            if params.get("response_type") != "code":
                raise _OAuthError(400, "unsupported_response_type", "Only response_type=code is supported.")
            scopes = _granted_scopes(params.get("scope", ""))
            if not state:
                raise _OAuthError(400, "invalid_request", "Missing required parameter: state")
            code_challenge = params.get("code_challenge")
            if code_challenge or self.require_pkce:
                if not code_challenge:
                    raise _OAuthError(400, "invalid_request", "Missing required parameter: code_challenge")
                if params.get("code_challenge_method") != "S256":
                    raise _OAuthError(400, "invalid_request", "code_challenge_method must be S256")
                if not 43 <= len(code_challenge) <= 128:
                    raise _OAuthError(400, "invalid_request", "Invalid code_challenge")
            if self.deny_consent:
                raise _OAuthError(302, "access_denied", "The user denied access.")
        except _OAuthError as error:
            return _redirect(
                redirect_uri, {"error": error.error, "error_description": error.description, "state": state}
            )

        code = "4/0" + secrets.token_urlsafe(48)
        with self._lock:
            self._grants[code] = _Grant(
                client_id=self.client_id,
                redirect_uri=redirect_uri,
                scopes=scopes,
                code_challenge=code_challenge,
                nonce=params.get("nonce"),
                identity=GoogleIdentity(**asdict(self.identity)),
                expires_at=time.time() + AUTHORIZATION_CODE_LIFETIME_SECONDS,
            )
        return _redirect(redirect_uri, {"state": state, "code": code, "scope": " ".join(scopes), "prompt": "none"})

    def exchange_code(self, params: dict[str, str], authorization: str | None) -> tuple[int, dict]:
        client_id, client_secret = params.get("client_id"), params.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            decoded = base64.b64decode(authorization.split(" ", 1)[1]).decode("utf-8")
            client_id, _, client_secret = decoded.partition(":")
        if client_id != self.client_id or not secrets.compare_digest(client_secret or "", self.client_secret):
            return HTTPStatus.UNAUTHORIZED, {"error": "invalid_client", "error_description": "Unauthorized"}
        if params.get("grant_type") != "authorization_code":
            return HTTPStatus.BAD_REQUEST, {
                "error": "unsupported_grant_type",
                "error_description": "Invalid grant_type",
            }
        with self._lock:
            # A code is single use: take it out whether or not the rest of the request is valid.
            grant = self._grants.pop(params.get("code", ""), None)
        if grant is None or grant.expires_at < time.time() or grant.client_id != client_id:
            return HTTPStatus.BAD_REQUEST, {"error": "invalid_grant", "error_description": "Bad Request"}
        if params.get("redirect_uri") != grant.redirect_uri:
            return HTTPStatus.BAD_REQUEST, {"error": "redirect_uri_mismatch", "error_description": "Bad Request"}
        if grant.code_challenge is not None:
            code_verifier = params.get("code_verifier")
            if not code_verifier:
                return HTTPStatus.BAD_REQUEST, {"error": "invalid_grant", "error_description": "Missing code verifier."}
            if not secrets.compare_digest(pkce_challenge(code_verifier), grant.code_challenge):
                return HTTPStatus.BAD_REQUEST, {"error": "invalid_grant", "error_description": "Invalid code verifier."}

        access_token = "ya29." + secrets.token_urlsafe(64)
        now = int(time.time())
        with self._lock:
            self._access_tokens[access_token] = _AccessToken(
                scopes=grant.scopes, identity=grant.identity, expires_at=now + ACCESS_TOKEN_LIFETIME_SECONDS
            )
        return HTTPStatus.OK, {
            "access_token": access_token,
            "expires_in": ACCESS_TOKEN_LIFETIME_SECONDS,
            "token_type": "Bearer",
            "scope": " ".join(grant.scopes),
            "id_token": self._id_token(grant, access_token, now),
        }

    def userinfo(self, authorization: str | None, *, version: int) -> tuple[int, dict]:
        token = None
        if authorization and authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        with self._lock:
            access = self._access_tokens.get(token or "")
        if access is None or access.expires_at < time.time():
            return HTTPStatus.UNAUTHORIZED, {
                "error": {
                    "code": 401,
                    "message": "Request had invalid authentication credentials.",
                    "status": "UNAUTHENTICATED",
                }
            }
        identity, scopes = access.identity, access.scopes
        if version == 2:
            profile: dict = {"id": identity.sub}
            if EMAIL_SCOPE in scopes:
                profile.update(email=identity.email, verified_email=identity.email_verified)
        else:
            profile = {"sub": identity.sub}
            if EMAIL_SCOPE in scopes:
                profile.update(email=identity.email, email_verified=identity.email_verified)
        if PROFILE_SCOPE in scopes:
            profile.update(_profile_claims(identity))
        return HTTPStatus.OK, profile

    def _id_token(self, grant: _Grant, access_token: str, now: int) -> str:
        identity = grant.identity
        # at_hash: the left half of SHA-256 of the access token (OpenID Connect Core 3.1.3.6).
        at_hash = _base64url(hashlib.sha256(access_token.encode("ascii")).digest()[:16])
        claims: dict = {
            "iss": GOOGLE_ISSUER,
            "azp": grant.client_id,
            "aud": grant.client_id,
            "sub": identity.sub,
            "at_hash": at_hash,
            "iat": now,
            "exp": now + ID_TOKEN_LIFETIME_SECONDS,
            "jti": secrets.token_hex(16),
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        if EMAIL_SCOPE in grant.scopes:
            claims.update(email=identity.email, email_verified=identity.email_verified)
        if PROFILE_SCOPE in grant.scopes:
            claims.update(_profile_claims(identity))
            if not self.id_token_includes_picture:
                del claims["picture"]
        return self._signing_key.sign(claims)

    def _redirect_uri_allowed(self, redirect_uri: str) -> bool:
        if self.redirect_uris:
            return redirect_uri in self.redirect_uris
        parts = urlsplit(redirect_uri)
        return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _profile_claims(identity: GoogleIdentity) -> dict:
    return {
        "name": identity.name,
        "given_name": identity.given_name,
        "family_name": identity.family_name,
        "picture": identity.picture,
        "locale": identity.locale,
    }


def _granted_scopes(scope: str) -> list[str]:
    requested = scope.split()
    if not requested:
        raise _OAuthError(400, "invalid_scope", "Missing required parameter: scope")
    unknown = [name for name in requested if name not in SCOPE_ALIASES]
    if unknown:
        raise _OAuthError(400, "invalid_scope", f"Some requested scopes were invalid: {' '.join(unknown)}")
    # Google treats email/profile as OpenID Connect scopes and always grants openid with them.
    granted = {"openid", *(SCOPE_ALIASES[name] for name in requested)}
    return sorted(granted)


def _redirect(redirect_uri: str, params: dict[str, str | None]) -> tuple[int, dict[str, str], bytes]:
    query = urlencode({key: value for key, value in params.items() if value is not None})
    separator = "&" if "?" in redirect_uri else "?"
    return HTTPStatus.FOUND, {"Location": f"{redirect_uri}{separator}{query}"}, b""


def _error_page(status: int, error: str, description: str) -> tuple[int, dict[str, str], bytes]:
    title = f"Error {int(status)}: {error}"
    body = f"<!DOCTYPE html><title>{title}</title><h1>{title}</h1><p>{html.escape(description)}</p>"
    return status, {"Content-Type": "text/html; charset=utf-8"}, body.encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    emulator: GoogleOAuthEmulator
    protocol_version = "HTTP/1.1"
    server_version = "GoogleOAuthEmulator/1.0"

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        routes = {
            AUTHORIZE_PATH: "authorize",
            USERINFO_V2_PATH: "userinfo",
            USERINFO_V3_PATH: "userinfo",
            CERTS_V1_PATH: "certs",
            CERTS_V3_PATH: "certs",
        }
        endpoint = routes.get(path)
        if endpoint is None:
            return self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found"})
        if not self._before(endpoint, path, params):
            return
        emulator = self.emulator
        authorization = self.headers.get("Authorization")
        if endpoint == "authorize":
            status, headers, body = emulator.authorize(params)
            return self._send(status, headers, body)
        if endpoint == "userinfo":
            status, payload = emulator.userinfo(authorization, version=2 if path == USERINFO_V2_PATH else 3)
            if status == HTTPStatus.UNAUTHORIZED:
                challenge = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
                return self._send_json(status, payload, challenge)
            return self._send_json(status, payload)
        if path == CERTS_V1_PATH:
            key = emulator._signing_key
            return self._send_json(HTTPStatus.OK, {key.kid: key.certificate_pem})
        return self._send_json(HTTPStatus.OK, emulator.public_jwks())

    def do_POST(self) -> None:
        path = self.path.partition("?")[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        if path != TOKEN_PATH:
            return self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found"})
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        params = dict(parse_qsl(body, keep_blank_values=True))
        if not self._before("token", path, params):
            return
        if content_type != "application/x-www-form-urlencoded":
            return self._send_json(
                HTTPStatus.BAD_REQUEST, {"error": "invalid_request", "error_description": "Invalid content type"}
            )
        status, payload = self.emulator.exchange_code(params, self.headers.get("Authorization"))
        self._send_json(status, payload)

    def _before(self, endpoint: str, path: str, params: dict[str, str]) -> bool:
        """Records the request and applies the latency and failure switches; False when a failure was sent."""
        emulator = self.emulator
        emulator._record(
            RecordedRequest(
                endpoint=endpoint, method=self.command, path=path, params=params, headers=dict(self.headers)
            )
        )
        if emulator.latency_seconds:
            time.sleep(emulator.latency_seconds)
        status = emulator.failures.get(endpoint)
        if status is not None:
            self._send_json(status, {"error": "emulated_failure", "error_description": f"{endpoint} failed on purpose"})
            return False
        return True

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self._send(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(int(status))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        # Quiet under pytest; the recorded requests say what happened.
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve an emulator of Google's OAuth 2.0 endpoints.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--client-id", default="silo-local.apps.googleusercontent.com")
    parser.add_argument("--client-secret", default="silo-local-secret")
    parser.add_argument("--redirect-uri", action="append", default=[], help="registered redirect URI (repeatable)")
    parser.add_argument("--email", default=GoogleIdentity.email)
    parser.add_argument("--name", default=GoogleIdentity.name)
    parser.add_argument("--sub", default=GoogleIdentity.sub)
    parser.add_argument("--unverified-email", action="store_true", help="report email_verified=false")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before every response")
    parser.add_argument("--deny-consent", action="store_true", help="answer every authorization with access_denied")
    arguments = parser.parse_args(argv)

    given_name, _, family_name = arguments.name.partition(" ")
    identity = GoogleIdentity(
        sub=arguments.sub,
        email=arguments.email,
        email_verified=not arguments.unverified_email,
        name=arguments.name,
        given_name=given_name,
        family_name=family_name,
    )
    emulator = GoogleOAuthEmulator(
        client_id=arguments.client_id,
        client_secret=arguments.client_secret,
        redirect_uris=arguments.redirect_uri,
        identity=identity,
        host=arguments.host,
        port=arguments.port,
    )
    emulator.latency_seconds = arguments.latency
    emulator.deny_consent = arguments.deny_consent
    emulator.start()
    print(f"Google OAuth emulator on {emulator.base_url}; run the app with:")
    print(f"  GOOGLE_CLIENT_ID={emulator.client_id}")
    print(f"  GOOGLE_CLIENT_SECRET={emulator.client_secret}")
    print(f"  GOOGLE_AUTHORIZE_URL={emulator.authorize_url}")
    print(f"  GOOGLE_ACCESS_TOKEN_URL={emulator.token_url}")
    print(f"  GOOGLE_IDENTITY_URL={emulator.userinfo_url}")
    print(f"  GOOGLE_CERTS_URL={emulator.certs_url}")
    emulator.serve_until_stopped()


if __name__ == "__main__":
    main()
