//! Operators: the finance-ops principals, separate from phone accounts, with
//! roles viewer < operator < approver < admin, authenticated by API keys of
//! which only a SHA-256 digest is stored.
//!
//! [`Authorized`] is the extractor every admin route uses:
//! `Authorized<Approver>` lets in approvers and admins and answers 401
//! `unauthenticated` (no or bad key) or 403 `forbidden` (too low a role).

use crate::error::AccountsError;
use std::marker::PhantomData;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use courier_common::audit::{self, Draft};
use courier_common::{Database, HttpError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::bearer;
use crate::secret::{new_token, token_digest};

const API_KEY_PREFIX: &str = "cop";
pub const OPERATOR_NAME_CHARS_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
}

impl Role {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Operator {
    pub operator_id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
}

type OperatorRow = (String, String, String, i64);

fn operator_from_row((id, name, role, created_at_ms): OperatorRow) -> Operator {
    Operator {
        operator_id: id,
        name,
        // The CHECK constraint keeps the column to the four roles.
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        created_at: courier_common::time::rfc3339(created_at_ms),
    }
}

/// A validated operator name: 1–64 printable characters.
pub fn parse_operator_name(name: &str) -> Result<String, AccountsError> {
    courier_common::text::printable(name, OPERATOR_NAME_CHARS_MAX)
        .map_err(|error| crate::service::text_error(error, "name", OPERATOR_NAME_CHARS_MAX))
}

/// Creates an operator and returns it with its API key, which exists nowhere
/// else afterwards.
pub async fn create(
    db: &Database,
    name: &str,
    role: Role,
    created_by: Option<&str>,
) -> Result<(Operator, String), sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let key = new_token(API_KEY_PREFIX);
    let now_ms = courier_common::time::now_ms();
    let operator = operator_from_row((id.clone(), name.to_owned(), role.as_str().to_owned(), now_ms));
    // The operator and its audit entry commit together.
    let mut transaction = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO operators (id, name, role, key_digest, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(name)
    .bind(role.as_str())
    .bind(token_digest(&key))
    .bind(now_ms)
    .bind(created_by)
    .execute(&mut *transaction)
    .await?;
    let after =
        serde_json::json!({"operator_id": id, "name": name, "role": role.as_str(), "created_at": operator.created_at});
    let draft = Draft {
        at_ms: now_ms,
        operator: created_by.unwrap_or(BOOTSTRAP).to_owned(),
        action: "operator_created".into(),
        target: id,
        request_id: None,
        before: None,
        after: Some(after.to_string()),
    };
    audit::append(db.backend(), &mut transaction, vec![draft]).await?;
    transaction.commit().await?;
    Ok((operator, key))
}

/// Who `courier admin bootstrap`'s admin was created by, in the audit log.
pub const BOOTSTRAP: &str = "bootstrap";

/// The live operator holding `api_key`, if any. The lookup is by digest, so
/// the comparison never touches the key itself.
pub async fn by_key(db: &Database, api_key: &str) -> Result<Option<Operator>, sqlx::Error> {
    let row: Option<OperatorRow> =
        sqlx::query_as("SELECT id, name, role, created_at FROM operators WHERE key_digest = $1 AND revoked_at IS NULL")
            .bind(token_digest(api_key))
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map(operator_from_row))
}

/// One live operator.
pub async fn get(db: &Database, operator_id: &str) -> Result<Option<Operator>, sqlx::Error> {
    let row: Option<OperatorRow> =
        sqlx::query_as("SELECT id, name, role, created_at FROM operators WHERE id = $1 AND revoked_at IS NULL")
            .bind(operator_id)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map(operator_from_row))
}

/// Live operators in id order after `after_id`.
pub async fn list(db: &Database, after_id: &str, limit: u32) -> Result<Vec<Operator>, sqlx::Error> {
    let rows: Vec<OperatorRow> = sqlx::query_as(
        "SELECT id, name, role, created_at FROM operators WHERE revoked_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after_id)
    .bind(i64::from(limit))
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(operator_from_row).collect())
}

/// Revokes an operator's key; false if there is no such live operator.
pub async fn revoke(db: &Database, operator_id: &str, by: &str) -> Result<bool, sqlx::Error> {
    let now_ms = courier_common::time::now_ms();
    let mut transaction = db.pool().begin().await?;
    let done = sqlx::query("UPDATE operators SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(operator_id)
        .bind(now_ms)
        .execute(&mut *transaction)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    let draft = Draft {
        at_ms: now_ms,
        operator: by.to_owned(),
        action: "operator_revoked".into(),
        target: operator_id.to_owned(),
        request_id: None,
        before: Some(serde_json::json!({"status": "live"}).to_string()),
        after: Some(serde_json::json!({"status": "revoked"}).to_string()),
    };
    audit::append(db.backend(), &mut transaction, vec![draft]).await?;
    transaction.commit().await?;
    Ok(true)
}

/// How many live admins there are.
pub async fn live_admins(db: &Database) -> Result<i64, sqlx::Error> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM operators WHERE role = 'admin' AND revoked_at IS NULL")
        .fetch_one(db.pool())
        .await?;
    Ok(count)
}

/// The state an admin router must provide for [`Authorized`].
#[derive(Clone)]
pub struct OperatorDirectory(pub Database);

/// The least role a route needs.
pub trait RequiredRole: Send + Sync + 'static {
    const ROLE: Role;
}

pub struct Viewer;
pub struct OperatorRole;
pub struct Approver;
pub struct Admin;

impl RequiredRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl RequiredRole for OperatorRole {
    const ROLE: Role = Role::Operator;
}
impl RequiredRole for Approver {
    const ROLE: Role = Role::Approver;
}
impl RequiredRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// An operator whose role is at least `R::ROLE`.
pub struct Authorized<R: RequiredRole> {
    pub operator: Operator,
    role: PhantomData<R>,
}

impl<S, R> FromRequestParts<S> for Authorized<R>
where
    S: Send + Sync,
    R: RequiredRole,
    OperatorDirectory: FromRef<S>,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let key = bearer(parts)
            .ok_or_else(|| HttpError::unauthenticated("send an operator API key as Authorization: Bearer <key>"))?;
        let OperatorDirectory(db) = OperatorDirectory::from_ref(state);
        let operator = by_key(&db, key)
            .await
            .map_err(HttpError::from)?
            .ok_or_else(|| HttpError::unauthenticated("the operator API key is not valid"))?;
        if operator.role < R::ROLE {
            return Err(HttpError::forbidden(format!("this needs the {} role or higher", R::ROLE.as_str())));
        }
        Ok(Authorized { operator, role: PhantomData })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Approver && Role::Approver < Role::Admin);
        for role in [Role::Viewer, Role::Operator, Role::Approver, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn operator_names() {
        assert_eq!(parse_operator_name("  Ana  ").unwrap(), "Ana");
        assert!(parse_operator_name("").is_err());
        assert!(parse_operator_name("a\nb").is_err());
        assert!(parse_operator_name(&"x".repeat(65)).is_err());
    }
}
