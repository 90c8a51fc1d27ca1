//! Accounts: users and the contacts they sign in with, one-time code
//! records, sessions with their refresh tokens, and the audit trail.
//!
//! A session's refresh tokens are indexed twice: hash → (session,
//! generation) to find a session from a token, and (session, generation) →
//! hash to delete every token of a session with it.

use codeedex_schema::id::{DocumentId, SessionId, UserId};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{
    AuditRecord, Embedded, OtpRecord, RefreshEntry, SessionRecord, StoreError, TxResult,
    UserRecord, decode, encode, pair_key,
};

impl Embedded {
    /// The user with this id.
    pub(crate) fn user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.run(|e| {
            e.users
                .get(id.as_bytes())?
                .map(|v| decode("users", &v))
                .transpose()
        })
    }

    /// The user who signs in with this contact key, if any.
    pub(crate) fn user_by_contact(
        &self,
        contact_key: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.run(|e| match e.identities.get(contact_key.as_bytes())? {
            None => Ok(None),
            Some(id) => {
                let id: [u8; 16] = id.as_ref().try_into().map_err(|_| StoreError::Malformed {
                    tree: "identities",
                    what: "user id is not 16 bytes",
                })?;
                self.user(UserId::from_bytes(id))
            }
        })
    }

    /// The user for this contact key, creating `candidate` atomically if there
    /// is none. Returns the user and whether it was created.
    pub fn find_or_create_user(
        &self,
        candidate: &UserRecord,
    ) -> Result<(UserRecord, bool), StoreError> {
        self.run(|e| {
            let key = candidate.contact_key.as_bytes();
            let created =
                (&e.identities, &e.users).transaction(|(identities, users)| -> TxResult<_> {
                    if let Some(existing) = identities.get(key)? {
                        return Ok(Some(existing));
                    }
                    identities.insert(key, candidate.id.as_bytes())?;
                    users.insert(candidate.id.as_bytes(), encode(candidate))?;
                    Ok(None)
                })?;
            match created {
                None => Ok((candidate.clone(), true)),
                Some(_) => {
                    let user = self.user_by_contact(&candidate.contact_key)?;
                    Ok((
                        user.expect(
                            "an identity always points at a user written in the same transaction",
                        ),
                        false,
                    ))
                }
            }
        })
    }

    /// Makes `doc` the user's root document unless it has one; returns the
    /// root it has afterwards.
    pub(crate) fn set_root_document(
        &self,
        user: UserId,
        doc: DocumentId,
    ) -> Result<Option<DocumentId>, StoreError> {
        self.run(|e| {
            loop {
                let Some(current) = e.users.get(user.as_bytes())? else {
                    return Ok(None);
                };
                let mut record: UserRecord = decode("users", &current)?;
                if let Some(root) = record.root_document_id {
                    return Ok(Some(root));
                }
                record.root_document_id = Some(doc);
                if e.users
                    .compare_and_swap(user.as_bytes(), Some(current), Some(encode(&record)))?
                    .is_ok()
                {
                    return Ok(Some(doc));
                }
            }
        })
    }

    // One-time codes.

    /// Atomically reads and replaces the code state of one identifier.
    ///
    /// `change` may run more than once when another request changes the same
    /// record at the same time; only its last run takes effect, so it must be
    /// a pure function of its input.
    pub(crate) fn update_otp<T>(
        &self,
        contact_key: &str,
        mut change: impl FnMut(Option<OtpRecord>) -> (Option<OtpRecord>, T),
    ) -> Result<T, StoreError> {
        self.run(|e| {
            let key = contact_key.as_bytes();
            loop {
                let current = e.otp.get(key)?;
                let decoded = current.as_deref().map(|v| decode("otp", v)).transpose()?;
                let (next, outcome) = change(decoded);
                let next_bytes = next.as_ref().map(encode);
                match e.otp.compare_and_swap(key, current, next_bytes)? {
                    Ok(()) => return Ok(outcome),
                    Err(_) => continue,
                }
            }
        })
    }

    // Sessions and refresh tokens.

    /// Stores a new session with its first refresh token.
    pub fn insert_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        self.run(|e| {
            (
                &e.sessions,
                &e.user_sessions,
                &e.refresh_tokens,
                &e.session_tokens,
            )
                .transaction(
                    |(sessions, user_sessions, refresh_tokens, session_tokens)| -> TxResult<()> {
                        sessions.insert(session.id.as_bytes(), encode(session))?;
                        user_sessions.insert(
                            pair_key(session.user_id.as_bytes(), session.id.as_bytes()),
                            &[],
                        )?;
                        index_refresh_token(refresh_tokens, session_tokens, session, refresh_hash)
                    },
                )?;
            Ok(())
        })
    }

    /// Stores a rotated session and its new refresh token, in one transaction.
    /// Fails with `Ok(false)` if the session is gone or was rotated meanwhile.
    pub(crate) fn rotate_session(
        &self,
        session: &SessionRecord,
        refresh_hash: &[u8; 32],
    ) -> Result<bool, StoreError> {
        self.run(|e| {
            let expected_generation = session.generation - 1;
            let sessions = &e.sessions;
            let ok = (sessions, &e.refresh_tokens, &e.session_tokens).transaction(
                |(sessions, refresh_tokens, session_tokens)| -> TxResult<bool> {
                    let Some(current) = sessions.get(session.id.as_bytes())? else {
                        return Ok(false);
                    };
                    let current: SessionRecord = decode("sessions", &current)
                        .map_err(ConflictableTransactionError::Abort)?;
                    if current.generation != expected_generation {
                        return Ok(false);
                    }
                    sessions.insert(session.id.as_bytes(), encode(session))?;
                    index_refresh_token(refresh_tokens, session_tokens, session, refresh_hash)?;
                    Ok(true)
                },
            )?;
            Ok(ok)
        })
    }

    /// The session with this id.
    pub(crate) fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.run(|e| {
            e.sessions
                .get(id.as_bytes())?
                .map(|v| decode("sessions", &v))
                .transpose()
        })
    }

    /// What a refresh-token hash belongs to.
    pub(crate) fn refresh_entry(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<RefreshEntry>, StoreError> {
        self.run(|e| {
            e.refresh_tokens
                .get(&hash[..])?
                .map(|v| decode("refresh_tokens", &v))
                .transpose()
        })
    }

    /// The live and expired-but-not-yet-removed sessions of a user.
    pub(crate) fn sessions_of(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        self.run(|e| {
            let mut out = Vec::new();
            for item in e.user_sessions.scan_prefix(user.as_bytes()) {
                let (key, _) = item?;
                let id: [u8; 16] = key[16..].try_into().map_err(|_| StoreError::Malformed {
                    tree: "user_sessions",
                    what: "key is not two ids",
                })?;
                if let Some(session) = self.session(SessionId::from_bytes(id))? {
                    out.push(session);
                }
            }
            Ok(out)
        })
    }

    /// Deletes a session and its whole refresh-token chain. Returns whether it existed.
    pub(crate) fn delete_session(&self, id: SessionId) -> Result<bool, StoreError> {
        self.run(|e| {
            let chain: Vec<(sled::IVec, sled::IVec)> = e
                .session_tokens
                .scan_prefix(id.as_bytes())
                .collect::<Result<_, _>>()?;
            let existed = (
                &e.sessions,
                &e.user_sessions,
                &e.refresh_tokens,
                &e.session_tokens,
            )
                .transaction(
                    |(sessions, user_sessions, refresh_tokens, session_tokens)| -> TxResult<bool> {
                        let Some(old) = sessions.remove(id.as_bytes())? else {
                            return Ok(false);
                        };
                        let old: SessionRecord = decode("sessions", &old)
                            .map_err(ConflictableTransactionError::Abort)?;
                        user_sessions.remove(pair_key(old.user_id.as_bytes(), id.as_bytes()))?;
                        for (chain_key, hash) in &chain {
                            refresh_tokens.remove(hash)?;
                            session_tokens.remove(chain_key)?;
                        }
                        Ok(true)
                    },
                )?;
            Ok(existed)
        })
    }

    // Audit events.

    /// Appends an event to a user's audit trail.
    pub(crate) fn append_audit(&self, user: UserId, event: &AuditRecord) -> Result<(), StoreError> {
        self.run(|e| {
            let seq = e.db.generate_id()?;
            e.audit
                .insert(pair_key(user.as_bytes(), &seq.to_be_bytes()), encode(event))?;
            Ok(())
        })
    }

    /// The newest `limit` events of a user, newest first.
    pub(crate) fn audit_of(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.run(|e| {
            e.audit
                .scan_prefix(user.as_bytes())
                .rev()
                .take(limit)
                .map(|item| {
                    let (_, v) = item?;
                    decode("audit", &v)
                })
                .collect()
        })
    }
}

/// Records a session's current refresh token: hash → (session, generation),
/// and the chain entry used to delete every token of the session with it.
fn index_refresh_token(
    refresh_tokens: &sled::transaction::TransactionalTree,
    session_tokens: &sled::transaction::TransactionalTree,
    session: &SessionRecord,
    refresh_hash: &[u8; 32],
) -> TxResult<()> {
    let entry = RefreshEntry {
        session_id: session.id,
        generation: session.generation,
    };
    refresh_tokens.insert(&refresh_hash[..], encode(&entry))?;
    session_tokens.insert(
        pair_key(session.id.as_bytes(), &session.generation.to_be_bytes()),
        &refresh_hash[..],
    )?;
    Ok(())
}
