"""What each secret-store backend promises beyond the shared contract.

Embedded: never plaintext on disk, the key file made once with mode 0600 (and a
readable one refused), a wrong key or a moved row fails loudly instead of handing
out a value. Vault (a real OpenBao): AppRole logs in again when its token is
revoked, refused credentials and an unreachable server are told apart, and the
store touches nothing outside `agentrun/` of its mount.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import update

from accounts.db import Database
from accounts.models import SecretVersionRow
from agentrun.config import ConfigError, Settings, load_settings
from secretstore import (
    SecretNotFound,
    SecretStoreMisconfigured,
    SecretStoreUnavailable,
    open_secret_store,
)
from secretstore._embedded import EmbeddedSecretStore
from tests.vault_fixtures import OpenBao

VALUE = "ghp_plaintextMarker_5f3a9c1e7b"


def embedded(tmp_path: Path, **extra: object) -> Settings:
    return load_settings(state_dir=tmp_path / "state", **extra)


def test_the_database_file_never_holds_a_value_or_its_encodings(tmp_path: Path) -> None:
    store = open_secret_store(embedded(tmp_path))
    store.put("acme", "GITHUB_TOKEN", VALUE)
    store.put("acme", "GITHUB_TOKEN", VALUE + "-v2")
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("agentrun.db*"))
    assert b"GITHUB_TOKEN" in raw  # the name is there (the check reads the right file)
    for form in (VALUE.encode(), base64.b64encode(VALUE.encode()), VALUE.encode().hex().encode()):
        assert form not in raw


def test_the_key_file_is_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    first = open_secret_store(settings)
    first.put("acme", "K", VALUE)
    key_file = tmp_path / "state" / "secrets.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    content = key_file.read_text()
    assert len(base64.b64decode(content)) == 32
    first.close()
    second = open_secret_store(settings)  # another process, later: same key
    assert second.get("acme", "K").reveal() == VALUE
    assert key_file.read_text() == content
    second.close()


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    settings = embedded(tmp_path)
    open_secret_store(settings).close()
    key_file = tmp_path / "state" / "secrets.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(SecretStoreMisconfigured, match="chmod 600"):
        open_secret_store(settings)


def test_a_configured_key_is_used_and_a_wrong_one_fails_loudly(tmp_path: Path) -> None:
    key_a = base64.b64encode(os.urandom(32)).decode()
    key_b = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    store = open_secret_store(embedded(tmp_path, secrets_key=key_a))
    store.put("acme", "K", VALUE)
    store.close()
    assert not (tmp_path / "state" / "secrets.key").exists()  # no file when a key is set
    other = open_secret_store(embedded(tmp_path, secrets_key=key_b))
    with pytest.raises(SecretStoreMisconfigured, match="same AGENTRUN_SECRETS_KEY") as refused:
        other.get("acme", "K")
    assert VALUE not in str(refused.value) and key_a not in str(refused.value)
    other.close()
    for bad in ("not base64!", base64.b64encode(b"too short").decode()):
        with pytest.raises(SecretStoreMisconfigured, match="32 random bytes"):
            open_secret_store(embedded(tmp_path, secrets_key=bad))


def test_a_row_moved_to_another_tenant_does_not_decrypt(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    db.upgrade()
    store = EmbeddedSecretStore(db, os.urandom(32))
    store.put("victim", "TOKEN", VALUE)
    with db.session() as session:
        session.execute(
            update(SecretVersionRow)
            .where(SecretVersionRow.tenant_id == "victim")
            .values(tenant_id="attacker")
        )
    with pytest.raises(SecretStoreMisconfigured):
        store.get("attacker", "TOKEN")
    db.close()


def test_the_settings_ask_for_vault_credentials_and_hide_them() -> None:
    with pytest.raises(ConfigError, match="AGENTRUN_VAULT_TOKEN, or AGENTRUN_VAULT_ROLE_ID"):
        load_settings(secret_backend="vault")
    settings = load_settings(
        secret_backend="vault", vault_token="hvs.sensitive", secrets_key="k" * 44
    )
    assert "hvs.sensitive" not in repr(settings) and "k" * 44 not in repr(settings)


# ------------------------------------------------------------------- vault


def test_approle_logs_in_again_when_its_token_is_revoked(openbao: OpenBao, tmp_path: Path) -> None:
    store = open_secret_store(openbao.settings(tmp_path, approle=True))
    store.put("acme", "RELOGIN", VALUE)
    # The token AppRole gave the store (read only to revoke it, as an expiry would).
    token = store._client.token  # type: ignore[attr-defined]
    openbao.root().auth.token.revoke(token)
    assert store.get("acme", "RELOGIN").reveal() == VALUE
    assert store._client.token != token  # type: ignore[attr-defined]
    store.close()


def test_refused_credentials_are_a_misconfiguration_naming_the_policy(
    openbao: OpenBao, tmp_path: Path
) -> None:
    store = open_secret_store(openbao.settings(tmp_path, vault_token="not-a-token"))
    with pytest.raises(SecretStoreMisconfigured, match="policy grants") as refused:
        store.list("acme")
    assert "not-a-token" not in str(refused.value)
    bad_role = open_secret_store(
        openbao.settings(tmp_path, approle=True, vault_secret_id="wrong-secret-id")
    )
    with pytest.raises(SecretStoreMisconfigured):
        bad_role.get("acme", "X")
    store.close()
    bad_role.close()


def test_the_policy_token_cannot_reach_outside_agentrun_paths(openbao: OpenBao) -> None:
    openbao.root().secrets.kv.v2.create_or_update_secret(
        path="other-app/db", secret={"value": VALUE}, mount_point=openbao.mount
    )
    # The store only ever builds agentrun/<tenant>/<name>; a tenant cannot climb out.
    store = open_secret_store(openbao.settings(Path("/nonexistent")))
    with pytest.raises(SecretNotFound):
        store.get("other-app", "db")
    store.close()


def test_an_unreachable_server_is_unavailable_and_retryable(
    tmp_path: Path, refused_port: int
) -> None:
    settings = load_settings(
        state_dir=tmp_path,
        secret_backend="vault",
        vault_addr=f"http://127.0.0.1:{refused_port}",
        vault_token="whatever-token",
        vault_timeout_seconds=2,
    )
    store = open_secret_store(settings)  # opens without the server
    with pytest.raises(SecretStoreUnavailable, match="unreachable") as down:
        store.exists("acme", ["A"])
    assert down.value.retryable
    store.close()


def test_a_value_written_by_another_tool_is_read_through_its_value_field(
    openbao: OpenBao, tmp_path: Path
) -> None:
    root = openbao.root()
    root.secrets.kv.v2.create_or_update_secret(
        path="agentrun/ops/FROM_OPS", secret={"value": VALUE}, mount_point=openbao.mount
    )
    root.secrets.kv.v2.create_or_update_secret(
        path="agentrun/ops/WRONG_SHAPE", secret={"token": VALUE}, mount_point=openbao.mount
    )
    store = open_secret_store(openbao.settings(tmp_path))
    assert store.get("ops", "FROM_OPS").reveal() == VALUE
    with pytest.raises(SecretStoreMisconfigured, match="no string field `value`") as bad:
        store.get("ops", "WRONG_SHAPE")
    assert VALUE not in str(bad.value)
    store.close()
