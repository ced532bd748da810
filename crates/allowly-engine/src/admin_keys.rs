//! The instance admin keys (API keys of no workspace, role `admin`): created at first start,
//! rotated and revoked through the API, and reset offline when every one of them is lost or
//! compromised (`reset_instance_admin_keys`, run with the server stopped). Every change is one
//! synced write, and a revoked key leaves the authentication cache before the change is
//! answered: it is refused from the next request on.

use allowly_store::{ApiKeyRecord, Op, Role, Store, WriteBatch};

use crate::clock::now_ms;
use crate::engine::{idempotency, instance_idem_op, not_found_if_invalid, Engine};
use crate::error::{EngineError, Result};
use crate::ids::{is_secret_shaped, new_id, new_secret, open_secret, seal_secret, secret_hash};
use crate::mailbox::Idem;
use crate::model::{ApiKeyView, CreatedApiKey, Page, Principal};
use crate::services::blocking;
use crate::views;

/// Most instance admin keys looked at (there are a handful: one per rotation, kept revoked).
const MAX_INSTANCE_KEYS: usize = 100_000;

/// A new instance admin key, not yet written, and its secret.
fn new_admin_key(now: u64) -> Result<(ApiKeyRecord, String)> {
    let secret = new_secret()?;
    let record = ApiKeyRecord {
        id: new_id("ak_")?,
        workspace_id: None,
        key_hash: secret_hash(&secret),
        roles: vec![Role::Admin],
        created_at_ms: now,
        revoked_at_ms: None,
    };
    Ok((record, secret))
}

fn is_live_admin(k: &ApiKeyRecord) -> bool {
    k.workspace_id.is_none() && k.revoked_at_ms.is_none() && k.roles.contains(&Role::Admin)
}

/// An instance admin key rotation as its `Idempotency-Key` record keeps it: the new key, and
/// its secret sealed under the *old* key's secret — the one a repeat bears — so the database
/// alone cannot reveal it (as for `create_api_key`).
#[derive(serde::Serialize, serde::Deserialize)]
struct SealedRotation {
    key: ApiKeyView,
    sealed_secret: String,
}

impl SealedRotation {
    fn open(self, caller_secret: &str, idem: &Idem) -> Result<CreatedApiKey> {
        Ok(CreatedApiKey { secret: open_secret(&self.sealed_secret, caller_secret, &idem.doc_id)?, key: self.key })
    }
}

/// The request a rotation's `Idempotency-Key` stands for: "rotate the key with this secret".
/// Named by the secret's hash, not the key's id, so that a repeat — whose key the first
/// request revoked — is recognised without authenticating it; another caller's key is another
/// request (`IdempotencyMismatch`).
fn rotation_idem(key: Option<&str>, caller_secret: &str) -> Result<Option<Idem>> {
    idempotency(key, "admin_key_rotate", &hex::encode(secret_hash(caller_secret)))
}

/// Break glass, with the server **stopped** (its store opened by the caller alone): revokes
/// every instance admin key and creates a new one, in one synced write. For an instance whose
/// admin token is lost or may be known to someone else. Answers the new key (its secret shown
/// once) and how many keys it revoked.
pub fn reset_instance_admin_keys(store: &dyn Store) -> Result<(CreatedApiKey, usize)> {
    let now = now_ms();
    let (record, secret) = new_admin_key(now)?;
    let key = views::api_key(&record)?;
    let mut ops = vec![Op::PutApiKey(record)];
    for mut k in store.instance_api_keys(MAX_INSTANCE_KEYS)?.into_iter().filter(is_live_admin) {
        k.revoked_at_ms = Some(now);
        ops.push(Op::PutApiKey(k));
    }
    let revoked = ops.len() - 1;
    store.write(WriteBatch::from(ops), allowly_store::Durability::Sync)?;
    Ok((CreatedApiKey { key, secret }, revoked))
}

impl Engine {
    /// Creates the instance admin key (no workspace, role `admin`). The server calls this once
    /// at first start and writes the secret to a 0600 file.
    pub async fn create_admin_key(&self) -> Result<CreatedApiKey> {
        let (record, secret) = new_admin_key(now_ms())?;
        let key = views::api_key(&record)?;
        self.write(vec![Op::PutApiKey(record)]).await?;
        Ok(CreatedApiKey { key, secret })
    }

    /// Replaces the instance admin key `caller` authenticated with: a new instance admin key is
    /// created and the caller's is revoked, in one synced write, and the old one leaves the
    /// cache before this returns — so it is refused from the next request on. One rotation at a
    /// time (a second one with the same old key finds it revoked: `NotFound`).
    ///
    /// With an `Idempotency-Key`, a repeat gets the first answer, new secret included, and no
    /// second key is made: from the same caller while its key is still live (concurrent
    /// duplicates), or, once the rotation revoked it, through
    /// [`Engine::replay_admin_key_rotation`].
    pub async fn rotate_admin_key(
        &self,
        caller: &Principal,
        caller_secret: &str,
        idem: Option<&str>,
    ) -> Result<CreatedApiKey> {
        let s = self.shared();
        let idem = rotation_idem(idem, caller_secret)?;
        let _one_at_a_time = s.instance_idem.lock().await;
        if let Some(i) = &idem {
            if let Some(first) = self.instance_replay::<SealedRotation>(i).await? {
                return first.open(caller_secret, i);
            }
        }
        let (store, id) = (s.store.clone(), caller.key_id.clone());
        let old = blocking(move || Ok(store.api_key_by_id(None, &id)?)).await?;
        let Some(mut old) = old.filter(is_live_admin) else {
            return Err(EngineError::NotFound { what: "instance admin key" });
        };
        let now = now_ms();
        let (record, secret) = new_admin_key(now)?;
        let key = views::api_key(&record)?;
        let old_hash = old.key_hash;
        old.revoked_at_ms = Some(now);
        let mut ops = vec![Op::PutApiKey(record), Op::PutApiKey(old)];
        if let Some(i) = idem {
            let sealed =
                SealedRotation { key: key.clone(), sealed_secret: seal_secret(&secret, caller_secret, &i.doc_id)? };
            ops.push(instance_idem_op(i, &sealed)?);
        }
        let written = self.write(ops).await;
        // Whatever the outcome (a write may have landed before its error), the old key leaves
        // the cache: at worst it is read from the store again.
        s.api_keys.revoked(&old_hash);
        written?;
        tracing::info!(old = %caller.key_id, new = %key.id, "instance admin key rotated");
        Ok(CreatedApiKey { key, secret })
    }

    /// The first answer to a keyed rotation whose bearer `caller_secret` that rotation revoked
    /// (the answer was lost, the client repeats): `None` when there is no such live record —
    /// the caller then gets the usual 401. Nothing else accepts a revoked key. Only the bearer
    /// of the old secret who also holds the `Idempotency-Key` gets the new secret, for the
    /// idempotency window: what a lost answer needs, and no more than that pair already had.
    pub async fn replay_admin_key_rotation(&self, caller_secret: &str, key: &str) -> Result<Option<CreatedApiKey>> {
        if !is_secret_shaped(caller_secret) {
            return Ok(None);
        }
        // A malformed key answers no record: the usual 401, not a 400 to an unknown caller.
        let Ok(Some(idem)) = rotation_idem(Some(key), caller_secret) else { return Ok(None) };
        let _one_at_a_time = self.shared().instance_idem.lock().await;
        match self.instance_replay::<SealedRotation>(&idem).await {
            Ok(Some(first)) => first.open(caller_secret, &idem).map(Some),
            // Another request's record: nothing this caller may see.
            Ok(None) | Err(EngineError::IdempotencyMismatch) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How many instance admin keys are live (not revoked): `allowly serve` mints one at start
    /// only when there is none.
    pub async fn live_admin_keys(&self) -> Result<usize> {
        let store = self.shared().store.clone();
        let keys = blocking(move || Ok(store.instance_api_keys(MAX_INSTANCE_KEYS)?)).await?;
        Ok(keys.iter().filter(|k| is_live_admin(k)).count())
    }

    /// Every instance admin key, revoked ones too, in id order (no secrets): what an operator
    /// looks at before revoking one.
    pub async fn admin_keys(&self) -> Result<Page<ApiKeyView>> {
        // Off the async workers, within the request's bound (`Engine::read`).
        let keys = self.read(|e| Ok(e.shared().store.instance_api_keys(MAX_INSTANCE_KEYS)?)).await?;
        let data = keys.iter().filter(|k| k.roles.contains(&Role::Admin)).map(views::api_key).collect::<Result<_>>()?;
        Ok(Page { data, has_more: false, next_cursor: None })
    }

    /// Revokes the instance admin key `key_id` (the caller's own or another one), refused at
    /// once from then on. `Conflict` if it is already revoked, or if it is the last one that is
    /// not: the instance would be left without an administrator (rotate it instead, or reset
    /// offline). `NotFound` for an id that is not an instance admin key.
    /// With an `Idempotency-Key`, a repeat gets the first answer (filed with the revocation).
    pub async fn revoke_admin_key(&self, caller: &Principal, key_id: &str, idem: Option<&str>) -> Result<ApiKeyView> {
        let s = self.shared();
        let idem = idempotency(idem, "admin_key_revoke", &key_id)?;
        let _one_at_a_time = s.instance_idem.lock().await;
        if let Some(first) = match &idem {
            Some(i) => self.instance_replay(i).await?,
            None => None,
        } {
            return Ok(first);
        }
        let store = s.store.clone();
        let keys = blocking(move || Ok(store.instance_api_keys(MAX_INSTANCE_KEYS)?)).await?;
        let id = key_id.to_owned();
        let found = self
            .read(move |e| {
                e.shared().store.api_key_by_id(None, &id).map_err(not_found_if_invalid("instance admin key"))
            })
            .await?;
        let Some(mut k) = found.filter(|k| k.roles.contains(&Role::Admin)) else {
            return Err(EngineError::NotFound { what: "instance admin key" });
        };
        if k.revoked_at_ms.is_some() {
            return Err(EngineError::Conflict("the instance admin key is already revoked".into()));
        }
        if !keys.iter().any(|other| other.id != k.id && is_live_admin(other)) {
            return Err(EngineError::Conflict(
                "it is the last instance admin key: rotate it instead (POST /v1/admin-key/rotate)".into(),
            ));
        }
        k.revoked_at_ms = Some(now_ms());
        let hash = k.key_hash;
        let view = views::api_key(&k)?;
        let mut ops = vec![Op::PutApiKey(k)];
        if let Some(i) = idem {
            ops.push(instance_idem_op(i, &view)?);
        }
        let written = self.write(ops).await;
        s.api_keys.revoked(&hash);
        written?;
        tracing::info!(by = %caller.key_id, revoked = %key_id, "instance admin key revoked");
        Ok(view)
    }
}
