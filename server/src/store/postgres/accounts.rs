//! Accounts in PostgreSQL: users and the contacts they sign in with,
//! one-time code records, sessions with their refresh tokens, and the audit
//! trail.
//!
//! The races that were in-process in sled are database races here, and
//! the database settles them: one user per contact key (a unique
//! constraint), one winner among concurrent rotations of a session (an
//! update conditional on the generation), and every one-time-code update
//! counted (a row lock held while the caller's function decides).

use codeedex_schema::id::{DocumentId, SessionId, UserId};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::{PgEngine, RETRIES, id16, is_retryable, signed, unsigned};
use crate::store::{AuditRecord, OtpRecord, RefreshEntry, SessionRecord, StoreError, UserRecord};

const USER_COLUMNS: &str = "id, contact_key, created_at, root_document_id";
const SESSION_COLUMNS: &str =
    "id, user_id, device_name, created_at, last_used_at, generation, rotated_at";

fn user_from(row: &Row) -> Result<UserRecord, StoreError> {
    let root: Option<&[u8]> = row.get(3);
    Ok(UserRecord {
        id: UserId::from_bytes(id16(row.get(0), "users")?),
        contact_key: row.get(1),
        created_at: row.get(2),
        root_document_id: root
            .map(|bytes| id16(bytes, "users").map(DocumentId::from_bytes))
            .transpose()?,
    })
}

fn session_from(row: &Row) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: SessionId::from_bytes(id16(row.get(0), "sessions")?),
        user_id: UserId::from_bytes(id16(row.get(1), "sessions")?),
        device_name: row.get(2),
        created_at: row.get(3),
        last_used_at: row.get(4),
        generation: unsigned(row.get(5), "sessions", "negative generation")?,
        rotated_at: row.get(6),
    })
}

impl PgEngine {
    /// The user with this id.
    pub(crate) async fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let row = self
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
                &[&id.as_bytes().as_slice()],
            )
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// The user who signs in with this contact key, if any.
    pub(crate) async fn user_by_contact(
        &self,
        contact_key: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let row = self
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE contact_key = $1"),
                &[&contact_key],
            )
            .await?;
        row.as_ref().map(user_from).transpose()
    }

    /// The user for this contact key, creating `candidate` atomically if
    /// there is none. Returns the user and whether it was created.
    pub(crate) async fn find_or_create_user(
        &self,
        candidate: &UserRecord,
    ) -> Result<(UserRecord, bool), StoreError> {
        let client = self.client().await?;
        let insert = client
            .prepare_cached(
                "INSERT INTO users (id, contact_key, created_at, root_document_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (contact_key) DO NOTHING",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let root = candidate.root_document_id.map(|d| *d.as_bytes());
        let inserted = client
            .execute(
                &insert,
                &[
                    &candidate.id.as_bytes().as_slice(),
                    &candidate.contact_key,
                    &candidate.created_at,
                    &root.as_ref().map(|r| r.as_slice()),
                ],
            )
            .await
            .map_err(|e| self.fail(e))?;
        if inserted == 1 {
            return Ok((candidate.clone(), true));
        }
        // Somebody holds the contact key; users are never deleted, so the
        // row that refused ours is there to read.
        let existing =
            self.user_by_contact(&candidate.contact_key)
                .await?
                .ok_or(StoreError::Malformed {
                    tree: "users",
                    what: "a contact key conflicted with a user that is gone",
                })?;
        Ok((existing, false))
    }

    /// Makes `doc` the user's root document unless it has one; returns the
    /// root it has afterwards. Nodes that race to create a root agree on
    /// the first one written.
    pub(crate) async fn set_root_document(
        &self,
        user: UserId,
        doc: DocumentId,
    ) -> Result<Option<DocumentId>, StoreError> {
        let row = self
            .query_opt(
                "UPDATE users SET root_document_id = COALESCE(root_document_id, $2) \
                 WHERE id = $1 RETURNING root_document_id",
                &[&user.as_bytes().as_slice(), &doc.as_bytes().as_slice()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let root: Option<&[u8]> = row.try_get(0).map_err(|e| self.fail(e))?;
        root.map(|bytes| {
            <[u8; 16]>::try_from(bytes)
                .map(DocumentId::from_bytes)
                .map_err(|_| StoreError::Malformed {
                    tree: "users",
                    what: "a root document id is not 16 bytes",
                })
        })
        .transpose()
    }

    #[cfg(test)]
    /// Replaces a user record (for example to record its root document).
    pub(crate) async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO users (id, contact_key, created_at, root_document_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET \
                 contact_key = EXCLUDED.contact_key, created_at = EXCLUDED.created_at, \
                 root_document_id = EXCLUDED.root_document_id",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let root = user.root_document_id.map(|d| *d.as_bytes());
        client
            .execute(
                &statement,
                &[
                    &user.id.as_bytes().as_slice(),
                    &user.contact_key,
                    &user.created_at,
                    &root.as_ref().map(|r| r.as_slice()),
                ],
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    // One-time codes.

    /// Atomically reads and replaces the code state of one identifier.
    ///
    /// `change` runs inside a transaction holding the record's row lock, so
    /// concurrent updates (from any node) queue and each sees the one
    /// before. When there is no record yet there is no row to lock: two
    /// first updates race to insert, the loser's transaction is rolled back
    /// and `change` runs again on the winner's record. It must therefore be
    /// a pure function of its input, as for the sled engine.
    pub(crate) async fn update_otp<T: Send>(
        &self,
        contact_key: &str,
        mut change: impl FnMut(Option<OtpRecord>) -> (Option<OtpRecord>, T) + Send,
    ) -> Result<T, StoreError> {
        let mut client = self.client().await?;
        let mut attempts = 0;
        loop {
            let tx = client.transaction().await.map_err(|e| self.fail(e))?;
            let select = tx
                .prepare_cached("SELECT record FROM otp WHERE contact_key = $1 FOR UPDATE")
                .await
                .map_err(|e| self.fail(e))?;
            let current = tx
                .query_opt(&select, &[&contact_key])
                .await
                .map_err(|e| self.fail(e))?;
            let existed = current.is_some();
            let decoded = current
                .map(|row| {
                    serde_json::from_value::<OtpRecord>(row.get(0)).map_err(|source| {
                        StoreError::Corrupt {
                            tree: "otp",
                            source,
                        }
                    })
                })
                .transpose()?;
            let (next, outcome) = change(decoded);
            let written = match (existed, next) {
                (true, Some(next)) => {
                    let update = tx
                        .prepare_cached("UPDATE otp SET record = $2 WHERE contact_key = $1")
                        .await
                        .map_err(|e| self.fail(e))?;
                    tx.execute(&update, &[&contact_key, &Json(&next)]).await
                }
                (true, None) => {
                    let delete = tx
                        .prepare_cached("DELETE FROM otp WHERE contact_key = $1")
                        .await
                        .map_err(|e| self.fail(e))?;
                    tx.execute(&delete, &[&contact_key]).await
                }
                (false, Some(next)) => {
                    let insert = tx
                        .prepare_cached(
                            "INSERT INTO otp (contact_key, record) VALUES ($1, $2) \
                             ON CONFLICT (contact_key) DO NOTHING",
                        )
                        .await
                        .map_err(|e| self.fail(e))?;
                    match tx.execute(&insert, &[&contact_key, &Json(&next)]).await {
                        // Another update created the record first: ours was
                        // decided on a record that no longer is the latest.
                        Ok(0) => {
                            drop(tx);
                            continue;
                        }
                        other => other,
                    }
                }
                (false, None) => Ok(0),
            };
            let committed = match written {
                Ok(_) => tx.commit().await,
                Err(e) => Err(e),
            };
            match committed.map_err(|e| self.fail(e)) {
                Ok(()) => return Ok(outcome),
                Err(e) if is_retryable(&e) && attempts < RETRIES => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    // Sessions and refresh tokens.

    /// Stores a new session with its first refresh token.
    pub(crate) async fn insert_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(e))?;
        let upsert = tx
            .prepare_cached(&format!(
                "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, \
                 device_name = EXCLUDED.device_name, created_at = EXCLUDED.created_at, \
                 last_used_at = EXCLUDED.last_used_at, generation = EXCLUDED.generation, \
                 rotated_at = EXCLUDED.rotated_at"
            ))
            .await
            .map_err(|e| self.fail(e))?;
        let generation = signed(session.generation, "sessions", "generation beyond bigint")?;
        tx.execute(
            &upsert,
            &[
                &session.id.as_bytes().as_slice(),
                &session.user_id.as_bytes().as_slice(),
                &session.device_name,
                &session.created_at,
                &session.last_used_at,
                &generation,
                &session.rotated_at,
            ],
        )
        .await
        .map_err(|e| self.fail(e))?;
        self.index_refresh_token(&tx, session, refresh_hash).await?;
        tx.commit().await.map_err(|e| self.fail(e))
    }

    /// Stores a rotated session and its new refresh token, in one
    /// transaction. Fails with `Ok(false)` if the session is gone or was
    /// rotated meanwhile: the update is conditional on the previous
    /// generation, and of two concurrent rotations the second waits for the
    /// first's row lock and then finds the generation changed.
    pub(crate) async fn rotate_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        let Some(expected) = session.generation.checked_sub(1) else {
            // Generation 0 is a new session's: no rotation produces it.
            return Ok(false);
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.fail(e))?;
        let update = tx
            .prepare_cached(
                "UPDATE sessions SET user_id = $2, device_name = $3, created_at = $4, \
                 last_used_at = $5, generation = $6, rotated_at = $7 \
                 WHERE id = $1 AND generation = $8",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let generation = signed(session.generation, "sessions", "generation beyond bigint")?;
        let expected = signed(expected, "sessions", "generation beyond bigint")?;
        let updated = tx
            .execute(
                &update,
                &[
                    &session.id.as_bytes().as_slice(),
                    &session.user_id.as_bytes().as_slice(),
                    &session.device_name,
                    &session.created_at,
                    &session.last_used_at,
                    &generation,
                    &session.rotated_at,
                    &expected,
                ],
            )
            .await
            .map_err(|e| self.fail(e))?;
        if updated != 1 {
            return Ok(false);
        }
        self.index_refresh_token(&tx, session, refresh_hash).await?;
        tx.commit().await.map_err(|e| self.fail(e))?;
        Ok(true)
    }

    /// Records a session's current refresh token: hash → (session,
    /// generation). The token rows go with the session when it is deleted
    /// (a cascading foreign key).
    async fn index_refresh_token(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        session: &SessionRecord,
        refresh_hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let upsert = tx
            .prepare_cached(
                "INSERT INTO refresh_tokens (hash, session_id, generation) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO UPDATE SET session_id = EXCLUDED.session_id, \
                 generation = EXCLUDED.generation",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let generation = signed(session.generation, "sessions", "generation beyond bigint")?;
        tx.execute(
            &upsert,
            &[
                &refresh_hash.as_slice(),
                &session.id.as_bytes().as_slice(),
                &generation,
            ],
        )
        .await
        .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The session with this id.
    pub(crate) async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let row = self
            .query_opt(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"),
                &[&id.as_bytes().as_slice()],
            )
            .await?;
        row.as_ref().map(session_from).transpose()
    }

    /// What a refresh-token hash belongs to.
    pub(crate) async fn refresh_entry(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<RefreshEntry>, StoreError> {
        let row = self
            .query_opt(
                "SELECT session_id, generation FROM refresh_tokens WHERE hash = $1",
                &[&hash.as_slice()],
            )
            .await?;
        row.map(|row| {
            Ok(RefreshEntry {
                session_id: SessionId::from_bytes(id16(row.get(0), "refresh_tokens")?),
                generation: unsigned(row.get(1), "refresh_tokens", "negative generation")?,
            })
        })
        .transpose()
    }

    /// The live and expired-but-not-yet-removed sessions of a user, ordered
    /// by session id as in sled.
    pub(crate) async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY id"),
                &[&user.as_bytes().as_slice()],
            )
            .await?;
        rows.iter().map(session_from).collect()
    }

    /// Deletes a session and its whole refresh-token chain. Returns whether
    /// it existed.
    pub(crate) async fn delete_session(&self, id: SessionId) -> Result<bool, StoreError> {
        // Every node closes the session's sockets: the notice is sent with
        // the deletion's commit, and only if there was a session to delete.
        let deleted = self
            .execute(
                "WITH gone AS (DELETE FROM sessions WHERE id = $1 RETURNING id) \
                 SELECT pg_notify($2, $3) FROM gone",
                &[
                    &id.as_bytes().as_slice(),
                    &super::doorbell::CHANNEL,
                    &super::doorbell::session_payload(self.node, id),
                ],
            )
            .await?;
        Ok(deleted == 1)
    }

    // Audit events.

    /// Appends an event to a user's audit trail.
    pub(crate) async fn append_audit(
        &self,
        user: UserId,
        event: &AuditRecord,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO audit (user_id, at, kind, session_id, ip, user_agent) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let kind = kind_name(event)?;
        let session = event.session_id.map(|s| *s.as_bytes());
        client
            .execute(
                &statement,
                &[
                    &user.as_bytes().as_slice(),
                    &event.at,
                    &kind,
                    &session.as_ref().map(|s| s.as_slice()),
                    &event.ip,
                    &event.user_agent,
                ],
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The newest `limit` events of a user, newest first.
    pub(crate) async fn audit_of(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT at, kind, session_id, ip, user_agent FROM audit \
                 WHERE user_id = $1 ORDER BY seq DESC LIMIT $2",
            )
            .await
            .map_err(|e| self.fail(e))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&statement, &[&user.as_bytes().as_slice(), &limit])
            .await
            .map_err(|e| self.fail(e))?;
        rows.iter()
            .map(|row| {
                let kind: String = row.get(1);
                let session: Option<&[u8]> = row.get(2);
                Ok(AuditRecord {
                    at: row.get(0),
                    kind: serde_json::from_value(serde_json::Value::String(kind)).map_err(
                        |source| StoreError::Corrupt {
                            tree: "audit",
                            source,
                        },
                    )?,
                    session_id: session
                        .map(|s| id16(s, "audit").map(SessionId::from_bytes))
                        .transpose()?,
                    ip: row.get(3),
                    user_agent: row.get(4),
                })
            })
            .collect()
    }
}

/// The audit kind's name as the API spells it (`code_sent`, ...).
pub(super) fn kind_name(event: &AuditRecord) -> Result<String, StoreError> {
    match serde_json::to_value(event.kind) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        Ok(_) => Err(StoreError::Malformed {
            tree: "audit",
            what: "an audit kind that is not a name",
        }),
        Err(source) => Err(StoreError::Corrupt {
            tree: "audit",
            source,
        }),
    }
}
